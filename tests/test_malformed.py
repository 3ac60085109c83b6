"""Bytes that do not decode as the method's request: INVALID_ARGUMENT, never INTERNAL.

gRPC answers INTERNAL when a deserializer raises; the node wraps every decoder so a client's
garbage is the client's error (API.md: INTERNAL means a bug). Nothing may be created.
"""

import os

import grpc
import pytest

from node.pb import oss_pb2 as pb
from node.status import from_rpc_error

GARBAGE = [b"\xff", b"\x0a\x05ab", b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
           b"\x0a\x03\xff\xfe\xfd", b"\x0a\x80"]  # each one is invalid for every request type
UNARY = ["CreateUploadSession", "GetUploadSession", "AbortUploadSession", "StatObject",
         "ListObjects", "DeleteObject", "ListUploadSessions"]


def raw_unary(channel, method):
    return channel.unary_unary(f"/oss.v1.ObjectStorage/{method}", request_serializer=None,
                               response_deserializer=None)


def tree(path):
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, files in os.walk(path) for f in files)


@pytest.mark.parametrize("method", UNARY)
def test_undecodable_unary_request_is_invalid_argument(node, method):
    before = tree(node.data_dir)
    with node.channel() as channel:
        for garbage in GARBAGE:
            with pytest.raises(grpc.RpcError) as caught:
                raw_unary(channel, method)(garbage, timeout=10)
            err = from_rpc_error(caught.value)
            assert (err.code, err.reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), (garbage, err)
    assert tree(node.data_dir) == before


def test_undecodable_upload_message_is_invalid_argument_and_keeps_the_session(node, stub):
    session = stub.CreateUploadSession(pb.CreateUploadSessionRequest(
        object_id="o", file_name="f", file_size=10))
    with node.channel() as channel:
        upload = channel.stream_unary("/oss.v1.ObjectStorage/Upload", request_serializer=None,
                                      response_deserializer=None)
        first = pb.UploadChunk(upload_id=session.upload_id, offset=0, data=b"12345").SerializeToString()
        for garbage in GARBAGE:
            with pytest.raises(grpc.RpcError) as caught:
                upload(iter([first, garbage]), timeout=10)
            err = from_rpc_error(caught.value)
            assert (err.code, err.reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), (garbage, err)
            assert err.metadata["uploaded_offset"] == "5"
    again = stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=session.upload_id))
    assert again.state == pb.UploadSession.ACTIVE and again.uploaded_offset == 5


def test_undecodable_download_request_is_invalid_argument(node):
    with node.channel() as channel:
        download = channel.unary_stream("/oss.v1.ObjectStorage/Download", request_serializer=None,
                                        response_deserializer=None)
        for garbage in GARBAGE:
            with pytest.raises(grpc.RpcError) as caught:
                list(download(garbage, timeout=10))
            err = from_rpc_error(caught.value)
            assert (err.code, err.reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), (garbage, err)


@pytest.mark.parametrize("method", UNARY + ["GetNodeInfo", "Download"])
def test_request_stream_with_no_message_is_answered_invalid_argument(node, method):
    """grpc.aio alone never answers a unary-request call whose stream ends empty (it waits
    for ever and keeps the call's memory): the node answers it, with ErrorInfo."""
    path = f"/oss.v1.ObjectStorage/{method}"
    with node.channel() as channel:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as caught:
                if method == "Download":
                    list(channel.stream_stream(path)(iter([]), timeout=10))
                else:
                    channel.stream_unary(path)(iter([]), timeout=10)
            err = from_rpc_error(caught.value)
            assert (err.code, err.reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), err
            assert err.message == "the request stream carried no message"
    with node.channel() as channel:  # and the node still serves
        raw_unary(channel, "GetNodeInfo")(b"", timeout=10)
