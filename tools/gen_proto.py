"""Regenerate the Python code for proto/oss/v1/oss.proto into node/pb/.

The generated modules are committed, so a user needs no protoc; tests/test_generated.py runs
this generator into a temporary directory and fails when the committed copy differs.

grpc_tools writes `from oss.v1 import oss_pb2`, which would need a top-level `oss` package;
we rewrite that one import to a relative one so the code lives inside `node.pb`.

Run: python -m tools.gen_proto
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_FILE = "oss/v1/oss.proto"
OUTPUT = ROOT / "node" / "pb"
GENERATED = ("oss_pb2.py", "oss_pb2.pyi", "oss_pb2_grpc.py")


def generate() -> dict[str, str]:
    """Run protoc and return {file name: text} of the generated modules."""
    from grpc_tools import protoc  # only needed by developers, not at run time
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                PROTO_FILE,
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status}")
        out = pathlib.Path(tmp) / "oss" / "v1"
        texts = {name: (out / name).read_text() for name in GENERATED}
    texts["oss_pb2_grpc.py"] = texts["oss_pb2_grpc.py"].replace(
        "from oss.v1 import oss_pb2 as", "from . import oss_pb2 as"
    )
    return texts


def main() -> int:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for name, text in generate().items():
        (OUTPUT / name).write_text(text)
        print(f"wrote {OUTPUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
