"""The hand codec agrees with the generated protobuf code, and never fails any other way."""

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from node import wire
from node.pb import oss_pb2 as pb

uint32 = st.integers(0, 2**32 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def upload_chunks(draw):
    kwargs = dict(upload_id=draw(st.text(max_size=30)), offset=draw(int64),
                  data=draw(st.binary(max_size=300)), sha256=draw(st.text(max_size=70)))
    if draw(st.booleans()):
        kwargs["crc32"] = draw(uint32)
    if draw(st.booleans()):
        kwargs["crc32c"] = draw(uint32)
    return pb.UploadChunk(**kwargs)


def as_tuple(chunk) -> tuple:
    if isinstance(chunk, pb.UploadChunk):
        return (chunk.upload_id, chunk.offset, bytes(chunk.data),
                chunk.crc32 if chunk.HasField("crc32") else None, chunk.sha256,
                chunk.crc32c if chunk.HasField("crc32c") else None)
    return (chunk.upload_id, chunk.offset, bytes(chunk.data), chunk.crc32, chunk.sha256, chunk.crc32c)


@given(upload_chunks())
def test_decode_matches_protobuf(message):
    encoded = message.SerializeToString()
    assert as_tuple(wire.decode_upload_chunk(encoded)) == as_tuple(message)


@given(upload_chunks(), upload_chunks())
def test_repeated_fields_last_one_wins_like_protobuf(first, second):
    encoded = first.SerializeToString() + second.SerializeToString()
    assert as_tuple(wire.decode_upload_chunk(encoded)) == as_tuple(pb.UploadChunk.FromString(encoded))


@given(st.binary(max_size=200))
@settings(max_examples=2000)
def test_arbitrary_bytes_decode_like_protobuf_or_fail_typed(raw):
    try:
        ours = wire.decode_upload_chunk(raw)
    except wire.WireError:
        return  # we may be stricter than protobuf (we reject groups); never another exception
    theirs = pb.UploadChunk.FromString(raw)  # whatever we accept, protobuf accepts the same way
    assert as_tuple(ours) == as_tuple(theirs)


@given(st.integers(0, 2**62), st.binary(max_size=300), uint32, st.booleans())
def test_encode_download_chunk_parses_back(offset, data, crc, with_info):
    info = pb.ObjectInfo(object_id="a", size=offset, generation="g") if with_info else None
    encoded = wire.encode_download_chunk(offset, data, crc, info.SerializeToString() if info else b"")
    parsed = pb.DownloadChunk.FromString(encoded)
    assert (parsed.offset, parsed.data, parsed.crc32) == (offset, data, crc)
    assert parsed.HasField("object") == with_info
    if info:
        assert parsed.object == info


def test_data_is_a_view_not_a_copy():
    data = bytes(range(256)) * 4096
    encoded = pb.UploadChunk(upload_id="u", offset=5, data=data, crc32=zlib.crc32(data)).SerializeToString()
    chunk = wire.decode_upload_chunk(encoded)
    assert isinstance(chunk.data, memoryview) and chunk.data.obj is encoded
    assert chunk.data == data


@given(st.binary(max_size=100))
def test_safe_decoders_never_raise(raw):
    for decoder in (wire.decode_upload_chunk, pb.CreateUploadSessionRequest.FromString):
        result = wire.safe(decoder)(raw)
        assert isinstance(result, (wire.Malformed, wire.UploadChunkView, pb.CreateUploadSessionRequest))
