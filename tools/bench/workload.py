"""What the uploads carry: distinct, real contents per object at almost no client cost.

Why: a bench that sends the same bytes every time (or no CRC, or no data) measures a node that
could short-cut its work. Here every object is different and every chunk carries its CRC-32,
yet the client computes almost nothing per chunk:

* Each client process draws `pool_chunks` random chunks once and prebuilds, for each, the
  wire body (data + CRC-32 field, see `codec.upload_body`), so the CRC is precomputed.
* Object `n` takes its chunks from the pool in its own order: chunk k is pool entry
  `(start + k * stride) % pool_size`, with `start` and an odd `stride` drawn from the object's
  number (the pool size is a power of two, so every order is a permutation).
* Its first chunk also begins with a 32-byte tag unique to the object (run id, process,
  stream, sequence), so no two objects are equal even when two orders happen to coincide;
  that one chunk is built (and its CRC computed) per object.
* With `--sha256`, each object's SHA-256 is computed over exactly these chunks and sent, so the
  node verifies it at commit.

A short last chunk (file_size not a multiple of the chunk size) is built on the fly.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterator

from node.checksums import crc32
from tools.bench import codec

TAG_BYTES = 32


def _power_of_two_at_least(n: int) -> int:
    size = 1
    while size < n:
        size <<= 1
    return size


@dataclass(frozen=True)
class ObjectSpec:
    """One object to upload: its id, size and the order its chunks come from the pool."""

    object_id: str
    size: int
    number: int           # unique within the client process
    tag: bytes
    start: int
    stride: int


class ContentPool:
    """Random chunks and their prebuilt wire bodies, shared by every stream of a process."""

    def __init__(self, chunk_size: int, file_size: int, pool_chunks: int, seed: str | int) -> None:
        self.chunk_size = max(1, min(chunk_size, file_size)) if file_size else chunk_size
        self.file_size = file_size
        self.size = _power_of_two_at_least(pool_chunks)
        rng = random.Random(seed)
        self.data = [rng.randbytes(self.chunk_size) for _ in range(self.size)]
        self.crcs = [crc32(d) for d in self.data]
        self.bodies = [codec.upload_body(d, c) for d, c in zip(self.data, self.crcs)]
        self.chunks_per_object = -(-file_size // self.chunk_size) if file_size else 0

    def spec(self, object_id: str, number: int, tag: bytes) -> ObjectSpec:
        rng = random.Random(tag + number.to_bytes(8, "little"))  # deterministic per object
        return ObjectSpec(object_id=object_id, size=self.file_size, number=number,
                          tag=tag[:TAG_BYTES].ljust(TAG_BYTES, b"\0"),
                          start=rng.randrange(self.size), stride=rng.randrange(self.size) | 1)

    def _pool_index(self, spec: ObjectSpec, k: int) -> int:
        return (spec.start + k * spec.stride) % self.size

    def chunks(self, spec: ObjectSpec) -> Iterator[tuple[int, int, bytes]]:
        """(offset, data length, wire body) for every chunk of the object, in order."""
        offset = 0
        for k in range(self.chunks_per_object):
            length = min(self.chunk_size, spec.size - offset)
            index = self._pool_index(spec, k)
            if k == 0 or length != self.chunk_size:
                data = self.chunk_data(spec, k, length)
                body = codec.upload_body(data, crc32(data))
            else:
                body = self.bodies[index]
            yield offset, length, body
            offset += length

    def whole_body(self, spec: ObjectSpec) -> bytes:
        """The wire body (data and its CRC-32) of an object of at most one chunk, sent in one
        PutObject: the first chunk's (built per object, its tag makes it unique), or an empty
        body with the CRC-32 of nothing."""
        assert self.chunks_per_object <= 1, "a whole body is for objects of one chunk at most"
        first = next(self.chunks(spec), None)
        return first[2] if first else codec.upload_body(b"", crc32(b""))

    def chunk_data(self, spec: ObjectSpec, k: int, length: int) -> bytes:
        """The plain data of chunk k (slow path: first chunk, short last chunk, hashing)."""
        data = self.data[self._pool_index(spec, k)][:length]
        if k == 0:
            tag = spec.tag[:length]
            data = tag + data[len(tag):]
        return data

    def sha256(self, spec: ObjectSpec) -> str:
        """SHA-256 of the whole object, over exactly the bytes `chunks` sends."""
        hasher = hashlib.sha256()
        offset = 0
        for k in range(self.chunks_per_object):
            length = min(self.chunk_size, spec.size - offset)
            if k == 0 or length != self.chunk_size:
                hasher.update(self.chunk_data(spec, k, length))
            else:
                hasher.update(self.data[self._pool_index(spec, k)])
            offset += length
        return hasher.hexdigest()

    def content(self, spec: ObjectSpec) -> bytes:
        """The whole object (tests only: never hold big objects in memory)."""
        return b"".join(self.chunk_data(spec, k, min(self.chunk_size, spec.size - k * self.chunk_size))
                        for k in range(self.chunks_per_object))


def upload_object_id(run_id: str, stream: int, n: int) -> str:
    return f"bench-up-{run_id}-{stream:04d}-{n:06d}"


def download_object_id(file_size: int, i: int) -> str:
    return f"bench-dl-{file_size}-{i:04d}"


def object_tag(run_id: str, process: int, stream: int, n: int) -> bytes:
    return f"{run_id}:{process}:{stream}:{n}".encode()
