"""node.checksums computes exactly what API.md names: zlib's CRC-32 and CRC-32C (Castagnoli),
for bytes and memoryviews alike (the node checks chunks as views into gRPC's buffers)."""

from __future__ import annotations

import zlib

import google_crc32c
from hypothesis import given
from hypothesis import strategies as st

from node import checksums


@given(st.binary(max_size=70_000), st.integers(0, 64))
def test_crc32_is_zlibs_for_bytes_and_views(data, cut):
    assert checksums.crc32(data) == zlib.crc32(data)
    view = memoryview(data)[cut:]
    assert checksums.crc32(view) == zlib.crc32(view)


@given(st.binary(max_size=70_000), st.integers(0, 64))
def test_crc32c_is_castagnoli_for_bytes_and_views(data, cut):
    assert checksums.crc32c(data) == google_crc32c.value(data)
    assert checksums.crc32c(memoryview(data)[cut:]) == google_crc32c.value(data[cut:])


def test_known_vectors():
    # The check values of both polynomials over b"123456789".
    assert checksums.crc32(b"123456789") == 0xCBF43926
    assert checksums.crc32c(b"123456789") == 0xE3069283
