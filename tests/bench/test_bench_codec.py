"""The bench's hand codec agrees with the generated protobuf code (tools/bench/codec.py)."""

import zlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from node.pb import oss_pb2 as pb
from tools.bench import codec

uint32 = st.integers(0, 2**32 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(upload_id=st.text(max_size=40), offset=int64, data=st.binary(max_size=600),
       crc32=st.one_of(st.none(), uint32), sha256=st.text(max_size=70))
def test_upload_chunk_parses_as_protobuf(upload_id, offset, data, crc32, sha256):
    raw = codec.upload_chunk(upload_id, offset, data, crc32, sha256)
    msg = pb.UploadChunk.FromString(raw)
    assert (msg.upload_id, msg.offset, msg.data, msg.sha256) == (upload_id, offset, data, sha256)
    assert msg.HasField("crc32") == (crc32 is not None)
    if crc32 is not None:
        assert msg.crc32 == crc32
    assert not msg.HasField("crc32c")


@settings(max_examples=100, deadline=None)
@given(upload_id=st.text(max_size=40), offset=st.integers(0, 2**63 - 1), data=st.binary(max_size=600),
       crc32=st.one_of(st.none(), uint32))
def test_upload_chunk_is_byte_identical_to_protobuf(upload_id, offset, data, crc32):
    """Same field order as protobuf writes: the bytes are identical, not just equivalent
    (except that empty data is still written as an empty field 3, which protobuf omits)."""
    assume(data)
    kwargs = dict(upload_id=upload_id, offset=offset, data=data)
    if crc32 is not None:
        kwargs["crc32"] = crc32
    assert codec.upload_chunk(upload_id, offset, data, crc32) == pb.UploadChunk(**kwargs).SerializeToString()


def test_prefix_plus_prebuilt_body_is_a_whole_chunk():
    data = bytes(range(256)) * 4096
    body = codec.upload_body(data, zlib.crc32(data))
    msg = pb.UploadChunk.FromString(codec.upload_prefix("", 5 << 20, len(data)) + body)
    assert (msg.upload_id, msg.offset, msg.data, msg.crc32) == ("", 5 << 20, data, zlib.crc32(data))


@st.composite
def download_chunks(draw):
    kwargs = dict(offset=draw(int64), data=draw(st.binary(max_size=600)), crc32=draw(uint32))
    if draw(st.booleans()):
        kwargs["object"] = pb.ObjectInfo(object_id=draw(st.text(max_size=20)), size=draw(int64),
                                         sha256=draw(st.text(max_size=64)),
                                         metadata=draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                                                       max_size=3)))
    return pb.DownloadChunk(**kwargs)


@settings(max_examples=300, deadline=None)
@given(download_chunks())
def test_download_chunk_decodes_like_protobuf(msg):
    offset, data, crc32, info = codec.decode_download_chunk(msg.SerializeToString())
    assert (offset, bytes(data), crc32) == (msg.offset, msg.data, msg.crc32)
    if msg.HasField("object"):
        assert pb.ObjectInfo.FromString(info) == msg.object
    else:
        assert info is None


@given(st.binary(max_size=60))
def test_download_decoder_raises_only_wire_error(raw):
    try:
        codec.decode_download_chunk(raw)
    except codec.WireError:
        pass


@pytest.mark.parametrize("value", [1, 127, 128, 300, 2**32 - 1, 2**63 - 1, -1, -(2**63)])
def test_varint_matches_protobuf(value):
    assert b"\x10" + codec.varint(value) == pb.UploadChunk(offset=value).SerializeToString()


@settings(max_examples=200, deadline=None)
@given(object_id=st.text(max_size=40), file_name=st.text(max_size=40), data=st.binary(max_size=600),
       crc32=uint32, sha256=st.text(max_size=70))
def test_put_request_parses_as_protobuf(object_id, file_name, data, crc32, sha256):
    """A put prefix joined to an upload body and the SHA-256 field is a PutObjectRequest."""
    raw = (codec.put_prefix(object_id, file_name, len(data)) + codec.upload_body(data, crc32)
           + codec.sha256_field(sha256))
    msg = pb.PutObjectRequest.FromString(raw)
    got = (msg.object_id, msg.file_name, msg.data, msg.crc32, msg.sha256)
    assert got == (object_id, file_name, data, crc32, sha256)
    assert msg.HasField("crc32") and not msg.HasField("crc32c")
