"""tools/soak.py, briefly: it starts its own node, finds its gRPC port, and reports a clean run.

(It read the first "started at" line of the node's output, which since the HTTP face is the
HTTP port's: every call failed. A few seconds of soak keep that from coming back.)
"""

from __future__ import annotations

import re
import subprocess
import sys


def test_a_short_soak_against_its_own_node_is_clean():
    out = subprocess.run([sys.executable, "-m", "tools.soak", "--duration", "4", "--streams", "4",
                          "--sample", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = re.search(r"4 streams for \d+ s: (\d+) rounds, .* moved, (\d+) errors", out.stdout)
    assert summary, out.stdout[-2000:]
    assert int(summary.group(1)) > 0 and int(summary.group(2)) == 0
