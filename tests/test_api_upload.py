"""API.md "Upload rules", "Commit and layout" and the upload half of "Errors", against a real node.

Every test talks to the node through the raw generated stubs (see tests/contract.py). A test that
sends something bad also checks that it wrote or corrupted nothing: the session's
`uploaded_offset` is unchanged (or equals the error's `uploaded_offset`), nothing past it is kept in
the part file, and finishing the upload with the right bytes gives the right SHA-256.
"""

from __future__ import annotations


import grpc
import pytest

from node.pb import oss_pb2 as pb
from node.pb import oss_pb2_grpc
from tests.contract import (ABORTED, ACTIVE, AUTO, COMMITTED, caught_of, crc32, crc32c, create,
                            download_all, expect_error, get_session, KiB, msg, node_info,
                            object_files, part_file, part_size, payload, put, raises, sha256_hex,
                            Soft, stat, upload_chunks, upload_data, wait_until, CHUNK,
                            check_failed, finish)

SHARED_NODE = True  # tests that take `node`/`stub` share one node per catalog (conftest)

# --- the first message and upload_id -------------------------------------------------------

def test_empty_stream_is_invalid_argument(node, stub):
    session = create(stub, "obj", 10)
    raises(lambda: stub.Upload(iter([]), timeout=10), "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    after = get_session(stub, session.upload_id)
    assert after.state == ACTIVE and after.uploaded_offset == 0


def test_first_message_without_upload_id_is_invalid_argument(node, stub):
    data = payload(2 * CHUNK)
    session = create(stub, "obj", data)
    raises(lambda: stub.Upload(iter([msg(0, data[:CHUNK]), msg(CHUNK, data[CHUNK:])]),
                               timeout=10),
           "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    after = get_session(stub, session.upload_id)
    assert after.state == ACTIVE and after.uploaded_offset == 0
    assert part_size(node.data_dir, session.upload_id) == 0
    finish(stub, session.upload_id, data)


def test_later_message_with_a_different_upload_id_is_invalid_argument(node, stub):
    data_a, data_b = payload(3 * CHUNK, 1), payload(3 * CHUNK, 2)
    a, b = create(stub, "a", data_a), create(stub, "b", data_b)
    stream = [msg(0, data_a[:CHUNK], a.upload_id),
              msg(CHUNK, data_a[CHUNK:2 * CHUNK], b.upload_id)]
    caught = raises(lambda: stub.Upload(iter(stream), timeout=10),
                    "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    check_failed(stub, node, a.upload_id, caught)
    assert caught.uploaded_offset in (0, CHUNK)
    # The other session was not touched.
    assert get_session(stub, b.upload_id).uploaded_offset == 0
    assert part_size(node.data_dir, b.upload_id) == 0
    finish(stub, a.upload_id, data_a)
    finish(stub, b.upload_id, data_b)


def test_later_messages_may_omit_or_repeat_the_upload_id(node, stub):
    data = payload(3 * CHUNK)
    s = create(stub, "obj", data)
    stream = [msg(0, data[:CHUNK], s.upload_id), msg(CHUNK, data[CHUNK:2 * CHUNK]),
              msg(2 * CHUNK, data[2 * CHUNK:], s.upload_id)]
    resp = stub.Upload(iter(stream), timeout=10)
    assert resp.session.state == COMMITTED
    assert resp.object.sha256 == sha256_hex(data)


# --- chunk sizes --------------------------------------------------------------------------

def test_chunk_size_advice_is_clamped(node_factory):
    node = node_factory(workers=1, max_chunk_size=64 * KiB, default_chunk_size=16 * KiB)
    stub = node.stub()
    info = node_info(stub)
    assert info.max_chunk_size == 64 * KiB and info.default_chunk_size == 16 * KiB
    cases = {0: 16 * KiB, 1: 4 * KiB, 4 * KiB - 1: 4 * KiB, 4 * KiB: 4 * KiB, 5000: 5000,
             64 * KiB: 64 * KiB, 64 * KiB + 1: 64 * KiB, 2**31 - 1: 64 * KiB}
    got = {asked: create(stub, f"o{i}", 100, chunk_size=asked).chunk_size
           for i, asked in enumerate(cases)}
    assert got == cases


def test_chunk_size_zero_is_the_node_default(node, stub):
    assert create(stub, "obj", 100).chunk_size == node_info(stub).default_chunk_size


@pytest.mark.own_node
def test_negative_chunk_size_is_invalid_argument_and_creates_nothing(node, stub):
    with expect_error("INVALID_ARGUMENT", "INVALID_ARGUMENT"):
        create(stub, "obj", 100, chunk_size=-1)
    assert stub.ListUploadSessions(pb.ListUploadSessionsRequest()).sessions == []
    assert not (node.data_dir / "parts").exists() or not list((node.data_dir / "parts").iterdir())


def test_chunk_over_max_chunk_size_is_chunk_too_large(node_factory):
    node = node_factory(workers=1, max_chunk_size=64 * KiB, default_chunk_size=16 * KiB)
    stub = node.stub()
    data = payload(200 * KiB)
    s = create(stub, "obj", data)
    # A chunk of exactly max_chunk_size is fine; one byte more is not.
    stream = [msg(0, data[:64 * KiB], s.upload_id), msg(64 * KiB, data[64 * KiB:128 * KiB + 1])]
    caught = raises(lambda: stub.Upload(iter(stream), timeout=10),
                    "INVALID_ARGUMENT", "CHUNK_TOO_LARGE")
    check_failed(stub, node, s.upload_id, caught)
    assert caught.uploaded_offset == 64 * KiB
    # Also as the first chunk of a stream.
    caught = raises(lambda: upload_chunks(stub, s.upload_id,
                                          [(64 * KiB, data[64 * KiB:128 * KiB + 1])]),
                    "INVALID_ARGUMENT", "CHUNK_TOO_LARGE")
    check_failed(stub, node, s.upload_id, caught)
    assert caught.uploaded_offset == 64 * KiB
    finish(stub, s.upload_id, data, 64 * KiB)


def test_a_max_size_chunk_fits_the_default_message_limit(node, stub):
    """With the default max_chunk_size (4 MiB) a full chunk plus every other field passes the
    node's gRPC limit, and one byte more is the service's CHUNK_TOO_LARGE, not a gRPC error."""
    info = node_info(stub)
    big = info.max_chunk_size
    data = payload(big + 10)
    digest = sha256_hex(data)
    s = create(stub, "big", data)
    caught = raises(lambda: upload_chunks(stub, s.upload_id, [msg(0, data[:big + 1], s.upload_id,
                                                                  crc32c_=AUTO, sha256=digest)]),
                    "INVALID_ARGUMENT", "CHUNK_TOO_LARGE")
    assert caught.uploaded_offset == 0
    resp = upload_chunks(stub, s.upload_id, [msg(0, data[:big], s.upload_id, crc32c_=AUTO,
                                                 sha256=digest), (big, data[big:])])
    assert resp.session.state == COMMITTED and resp.object.sha256 == digest
    # Downloading max-size chunks needs a client whose receive limit is above 4 MiB too.
    opts = [("grpc.max_receive_message_length", big + 1024 * KiB)]
    with grpc.insecure_channel(node.addr, options=opts) as ch:
        got = download_all(oss_pb2_grpc.ObjectStorageStub(ch), "big", chunk_size=big,
                           max_chunk=big)
    assert got.data == data and len(got.chunks) == 2


def test_chunks_of_any_size_up_to_the_max_are_accepted(node, stub):
    data = payload(50_000)
    s = create(stub, "obj", data, chunk_size=4 * KiB)
    sizes = [1, 2, 4095, 4097, 10_000, 20_000]
    pieces, off = [], 0
    for size in sizes:
        pieces.append((off, data[off:off + size]))
        off += size
    pieces.append((off, data[off:]))
    resp = upload_chunks(stub, s.upload_id, pieces)
    assert resp.session.state == COMMITTED
    assert resp.object.sha256 == sha256_hex(data)


# --- duplicates, trims, gaps, past the end -----------------------------------------------

def test_duplicate_chunks_are_accepted_and_ignored(node, stub):
    data = payload(4 * CHUNK)
    s = create(stub, "obj", data)
    assert upload_data(stub, s.upload_id, data, CHUNK, end=2 * CHUNK).session.uploaded_offset \
        == 2 * CHUNK
    garbage = payload(CHUNK, 99)
    # Exact retries, and a "duplicate" with other bytes (and a valid CRC of those bytes): all
    # wholly below uploaded_offset, so accepted and ignored.
    stream = [(0, data[:CHUNK]), (CHUNK, data[CHUNK:2 * CHUNK]), (0, garbage), (100, garbage[:50]),
              (0, data[:2 * CHUNK])]
    resp = upload_chunks(stub, s.upload_id, stream)
    assert resp.session.state == ACTIVE and resp.session.uploaded_offset == 2 * CHUNK
    # And duplicates again in the stream that completes it.
    resp = upload_chunks(stub, s.upload_id, [(0, garbage), (2 * CHUNK, data[2 * CHUNK:]),
                                             (CHUNK, garbage)])
    assert resp.session.state == COMMITTED
    assert resp.object.sha256 == sha256_hex(data)
    assert download_all(stub, "obj").data == data


def test_straddling_chunk_is_trimmed_to_its_new_part(node, stub):
    data = payload(4 * CHUNK)
    s = create(stub, "obj", data)
    upload_data(stub, s.upload_id, data, CHUNK, end=CHUNK)
    # The part below uploaded_offset is other bytes: trimming must drop exactly that part.
    straddle = payload(CHUNK // 2, 7) + data[CHUNK:3 * CHUNK]
    resp = upload_chunks(stub, s.upload_id, [(CHUNK // 2, straddle)])
    assert resp.session.state == ACTIVE and resp.session.uploaded_offset == 3 * CHUNK
    finish(stub, s.upload_id, data)


def test_gap_is_offset_mismatch(node, stub):
    data = payload(4 * CHUNK)
    s = create(stub, "obj", data)
    upload_data(stub, s.upload_id, data, CHUNK, end=CHUNK)
    caught = raises(lambda: upload_chunks(stub, s.upload_id, [(2 * CHUNK, data[2 * CHUNK:])]),
                    "FAILED_PRECONDITION", "OFFSET_MISMATCH")
    check_failed(stub, node, s.upload_id, caught)
    assert caught.uploaded_offset == CHUNK
    # A gap after good chunks in the same stream: the good ones are checkpointed first.
    stream = [(CHUNK, data[CHUNK:2 * CHUNK]), (2 * CHUNK + 1, data[2 * CHUNK + 1:])]
    caught = raises(lambda: upload_chunks(stub, s.upload_id, stream),
                    "FAILED_PRECONDITION", "OFFSET_MISMATCH")
    check_failed(stub, node, s.upload_id, caught)
    assert caught.uploaded_offset == 2 * CHUNK
    finish(stub, s.upload_id, data)


@pytest.mark.own_node
def test_bytes_past_file_size_are_past_end(node, stub):
    data = payload(2 * CHUNK + 100)
    s = create(stub, "obj", data)
    upload_data(stub, s.upload_id, data, CHUNK, end=2 * CHUNK)
    # The last chunk carries 1 byte too many.
    caught = raises(lambda: upload_chunks(stub, s.upload_id,
                                          [(2 * CHUNK, data[2 * CHUNK:] + b"x")]),
                    "OUT_OF_RANGE", "PAST_END")
    session = check_failed(stub, node, s.upload_id, caught)
    assert session.state == ACTIVE
    # Read as: the offending chunk is rejected whole, nothing of it is kept.
    assert caught.uploaded_offset == 2 * CHUNK
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "obj")
    # A chunk starting at file_size with data is past the end too (after a good one in-stream).
    stream = [(2 * CHUNK, data[2 * CHUNK:2 * CHUNK + 50]), (len(data), b"zz")]
    caught = raises(lambda: upload_chunks(stub, s.upload_id, stream), "OUT_OF_RANGE", "PAST_END")
    check_failed(stub, node, s.upload_id, caught)
    assert caught.uploaded_offset == 2 * CHUNK + 50
    finish(stub, s.upload_id, data)


def test_data_for_a_zero_byte_object_is_past_end(node, stub):
    s = create(stub, "empty", 0)
    caught = raises(lambda: upload_chunks(stub, s.upload_id, [(0, b"x")]), "OUT_OF_RANGE",
                    "PAST_END")
    assert caught.uploaded_offset == 0
    assert get_session(stub, s.upload_id).uploaded_offset == 0
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "empty")


def test_extreme_numbers_are_service_errors_and_write_nothing(node, stub):
    data = payload(2 * CHUNK)
    s = create(stub, "obj", data)
    upload_data(stub, s.upload_id, data, CHUNK, end=CHUNK)
    soft = Soft()
    for label, chunk in {"offset -1": msg(-1, data[:10], s.upload_id),
                         "offset -2**63": msg(-2**63, b"x", s.upload_id),
                         "offset 2**63-1": msg(2**63 - 1, b"x", s.upload_id)}.items():
        with soft.check(label):
            try:
                stub.Upload(iter([chunk]), timeout=10)
            except grpc.RpcError as exc:
                caught = caught_of(exc)   # a typed service error: never UNKNOWN/INTERNAL
                assert caught.code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE")
                check_failed(stub, node, s.upload_id, caught)
            assert get_session(stub, s.upload_id).uploaded_offset == CHUNK
    for label, fields in {"file_size 2**63-1": dict(file_size=2**63 - 1),
                          "chunk_size -2**31": dict(file_size=10, chunk_size=-2**31)}.items():
        with soft.check(label):
            try:
                stub.CreateUploadSession(pb.CreateUploadSessionRequest(
                    object_id="x", file_name="x", **fields), timeout=10)
                raise AssertionError("accepted")
            except grpc.RpcError as exc:
                caught = caught_of(exc)
                assert (caught.code, caught.reason) in (("RESOURCE_EXHAUSTED", "TOO_LARGE"),
                                                        ("INVALID_ARGUMENT", "INVALID_ARGUMENT"))
    soft.done()
    finish(stub, s.upload_id, data)


# --- checksums ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["crc32", "crc32c"])
def test_bad_chunk_checksum_is_checksum_mismatch(node, stub, kind):
    data = payload(4 * CHUNK)
    s = create(stub, "obj", data)
    good = data[2 * CHUNK:3 * CHUNK]
    if kind == "crc32":
        bad = msg(2 * CHUNK, good, crc32_=crc32(good) ^ 1)
    else:
        bad = msg(2 * CHUNK, good, crc32_=None, crc32c_=crc32c(good) ^ 1)
    stream = [msg(0, data[:CHUNK], s.upload_id), msg(CHUNK, data[CHUNK:2 * CHUNK]), bad]
    caught = raises(lambda: stub.Upload(iter(stream), timeout=10), "DATA_LOSS", "CHECKSUM_MISMATCH")
    check_failed(stub, node, s.upload_id, caught)
    assert caught.uploaded_offset == 2 * CHUNK
    finish(stub, s.upload_id, data)


def test_a_crc_of_zero_is_checked_not_taken_as_unset(node, stub):
    data = payload(CHUNK)
    assert crc32(data) != 0 and crc32c(data) != 0
    s = create(stub, "obj", data)
    for bad in (msg(0, data, s.upload_id, crc32_=0), msg(0, data, s.upload_id, crc32_=None,
                                                         crc32c_=0)):
        caught = raises(lambda: stub.Upload(iter([bad]), timeout=10),
                        "DATA_LOSS", "CHECKSUM_MISMATCH")
        check_failed(stub, node, s.upload_id, caught)
        assert caught.uploaded_offset == 0
    finish(stub, s.upload_id, data)


def test_good_crc32c_and_both_checksums_are_accepted(node, stub):
    data = payload(3 * CHUNK)
    s = create(stub, "obj", data)
    stream = [msg(0, data[:CHUNK], s.upload_id, crc32_=None, crc32c_=AUTO),
              msg(CHUNK, data[CHUNK:2 * CHUNK], crc32_=AUTO, crc32c_=AUTO),
              msg(2 * CHUNK, data[2 * CHUNK:], crc32_=None)]  # no checksum at all: optional
    resp = stub.Upload(iter(stream), timeout=10)
    assert resp.session.state == COMMITTED
    assert resp.object.sha256 == sha256_hex(data)


def test_crc_of_a_duplicate_or_straddling_chunk_is_checked_over_the_whole_chunk(node, stub):
    data = payload(4 * CHUNK)
    s = create(stub, "obj", data)
    upload_data(stub, s.upload_id, data, CHUNK, end=2 * CHUNK)
    cases = {
        "duplicate crc32": msg(0, data[:CHUNK], s.upload_id, crc32_=crc32(data[:CHUNK]) ^ 1),
        "duplicate crc32c": msg(0, data[:CHUNK], s.upload_id, crc32_=None,
                                crc32c_=crc32c(data[:CHUNK]) ^ 1),
        # CRC right for the new part only: still wrong for the chunk as sent.
        "straddle": msg(CHUNK, data[CHUNK:3 * CHUNK], s.upload_id,
                        crc32_=crc32(data[2 * CHUNK:3 * CHUNK])),
    }
    for label, bad in cases.items():
        caught = raises(lambda: stub.Upload(iter([bad]), timeout=10),
                        "DATA_LOSS", "CHECKSUM_MISMATCH")
        check_failed(stub, node, s.upload_id, caught)
        assert caught.uploaded_offset == 2 * CHUNK, label
    finish(stub, s.upload_id, data)


# --- sha256 -------------------------------------------------------------------------------

def test_sha256_is_case_insensitive_and_reported_lowercase(node, stub):
    data = payload(3 * CHUNK)
    digest = sha256_hex(data)
    s = create(stub, "obj", data, sha256=digest.upper())
    assert s.sha256 == digest
    assert get_session(stub, s.upload_id).sha256 == digest
    # The same hash again on a chunk, in mixed case, is not a second, differing hash.
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(digest))
    stream = [msg(0, data[:CHUNK], s.upload_id, sha256=mixed), msg(CHUNK, data[CHUNK:])]
    resp = stub.Upload(iter(stream), timeout=10)
    assert resp.session.state == COMMITTED
    assert resp.object.sha256 == digest and resp.session.sha256 == digest
    assert stat(stub, "obj").sha256 == digest


def test_sha256_on_a_chunk_is_remembered_for_later_streams(node, stub):
    data = payload(3 * CHUNK)
    s = create(stub, "obj", data)
    assert s.sha256 == ""
    resp = upload_chunks(stub, s.upload_id,
                         [msg(0, data[:CHUNK], s.upload_id, sha256=sha256_hex(data).upper())])
    assert resp.session.sha256 == sha256_hex(data)
    assert get_session(stub, s.upload_id).sha256 == sha256_hex(data)
    finish(stub, s.upload_id, data)


@pytest.mark.own_node
def test_wrong_sha256_on_a_chunk_is_remembered_and_fails_the_commit(node, stub):
    data = payload(3 * CHUNK)
    s = create(stub, "obj", data)
    wrong = sha256_hex(b"something else")
    upload_chunks(stub, s.upload_id, [msg(0, data[:CHUNK], s.upload_id, sha256=wrong)])
    caught = raises(lambda: upload_data(stub, s.upload_id, data, CHUNK, start=CHUNK),
                    "DATA_LOSS", "SHA256_MISMATCH")
    session = check_failed(stub, node, s.upload_id, caught)
    assert session.state == ABORTED
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "obj")


def test_two_differing_sha256_are_invalid_argument(node, stub):
    data = payload(3 * CHUNK)
    digest, other = sha256_hex(data), sha256_hex(b"other")
    s = create(stub, "obj", data, sha256=digest)
    caught = raises(lambda: upload_chunks(stub, s.upload_id,
                                          [msg(0, data[:CHUNK], s.upload_id, sha256=other)]),
                    "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    check_failed(stub, node, s.upload_id, caught)
    assert get_session(stub, s.upload_id).sha256 == digest
    # Two chunks of one stream that differ (the session had none at creation).
    t = create(stub, "obj2", data)
    stream = [msg(0, data[:CHUNK], t.upload_id, sha256=digest),
              msg(CHUNK, data[CHUNK:2 * CHUNK], sha256=other)]
    caught = raises(lambda: stub.Upload(iter(stream), timeout=10),
                    "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    check_failed(stub, node, t.upload_id, caught)
    assert get_session(stub, t.upload_id).sha256 == digest
    finish(stub, s.upload_id, data)
    finish(stub, t.upload_id, data)


@pytest.mark.own_node
@pytest.mark.parametrize("bad", ["abc", "g" * 64, "0" * 63, "0" * 65, " " + "0" * 63])
def test_malformed_sha256_is_invalid_argument(node, stub, bad):
    with expect_error("INVALID_ARGUMENT", "INVALID_ARGUMENT"):
        create(stub, "obj", 10, sha256=bad)
    data = payload(10)
    s = create(stub, "obj", data)
    caught = raises(lambda: upload_chunks(stub, s.upload_id, [msg(0, data, s.upload_id,
                                                                  sha256=bad)]),
                    "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    check_failed(stub, node, s.upload_id, caught)
    assert caught.uploaded_offset == 0
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "obj")


def test_wrong_whole_object_hash_aborts_and_shows_nothing(node, stub):
    old = put(stub, "obj", payload(2 * CHUNK, 1)).object
    data = payload(3 * CHUNK, 2)
    s = create(stub, "obj", data, sha256=sha256_hex(b"not this"))
    upload_data(stub, s.upload_id, data, CHUNK, end=CHUNK)
    assert part_file(node.data_dir, s.upload_id) is not None
    caught = raises(lambda: upload_data(stub, s.upload_id, data, CHUNK, start=CHUNK),
                    "DATA_LOSS", "SHA256_MISMATCH")
    session = check_failed(stub, node, s.upload_id, caught)
    assert session.state == ABORTED
    # Nothing became visible: the old version is still the object, the new bytes are freed.
    assert stat(stub, "obj") == old
    assert download_all(stub, "obj").info.generation == old.generation
    wait_until(lambda: part_file(node.data_dir, s.upload_id) is None, 5, what="part file freed")
    assert object_files(node.data_dir, upload_id=s.upload_id) == []
    # The session is ended: a retry finds no session.
    with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
        upload_data(stub, s.upload_id, data, CHUNK, start=0)
