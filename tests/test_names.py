"""Names: validation rules of API.md "Names" and the 255-byte disk names (unit + Hypothesis)."""

from __future__ import annotations

import os
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.errors import InvalidArgument, InvalidName
from node.names import (
    MAX_NAME_BYTES,
    is_upload_id,
    new_upload_id,
    object_file_name,
    part_file_name,
    utf8_prefix,
    validate_content_type,
    validate_file_name,
    validate_metadata,
    validate_object_id,
)

UID = "0123456789abcdef01234567"
OBJECT_ID_ALPHABET = string.ascii_letters + string.digits + "._-"
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- object_id -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "a", "A", "0", "-", "_", "a.b", "a..b", "x.", "-leading-dash", "a_b-c.d",
    "z" * 128, OBJECT_ID_ALPHABET[:-3] + "_-" + ".",
])
def test_object_id_valid(value):
    assert validate_object_id(value) == value


@pytest.mark.parametrize("value, words", [
    ("", "empty"),
    (".", "'.'"),
    ("..", "'..'"),
    (".hidden", "start with '.'"),
    ("a" * 129, "129 characters"),
    ("a/b", "'/'"),
    ("a b", "' '"),
    ("caf\u00e9", "'\u00e9'"),
    ("a\x00", "'\\x00'"),
    ("a\n", "'\\n'"),           # `$` in a regex would let this through
    ("\uff21", "'\uff21'"),       # a full-width A: \w would let this through
    ("a\\b", "'\\\\'"),
    ("\udc80", "position 0"),
])
def test_object_id_invalid(value, words):
    with pytest.raises(InvalidName) as info:
        validate_object_id(value)
    assert words in info.value.message
    assert info.value.reason == "INVALID_NAME"


@pytest.mark.parametrize("value", [None, 1, b"abc", ["a"]])
def test_object_id_not_a_string(value):
    with pytest.raises(InvalidName):
        validate_object_id(value)


# --- file_name -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "a", "report.pdf", ".bashrc", "...", "a..", "h\u00e9llo w\u00f6rld.txt", "a\\b", "tab\there",
    "x" * 255, "\u20ac" * 85, "\U0001f600" * 63 + "abc",
])
def test_file_name_valid(value):
    assert validate_file_name(value) == value


@pytest.mark.parametrize("value, words", [
    ("", "empty"),
    (".", "'.'"),
    ("..", "'..'"),
    ("a/b", "'/'"),
    ("/", "'/'"),
    ("a\x00b", "NUL"),
    ("x" * 256, "256 bytes"),
    ("\u20ac" * 86, "258 bytes"),
    ("bad\udc80", "UTF-8"),
])
def test_file_name_invalid(value, words):
    with pytest.raises(InvalidName) as info:
        validate_file_name(value)
    assert words in info.value.message


@pytest.mark.parametrize("value", [None, 3, b"a.txt"])
def test_file_name_not_a_string(value):
    with pytest.raises(InvalidName):
        validate_file_name(value)


# --- content_type and metadata -------------------------------------------------------------


def test_content_type():
    assert validate_content_type("") == ""
    assert validate_content_type("text/plain; charset=utf-8") == "text/plain; charset=utf-8"
    assert validate_content_type("\u00e9" * 255) == "\u00e9" * 255  # characters, not bytes
    with pytest.raises(InvalidArgument, match="256 characters"):
        validate_content_type("x" * 256)
    with pytest.raises(InvalidArgument):
        validate_content_type(None)


def test_metadata_limits_count_utf8_bytes_of_keys_and_values():
    assert validate_metadata({}) == {}
    exact = {"k": "v" * 8191}
    assert validate_metadata(exact) == exact
    with pytest.raises(InvalidArgument, match="8193 bytes"):
        validate_metadata({"k": "v" * 8192})
    # 2-byte characters: 4096 of them are 8192 bytes, over the limit together with the key.
    with pytest.raises(InvalidArgument):
        validate_metadata({"k": "\u00e9" * 4096})
    many = {f"k{i:03d}": "v" * 60 for i in range(100)}  # 100 * (4 + 60) = 6400 bytes
    assert validate_metadata(many) == many


def test_metadata_returns_a_plain_copy():
    source = {"a": "1"}
    out = validate_metadata(source)
    assert out == source and out is not source and type(out) is dict


@pytest.mark.parametrize("value", [None, 1, "ab", {"a": 1}, {1: "a"}, {"a": "\udc80"}])
def test_metadata_wrong_shapes(value):
    with pytest.raises(InvalidArgument):
        validate_metadata(value)


# --- upload ids ----------------------------------------------------------------------------


