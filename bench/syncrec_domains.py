"""Replaced by experiment files: the per-domain comparison of single-domain SASRec (one per domain,
on that domain's events alone), cross-domain SASRec, SyNCRec and its ablations (docs/results.md,
"Cross-domain and transfer") is

    mmrec experiment run examples/experiments/syncrec-hm.yaml     # H&M product groups
    mmrec experiment run examples/experiments/syncrec-ml1m.yaml   # MovieLens genres, 1,000 users

The single-domain datasets are datasets of the file (``{of: hm, domain: Swimwear}``, derived by
``mmrec.data.domains``), and ``report: {domains: hm}`` prints the NDCG / HR tables per domain of the
test target on the common cases and SyNCRec's logged gaps and weights at its best epoch.
"""

import sys

if __name__ == "__main__":
    sys.exit(__doc__.replace("Replaced by experiment files", "bench/syncrec_domains.py is replaced by experiment files"))
