"""tools/soak.py, briefly: it starts its own node, finds its gRPC port, reports a clean run and
removes what it wrote.

(It read the first "started at" line of the node's output, which since the HTTP face is the
HTTP port's: every call failed. A few seconds of soak keep that from coming back.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_a_short_soak_against_its_own_node_is_clean(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tools.soak", "--duration", "4", "--streams", "4",
                          "--sample", "1"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = re.search(r"4 streams for \d+ s: (\d+) rounds, .* moved, (\d+) errors", out.stdout)
    assert summary, out.stdout[-2000:]
    assert int(summary.group(1)) > 0 and int(summary.group(2)) == 0
    assert os.listdir(tmp_path) == []  # its sources, copies and the node's data are gone
