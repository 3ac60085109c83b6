"""`python -m node` is the `mini-oss` command."""

import sys

from node.cli import main

sys.exit(main())
