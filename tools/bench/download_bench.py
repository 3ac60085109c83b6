"""`python -m tools.bench.download_bench`: many concurrent Download streams, verified.

Every stream fetches --object_id (uploaded first if missing), or one of --objects auto-created
objects; chunks are checked for order and CRC-32 and each object for SHA-256 unless
--no-verify. See tools/bench/README.md.
"""

import sys

from tools.bench.runner import main

if __name__ == "__main__":
    sys.exit(main("download", __doc__.splitlines()[0]))
