"""docs/API.md is the contract: it must name every reason the node can answer with, and every
field of NodeInfo, so that the document and the code cannot drift apart unnoticed."""

from __future__ import annotations

import pathlib
import re

from node import errors
from node.pb import oss_pb2

DOC = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "API.md").read_text()


def test_every_reason_is_in_the_errors_table_under_its_code():
    table = {}
    for code, reasons in re.findall(r"^\| `([A-Z_]+)` \| (.+) \|$", DOC, re.MULTILINE):
        table[code] = set(re.findall(r"`([A-Z0-9_]+)`", reasons))
    for reason, cls in errors.BY_REASON.items():
        assert reason in table.get(cls.code, set()), f"{cls.code} {reason} is not in docs/API.md"
    documented = {(code, r) for code, rs in table.items() for r in rs}
    known = {(cls.code, reason) for reason, cls in errors.BY_REASON.items()}
    assert documented <= known, f"documented but never raised: {sorted(documented - known)}"


def test_every_node_info_field_is_in_the_contract_with_its_number():
    for field in oss_pb2.NodeInfo.DESCRIPTOR.fields:
        assert re.search(rf"\b{field.name} = {field.number};", DOC), field.name