def test_new_upload_id_format_and_uniqueness():
    ids = {new_upload_id() for _ in range(2000)}
    assert len(ids) == 2000
    for uid in ids:
        assert re.fullmatch(r"[0-9a-f]{24}", uid)
        assert is_upload_id(uid)
        assert not uid.startswith("-")


@pytest.mark.parametrize("value", [
    "", "0123456789abcdef0123456", "0123456789abcdef012345678", "0123456789ABCDEF01234567",
    "0123456789abcdef0123456g", UID + "\n", " " + UID[1:], "../../etc/passwd", None, 12, b"x" * 24,
    "\uff10" * 24,
])
def test_is_upload_id_rejects(value):
    assert not is_upload_id(value)


# --- disk names ----------------------------------------------------------------------------


def test_disk_names_as_in_the_seed():
    assert part_file_name("obj", "report.pdf", UID) == f"obj_report.pdf.part.{UID}"
    assert object_file_name("obj", "report.pdf", UID) == f"obj_report_{UID}.pdf"
    assert object_file_name("obj", "archive.tar.gz", UID) == f"obj_archive.tar_{UID}.gz"
    assert object_file_name("obj", ".bashrc", UID) == f"obj_.bashrc_{UID}"
    assert object_file_name("obj", "noext", UID) == f"obj_noext_{UID}"
    assert object_file_name("obj", "trailing.", UID) == f"obj_trailing_{UID}."


def test_longest_names_fit_exactly():
    oid = "o" * 128
    part = part_file_name(oid, "f" * 255, UID)
    obj = object_file_name(oid, "f" * 255, UID)
    assert len(part.encode()) == MAX_NAME_BYTES == len(obj.encode())
    assert part == f"{oid}_{'f' * 96}.part.{UID}"
    assert obj == f"{oid}_{'f' * 101}_{UID}"


def test_stem_is_shortened_before_the_extension():
    oid = "o" * 128
    name = "s" * 200 + ".txt"
    obj = object_file_name(oid, name, UID)
    assert obj == f"{oid}_{'s' * 97}_{UID}.txt"
    part = part_file_name(oid, name, UID)
    assert part == f"{oid}_{'s' * 92}.txt.part.{UID}"


def test_extension_is_cut_only_when_it_alone_does_not_fit():
    oid = "o" * 128
    name = "s." + "e" * 200
    obj = object_file_name(oid, name, UID)
    assert obj == f"{oid}__{UID}.{'e' * 100}"
    assert len(obj.encode()) == MAX_NAME_BYTES


def test_cuts_fall_on_character_boundaries():
    oid = "o" * 128
    euro, smiley = "\u20ac", "\U0001f600"
    obj = object_file_name(oid, euro * 85, UID)  # 255 bytes; budget 101 -> 33 characters (99 bytes)
    assert obj == f"{oid}_{euro * 33}_{UID}"
    part = part_file_name(oid, smiley * 63, UID)  # 4 bytes each; budget 96 -> 24 characters
    assert part == f"{oid}_{smiley * 24}.part.{UID}"


def test_disk_names_refuse_bad_inputs():
    with pytest.raises(InvalidName):
        part_file_name("..", "a", UID)
    with pytest.raises(InvalidName):
        object_file_name("ok", "a/b", UID)
    for uid in ("", "a/b", "a.b", "x" * 65, "\x00", None):
        with pytest.raises(InvalidName):
            part_file_name("ok", "a", uid)


@pytest.mark.parametrize("text, limit, expected", [
    ("abc", 3, "abc"), ("abc", 2, "ab"), ("abc", 0, ""), ("abc", -1, ""),
    ("a\u00e9", 2, "a"), ("a\u00e9", 3, "a\u00e9"), ("\U0001f600x", 3, ""), ("\U0001f600x", 4, "\U0001f600"),
])
def test_utf8_prefix(text, limit, expected):
    assert utf8_prefix(text, limit) == expected


# --- properties ----------------------------------------------------------------------------

anything = st.one_of(st.text(), st.text(alphabet=OBJECT_ID_ALPHABET, max_size=140),
                     st.binary(max_size=10), st.integers(), st.none(), st.lists(st.text(), max_size=2))


@FAST
@given(anything)
def test_object_id_parses_or_raises_invalid_name(value):
    try:
        out = validate_object_id(value)
    except InvalidName:
        ok = (isinstance(value, str) and 1 <= len(value) <= 128
              and all(c in OBJECT_ID_ALPHABET for c in value) and not value.startswith("."))
        assert not ok
    else:
        assert out == value and 1 <= len(out) <= 128
        assert set(out) <= set(OBJECT_ID_ALPHABET) and out[0] != "."


