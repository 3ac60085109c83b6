"""Generated protobuf and gRPC code for oss.v1 (run `python -m tools.gen_proto` to refresh)."""

from . import oss_pb2, oss_pb2_grpc

__all__ = ["oss_pb2", "oss_pb2_grpc"]
