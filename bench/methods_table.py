"""Replaced by experiment files: the methods tables of docs/results.md are

    mmrec experiment run examples/experiments/methods-scientific.yaml   # Amazon Scientific (text)
    mmrec experiment run examples/experiments/methods-ml1m.yaml         # MovieLens-1M (posters + title/genres)
    mmrec experiment run examples/experiments/odmt-office-paper.yaml    # ODMT on Office under its paper preset

(rows, seeds, presets and settings as the commands this script took; warm / cold columns and each
method's evaluation variants in the table, resumable, shared by ``--jobs N`` processes, then the
report). Each file's header gives the commands that prepare its data. A table of your own: copy one
and edit its rows (mmrec/runs/experiment.py describes the format).
"""

import sys

if __name__ == "__main__":
    sys.exit(__doc__.replace("Replaced by experiment files", "bench/methods_table.py is replaced by experiment files"))