@FAST
@given(st.one_of(st.text(max_size=300), st.text(alphabet="./\x00ab\u20ac", max_size=5),
                 st.characters(codec=None).map(lambda c: c * 90), st.binary(max_size=5), st.none()))
def test_file_name_parses_or_raises_invalid_name(value):
    try:
        out = validate_file_name(value)
    except InvalidName:
        pass
    else:
        raw = out.encode("utf-8")
        assert out == value and 1 <= len(raw) <= 255
        assert "/" not in out and "\x00" not in out and out not in (".", "..")


@FAST
@given(st.one_of(st.text(max_size=300), st.none(), st.integers()))
def test_content_type_parses_or_raises(value):
    try:
        assert validate_content_type(value) == value
    except InvalidArgument:
        assert not isinstance(value, str) or len(value) > 255


@FAST
@given(st.dictionaries(st.text(max_size=50), st.text(max_size=3000), max_size=8))
def test_metadata_parses_or_raises(value):
    total = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
    try:
        assert validate_metadata(value) == value
        assert total <= 8192
    except InvalidArgument:
        assert total > 8192


@FAST
@given(st.one_of(st.text(max_size=30), st.from_regex(r"[0-9a-fA-F]{23,25}", fullmatch=True)))
def test_is_upload_id_is_exact(value):
    assert is_upload_id(value) == (len(value) == 24 and set(value) <= set("0123456789abcdef"))


def _is_valid_file_name(value: str) -> bool:
    try:
        validate_file_name(value)
    except InvalidName:
        return False
    return True


object_ids = st.one_of(
    st.text(alphabet=OBJECT_ID_ALPHABET, min_size=1, max_size=128),
    st.integers(100, 128).map(lambda n: "o" * n),
).filter(lambda s: not s.startswith("."))
_chars = st.sampled_from(["a", "\u00e9", "\u20ac", "\U0001f600"])
file_names = st.one_of(
    st.text(min_size=1, max_size=255),
    st.tuples(st.text(max_size=200), st.text(max_size=120)).map(lambda t: f"{t[0]}.{t[1]}"),
    st.tuples(st.sampled_from(["a", "\u00e9", "\u20ac", "\U0001f600"]), st.integers(1, 255),
              st.sampled_from(["", ".txt", ".\u20ac\u20ac", ".tar.gz"])).map(
                  lambda t: t[0] * t[1] + t[2]),
    # long extensions, so that the extension itself has to be cut
    st.tuples(_chars, st.integers(0, 40), _chars, st.integers(1, 250)).map(
        lambda t: t[0] * t[1] + "." + t[2] * t[3]),
).map(lambda s: utf8_prefix(s, 255)).filter(_is_valid_file_name)
upload_ids = st.one_of(st.from_regex(r"[0-9a-f]{24}", fullmatch=True),
                       st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much,
                                                                   HealthCheck.too_slow])
@given(object_ids, file_names, upload_ids)
def test_disk_names_fit_and_keep_ids_and_as_much_stem_as_fits(object_id, file_name, upload_id):
    stem, ext = os.path.splitext(file_name)
    for make, tail in ((part_file_name, f".part.{upload_id}"), (object_file_name, "")):
        name = make(object_id, file_name, upload_id)
        raw = name.encode("utf-8")  # raises if it is not valid UTF-8
        assert len(raw) <= MAX_NAME_BYTES
        assert "/" not in name and "\x00" not in name and name not in (".", "..")
        head = f"{object_id}_"
        assert name.startswith(head) and name.endswith(tail)
        middle = name[len(head):len(name) - len(tail)]
        if make is object_file_name:
            # middle = stem' _upload_id ext': either ext' is the whole extension, or stem' is "".
            marked = f"_{upload_id}{ext}"
            if middle.endswith(marked) and stem.startswith(middle[:len(middle) - len(marked)]):
                cut_stem, cut_ext = middle[:len(middle) - len(marked)], ext
            else:
                assert middle.startswith(f"_{upload_id}")
                cut_stem, cut_ext = "", middle[len(upload_id) + 1:]
        else:
            # middle = stem' ext'
            if middle.endswith(ext) and stem.startswith(middle[:len(middle) - len(ext)]):
                cut_stem, cut_ext = middle[:len(middle) - len(ext)], ext
            else:
                cut_stem, cut_ext = "", middle
        assert stem.startswith(cut_stem) and ext.startswith(cut_ext)
        if (cut_stem, cut_ext) == (stem, ext):
            continue
        # Shortened: it is full (the next character would not fit), and the stem went first.
        spare = MAX_NAME_BYTES - len(raw)
        if cut_ext != ext:
            assert cut_stem == ""
            assert len(ext[len(cut_ext)].encode()) > spare
        else:
            assert len(stem[len(cut_stem)].encode()) > spare
