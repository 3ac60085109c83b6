"""`python -m tools.bench.upload_bench`: many concurrent Upload streams of distinct objects.

Each object is CreateUploadSession + one Upload stream of CRC-carrying chunks; it counts once
the node answers with the committed object. See tools/bench/README.md.
"""

import sys

from tools.bench.runner import main

if __name__ == "__main__":
    sys.exit(main("upload", __doc__.splitlines()[0]))
