"""Upload writes and cold download reads that bypass the page cache (O_DIRECT), with a
buffered fallback.

Why: on these VMs every fresh page-cache page costs about 1–2 ms per MiB of kernel time to
fault in, and the page cache drains to disk at only ~0.5–0.8 GB/s, while the same disk takes
O_DIRECT writes at ~1.5 GB/s (`dd oflag=direct bs=1M`; tools/bench/RESULTS.md). An upload's
bytes are written once and read later, if at all, so caching them buys nothing at write time.

O_DIRECT wants the buffer address, the file offset and the length aligned to the device's
logical block (512 B or 4 KiB; `ALIGN` covers both). Chunks arrive at any size, so a
`DirectAppender` keeps the last, partial block of a stream (under 4 KiB) in memory, and
writes "that tail + the next chunk" rounded down to a whole block from an aligned buffer
that each pool thread reuses (a copy into memory that is already mapped is far cheaper than
a page-cache page). `flush()` writes the tail through the ordinary descriptor, so that an
fdatasync makes every byte up to the stream's offset durable; the next aligned write simply
covers that block again.

Where O_DIRECT is refused (tmpfs before Linux 6.6, some FUSE and network file systems), or a
direct write fails with EINVAL, the appender turns itself into plain buffered `pwrite`s.

Downloads read the same way what is not in the page cache (`pread_direct`, node.page_cache
says why): 100 readers of cold files here move ~1 GB/s with O_DIRECT at 0.08 CPU-s per GB,
buffered 1.2–1.5 GB/s at 0.39–0.87 — and on two cores a download is bound by CPU, not disk.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

ALIGN = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_buffers = threading.local()


def align_down(n: int) -> int:
    return n & ~(ALIGN - 1)


def aligned_buffer(size: int) -> mmap.mmap:
    """This thread's page-aligned scratch buffer of at least `size` bytes (kept for reuse)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        if buf is not None:
            buf.close()
        buf = mmap.mmap(-1, max(align_down(size + ALIGN - 1), ALIGN))
        _buffers.buf = buf
    return buf


def open_direct(path: str) -> int | None:
    """A second, O_DIRECT descriptor for writing `path`, or None if the file system refuses."""
    if not _O_DIRECT:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC | _O_DIRECT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


def open_direct_read(fd: int) -> int | None:
    """A second, O_DIRECT descriptor of the very file `fd` is open on (through /proc, so a
    version replaced or unlinked since stays the one read), or None if the file system refuses."""
    if not _O_DIRECT:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | _O_DIRECT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT):
            return None
        raise


def pread_direct(direct_fd: int, offset: int, length: int) -> memoryview:
    """[offset, offset + length) read with O_DIRECT into this thread's aligned buffer: the
    device writes the bytes there, no page-cache page is made and none is copied. The view is
    valid until this thread's next use of the buffer; shorter only at the end of the file."""
    start = align_down(offset)
    span = align_down(offset + length + ALIGN - 1) - start
    buf = aligned_buffer(span)
    view = memoryview(buf)[:span]
    got = 0
    while got < span:
        n = os.preadv(direct_fd, [view[got:]], start + got)
        if n <= 0:
            break
        got += n
        if n % ALIGN:  # the end of the file (a direct read stops only there or at `span`)
            break
    lead = offset - start
    return view[lead:max(lead, min(got, lead + length))]


def pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class DirectAppender:
    """Sequential writes of one stream to one file, page cache bypassed where possible.

    `fd` is the ordinary descriptor (flushes, fallback writes); `direct_fd` the O_DIRECT one,
    owned by the appender. Bytes below `tail_start` are on the device (or in the page cache
    after a fallback); bytes in [tail_start, end) are in `tail` and, after `flush()`, in the
    file too.
    """

    def __init__(self, fd: int, direct_fd: int | None) -> None:
        self.fd = fd
        self.direct_fd = direct_fd
        self.tail = bytearray()
        self.tail_start = -1  # unknown until the first write says where the stream is

    @property
    def end(self) -> int:
        return self.tail_start + len(self.tail)

    def write(self, offset: int, data) -> None:
        if self.direct_fd is None:
            pwrite_all(self.fd, data, offset)
            return
        if self.tail_start < 0 or offset != self.end:
            self._restart_at(offset)
        total = len(self.tail) + len(data)
        whole = align_down(total)
        if whole == 0:
            self.tail += data
            return
        buf = aligned_buffer(total)
        held = len(self.tail)
        buf[:held] = self.tail
        buf[held:total] = data
        try:
            pwrite_all(self.direct_fd, memoryview(buf)[:whole], self.tail_start)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # Alignment this device does not take: from now on write the ordinary way, starting
            # with these bytes (the held tail included).
            start = self.tail_start
            self.close()
            self.forget()
            pwrite_all(self.fd, memoryview(buf)[:total], start)
            return
        self.tail = bytearray(buf[whole:total])
        self.tail_start += whole

    def flush(self) -> None:
        """Put the held tail into the file, so that fdatasync covers every written byte."""
        if self.tail:
            pwrite_all(self.fd, self.tail, self.tail_start)

    def forget(self) -> None:
        """The file was truncated or rewritten behind us: re-read the tail at the next write."""
        self.tail = bytearray()
        self.tail_start = -1

    def close(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None

    def _restart_at(self, offset: int) -> None:
        """Start (or jump) to `offset`: flush what is held, load the partial block below it."""
        if self.tail_start >= 0:
            self.flush()
        start = align_down(offset)
        self.tail = bytearray(os.pread(self.fd, offset - start, start)) if offset > start else bytearray()
        if len(self.tail) != offset - start:
            raise OSError(errno.EIO, f"file is shorter than the stream's offset {offset}")
        self.tail_start = start
