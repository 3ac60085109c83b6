"""A download chunk read from the page cache straight into the message that carries it.

Why: gRPC Python sends a message only as a `bytes` object, so a chunk read with `os.pread`
was copied twice in user space before gRPC's own copy: once by the kernel into a fresh
`bytes`, once more by `b"".join((header, data))` into the message. On 2 cores under 100 warm
downloads, copies are most of a worker's CPU (`perf`: 19% memmove, 15% the kernel's page-cache
copy, against 3% for the Python interpreter), so the join's copy of every MiB is worth saving:
here the kernel reads the chunk into its final place in the message.

How: CPython's `PyBytes_FromStringAndSize(NULL, n)` makes a `bytes` object whose content is
not yet written; until it is handed to anyone, its owner may fill it (C extensions do exactly
this). `pread(2)` fills the data part, then the header is written in front. The header holds
the chunk's CRC-32, which is known only after the read, and its length depends on that CRC's
varint; the space left for it assumes a CRC of five varint bytes, as 15 in 16 CRCs are. For
the others (and for a CRC of 0, which proto3 leaves out) the message is joined as before.

Only where the trick is known to hold (CPython, where a bytes object's data sits at
`bytes.__basicsize__ - 1`, checked once at import) and only for messages of at least two
bytes (the empty and one-byte `bytes` are shared singletons); elsewhere `read_message` falls
back to pread + join. The messages are byte for byte those of `wire.encode_download_chunk`.
"""

from __future__ import annotations

import ctypes
import os
import platform

from node.checksums import crc32 as crc32_of
from node.wire import download_chunk_header, encode_download_chunk

#: The largest CRC-32 needs five varint bytes; the header is sized for one like it.
_FIVE_BYTE_CRC = 1 << 28


def _bytes_filler():
    """(new_bytes(n), data_address(b), pread(fd, address, n, offset)) when this interpreter
    allows filling a fresh bytes object, else None."""
    if platform.python_implementation() != "CPython":
        return None
    try:
        new = ctypes.pythonapi.PyBytes_FromStringAndSize
        new.restype = ctypes.py_object
        new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
        libc = ctypes.CDLL(None, use_errno=True)
        pread = libc.pread
        pread.restype = ctypes.c_ssize_t
        pread.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64)
    except (AttributeError, OSError):
        return None
    data_offset = bytes.__basicsize__ - 1  # PyBytesObject's ob_sval

    def address(b: bytes) -> int:
        return id(b) + data_offset

    probe = new(None, 4)
    ctypes.memmove(address(probe), b"oss!", 4)
    if probe != b"oss!":
        return None
    return new, address, pread


_FILLER = _bytes_filler()


def read_message(fd: int, offset: int, length: int, object_info: bytes = b"") -> tuple[bytes, int]:
    """The DownloadChunk of the `length` bytes of `fd` at `offset`, and their CRC-32. A file
    shorter than that is an OSError (the caller names the object)."""
    if _FILLER is None or length <= 0:
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise OSError(f"short read: {len(data)} of {length} bytes")
        crc = crc32_of(data)
        return encode_download_chunk(offset, data, crc, object_info), crc
    new, address, pread = _FILLER
    room = len(download_chunk_header(offset, length, _FIVE_BYTE_CRC, object_info))
    message = new(None, room + length)
    base = address(message)
    got = pread(fd, base + room, length, offset)  # (ctypes lets the GIL go meanwhile)
    if got < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    if got != length:
        raise OSError(f"short read: {got} of {length} bytes")
    data = memoryview(message)[room:]
    crc = crc32_of(data)
    header = download_chunk_header(offset, length, crc, object_info)
    if len(header) != room:
        return b"".join((header, data)), crc
    ctypes.memmove(base, header, room)
    return message, crc
