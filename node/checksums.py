"""The chunk checksums, each from the fastest implementation installed with the node.

CRC-32 is zlib's polynomial (API.md: `crc32` is what `zlib.crc32` returns), computed by ISA-L
(python-isal) with carry-less multiplication: ~0.016 ms per MiB here against zlib's ~0.150
(tests/bench/test_micro.py), on every chunk of every upload and download, in the node, the
client and the load generator alike. It releases the GIL, as zlib's does.

CRC-32C is google-crc32c's (hardware SSE4.2); it takes only `bytes`, so a memoryview costs
one copy, which the caller pays only when a chunk carries crc32c.
"""

from __future__ import annotations

import google_crc32c
from isal.isal_zlib import crc32

__all__ = ["crc32", "crc32c"]


def crc32c(data) -> int:
    return google_crc32c.value(data if isinstance(data, bytes) else bytes(data))
