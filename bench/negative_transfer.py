"""Replaced by experiment files: ANT's adaptation policies from one pre-training run against
training from scratch (docs/results.md, "ANT: adaptation policies against training from scratch") are

    mmrec experiment run examples/experiments/ant-transfer-hm.yaml
    mmrec experiment run examples/experiments/ant-transfer-scientific.yaml

(each policy a row with ``init_from: <pre-training run>`` and ``model.adapt``; the table's gap to the
``scratch`` baseline, "beyond spread: below" being this script's "negative transfer: yes", and the
report's paired tests). The files' headers give the data and pre-training commands.
"""

import sys

if __name__ == "__main__":
    sys.exit(__doc__.replace("Replaced by experiment files", "bench/negative_transfer.py is replaced by experiment files"))
