"""The committed node/pb code must be exactly what the generator makes from proto/ today."""

from tools import gen_proto


def test_generated_code_is_fresh():
    for name, text in gen_proto.generate().items():
        committed = (gen_proto.OUTPUT / name).read_text()
        assert committed == text, f"node/pb/{name} is stale: run `python -m tools.gen_proto`"


def test_proto_declares_the_contract_service():
    from node.pb import oss_pb2

    service = oss_pb2.DESCRIPTOR.services_by_name["ObjectStorage"]
    assert service.full_name == "oss.v1.ObjectStorage"
    assert [m.name for m in service.methods] == [
        "CreateUploadSession", "GetUploadSession", "AbortUploadSession", "Upload", "Download",
        "StatObject", "ListObjects", "DeleteObject", "ListUploadSessions", "GetNodeInfo",
        "SignDownloadUrl", "PutObject"]
    state = oss_pb2.UploadSession.State
    assert [(n, state.Value(n)) for n in ("STATE_UNSPECIFIED", "ACTIVE", "COMMITTED", "ABORTED")] == [
        ("STATE_UNSPECIFIED", 0), ("ACTIVE", 1), ("COMMITTED", 2), ("ABORTED", 3)]
