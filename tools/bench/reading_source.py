"""The reading source: the bare server's Download, doing to every byte what the node must do.

Why: the bare source (bare_server) sends messages it built once and keeps, so node/bare mixes
two costs: the work any server that serves stored bytes has to do (read each chunk from the
file, a copy out of the page cache; its CRC-32; its message around it, a second copy) and the
node's own (the catalog lookup, the page-cache check per chunk, pacing, metrics, the stall
timer, the pipelined reads). This source does the first and none of the second, so "node /
reading source" says how much of the warm download's gap to the bare source is the node's,
as the verifying sink does for uploads. `python -m tools.bench.bare_server --read-source` runs
it; everything but Download is the bare server's.

How, mirroring the node's warm path (node.service `_read_chunk` for a chunk in the page cache,
node.streams `DownloadReader.message`) with the node's own functions:

* the parent writes the bare source's content (the same bytes, so StatObject's SHA-256 holds)
  to one temp file, which each worker opens; having just been written it is in the page cache,
  as the node's objects are in a warm download;
* each chunk is read on the event loop with `os.pread`, checksummed with node.checksums.crc32
  and encoded with node.wire.encode_download_chunk (ObjectInfo on the first), never cached.
"""

from __future__ import annotations

import os

from node.checksums import crc32
from node.wire import encode_download_chunk
from tools.bench.bare_server import BareServicer, source_buffer

#: How much of the file the parent writes per call.
WRITE_BLOCK = 8 * 1024 * 1024


def write_source_file(path: str, size: int, chunk_size: int) -> None:
    """`size` bytes of the bare source's content (its buffer repeated) at `path`."""
    buffer = source_buffer(chunk_size)
    block = buffer * max(1, WRITE_BLOCK // len(buffer))
    with open(path, "wb") as fh:
        written = 0
        while written < size:
            written += fh.write(block[:size - written])


class ReadingServicer(BareServicer):
    """Download from the source file; the rest is the bare server's."""

    def __init__(self, pb, worker_id: int, workers: int, source, chunk_size: int, path: str) -> None:
        super().__init__(pb, worker_id, workers, source, chunk_size)
        self.fd = os.open(path, os.O_RDONLY)
        if os.fstat(self.fd).st_size < source.size:
            raise ValueError(f"the source file {path} is shorter than the object ({source.size} bytes)")

    def chunk_message(self, offset: int, length: int, info: bytes | None) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OSError(f"short read of the source file at {offset}")
        return encode_download_chunk(offset, data, crc32(data), info or b"")
