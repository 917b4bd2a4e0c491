"""Compare and probe embedding files (GFRE/LFRE matrices, linear/MLP probes, CPD, report).

Not implemented yet: this entry point arrives with the probe issue. Embedding files written
by `train.py` (see README, "Embedding files") are the input it will read.
"""

import sys

if __name__ == "__main__":
    sys.exit("probe.py is not implemented yet; train.py writes the embedding files it will read.")
