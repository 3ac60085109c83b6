"""`python -m tools.bench.small_bench`: many 16 KiB objects; reports durable commits per second.

The same as `upload_bench --small` (defaults: 16 KiB objects, 10 seconds): every object is one
PutObject call (`--small-calls session`: a session and one single-chunk Upload stream, as before
PutObject existed), and counts when the node answers that it committed it (fsync + rename +
catalog write). See tools/bench/README.md.
"""

import sys

from tools.bench.runner import main

if __name__ == "__main__":
    sys.exit(main("upload", __doc__.splitlines()[0], small=True))
