"""Upload contents are distinct per object and the prebuilt bodies carry the right CRC-32."""

import hashlib
import zlib

from node.pb import oss_pb2 as pb
from tools.bench import codec
from tools.bench.cli import parse_size
from tools.bench.workload import ContentPool, object_tag

KiB = 1024


def _reassemble(pool, spec) -> bytes:
    out = bytearray()
    for offset, length, body in pool.chunks(spec):
        msg = pb.UploadChunk.FromString(codec.upload_prefix("u", offset, length) + body)
        assert msg.offset == offset == len(out) and len(msg.data) == length
        assert msg.crc32 == zlib.crc32(msg.data)
        out += msg.data
    return bytes(out)


def test_objects_differ_and_hash_as_sent():
    pool = ContentPool(chunk_size=4 * KiB, file_size=10 * KiB + 123, pool_chunks=4, seed="t")
    specs = [pool.spec(f"o{n}", n, object_tag("run", 0, n % 3, n)) for n in range(40)]
    contents = [_reassemble(pool, s) for s in specs]
    assert len(set(contents)) == len(contents)
    for spec, content in zip(specs, contents):
        assert len(content) == spec.size
        assert pool.content(spec) == content
        assert pool.sha256(spec) == hashlib.sha256(content).hexdigest()


def test_small_objects_are_one_chunk():
    pool = ContentPool(chunk_size=1024 * KiB, file_size=16 * KiB, pool_chunks=8, seed=1)
    chunks = list(pool.chunks(pool.spec("s", 0, b"tag")))
    assert [(offset, length) for offset, length, _ in chunks] == [(0, 16 * KiB)]


def test_zero_byte_object_has_no_chunks():
    pool = ContentPool(chunk_size=1024, file_size=0, pool_chunks=2, seed=1)
    assert list(pool.chunks(pool.spec("z", 0, b"t"))) == []


def test_parse_size():
    assert parse_size("256MiB") == 256 << 20
    assert parse_size("16KiB") == 16 << 10
    assert parse_size("1MB") == 10**6
    assert parse_size("4096") == 4096
