"""node/http/rules.py and node/http/signing.py, directly: ranges, validators, conditions, the
header encoders and URL signatures, with Hypothesis where a property says more than examples."""

from __future__ import annotations

import base64
import hashlib
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import errors
from node.http import rules, signing

V = rules.Validators(etag='"gen-1"', last_modified_s=1_800_000_000)
LAST_MODIFIED = rules.http_date(V.last_modified_s * 1000)


# --- ranges ---------------------------------------------------------------------------------

@given(size=st.integers(1, 1 << 40), data=st.data())
def test_a_single_range_is_inside_the_object_and_means_what_it_says(size, data):
    first = data.draw(st.integers(0, size - 1))
    last = data.draw(st.integers(first, size + 100))
    assert rules.parse_range(f"bytes={first}-{last}", size) == (first, min(last + 1, size))
    assert rules.parse_range(f"bytes={first}-", size) == (first, size)
    suffix = data.draw(st.integers(1, size + 100))
    assert rules.parse_range(f"bytes=-{suffix}", size) == (max(0, size - suffix), size)


@given(size=st.integers(0, 1 << 20), start=st.integers(0, 1 << 21))
def test_a_range_starting_at_or_past_the_end_is_unsatisfiable(size, start):
    if start < size:
        return
    with pytest.raises(rules.Unsatisfiable):
        rules.parse_range(f"bytes={start}-", size)


@pytest.mark.parametrize("header", [None, "", "bytes=", "bytes=-", "bytes=a-b", "items=0-1",
                                    "bytes=0-1,2-3", "bytes=5-2", "bytes 0-1", "bytes=0-1-2"])
def test_what_is_not_one_valid_range_means_the_whole_object(header):
    assert rules.parse_range(header, 100) is None


def test_a_zero_suffix_is_unsatisfiable():
    with pytest.raises(rules.Unsatisfiable):
        rules.parse_range("bytes=-0", 100)


@given(st.text(max_size=40))
def test_parse_range_never_raises_anything_but_unsatisfiable(header):
    try:
        result = rules.parse_range(header, 1000)
    except rules.Unsatisfiable:
        return
    assert result is None or 0 <= result[0] < result[1] <= 1000


# --- conditions (RFC 9110 §13.2.2) -----------------------------------------------------------

@pytest.mark.parametrize("headers, method, verdict", [
    ({}, "GET", 0),
    ({"If-Match": '"gen-1"'}, "GET", 0),
    ({"If-Match": '"other", "gen-1"'}, "GET", 0),
    ({"If-Match": "*"}, "GET", 0),
    ({"If-Match": 'W/"gen-1"'}, "GET", 412),                 # If-Match compares strongly
    ({"If-Match": '"other"'}, "HEAD", 412),
    ({"If-Match": "garbage"}, "GET", 412),                   # malformed: matches nothing
    ({"If-None-Match": '"gen-1"'}, "GET", 304),
    ({"If-None-Match": 'W/"gen-1"'}, "HEAD", 304),           # If-None-Match compares weakly
    ({"If-None-Match": "*"}, "GET", 304),
    ({"If-None-Match": '"other"'}, "GET", 0),
    ({"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}, "GET", 412),
    ({"If-Unmodified-Since": LAST_MODIFIED}, "GET", 0),
    ({"If-Match": '"gen-1"', "If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}, "GET", 0),
    ({"If-Modified-Since": LAST_MODIFIED}, "GET", 304),
    ({"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}, "GET", 0),
    ({"If-None-Match": '"other"', "If-Modified-Since": LAST_MODIFIED}, "GET", 0),  # INM wins
    ({"If-Modified-Since": "not a date"}, "GET", 0),
])
def test_preconditions_in_rfc_9110_order(headers, method, verdict):
    assert rules.precondition(method, headers, V) == verdict


@pytest.mark.parametrize("header, holds", [
    (None, True), ('"gen-1"', True), ('W/"gen-1"', False), ('"other"', False),
    (LAST_MODIFIED, False), ("Thu, 01 Jan 1970 00:00:00 GMT", False), ("nonsense", False),
])
def test_if_range_compares_strongly(header, holds):
    assert rules.if_range_holds(header, V) is holds


# --- headers --------------------------------------------------------------------------------

@given(st.text(min_size=1, max_size=80))
def test_content_disposition_is_ascii_and_carries_the_exact_name(name):
    header = rules.content_disposition(name)
    assert header.isascii() and "\r" not in header and "\n" not in header
    encoded = header.split("filename*=UTF-8''", 1)[1]
    expected = "".join(c for c in name if c.isprintable()) or "download"
    assert urllib.parse.unquote(encoded) == expected
    # The quoted fallback for old clients holds no quote or backslash that could end it early.
    fallback = header.split('filename="', 1)[1].split('"; filename*=', 1)[0]
    assert '"' not in fallback and "\\" not in fallback and len(fallback) == len(expected)


def test_repr_digest_is_the_base64_of_the_sha256():
    digest = hashlib.sha256(b"abc").hexdigest()
    assert rules.repr_digest(digest) == ("sha-256=:" + base64.b64encode(
        hashlib.sha256(b"abc").digest()).decode() + ":")


def test_every_reason_has_an_http_status_below_600_and_500_only_for_internal():
    for reason, cls in errors.BY_REASON.items():
        status = rules.status_of(cls("x"))
        assert 400 <= status < 600, reason
        assert (status == 500) == (cls.code == "INTERNAL"), reason


# --- signatures -----------------------------------------------------------------------------

KEY = bytes(range(32))


@given(object_id=st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True),
       expires=st.integers(0, 1 << 40), generation=st.sampled_from(["", "abc123"]))
def test_a_signed_query_checks_and_any_change_does_not(object_id, expires, generation):
    fields = dict(urllib.parse.parse_qsl(signing.query(KEY, object_id, expires, generation)))
    assert signing.check(KEY, "GET", object_id, fields, expires) is None
    assert signing.check(KEY, "HEAD", object_id, fields, expires) is None
    assert signing.check(KEY, "GET", object_id, fields, expires + 1) == "the signed URL has expired"
    assert signing.check(KEY, "GET", object_id + "x", fields, 0) is not None
    assert signing.check(KEY, "DELETE", object_id, fields, 0) is not None
    assert signing.check(bytes(32), "GET", object_id, fields, 0) is not None
    changed = {**fields, "expires": str(expires + 1)}
    assert signing.check(KEY, "GET", object_id, changed, 0) is not None
    repinned = {**fields, "generation": "other"}
    assert signing.check(KEY, "GET", object_id, repinned, 0) is not None


def test_a_key_file_is_made_once_with_mode_0600(tmp_path):
    key = signing.load_or_create_key(str(tmp_path))
    path = tmp_path / signing.KEY_FILE
    assert (path.stat().st_mode & 0o777) == 0o600 and len(key) == 32
    assert signing.load_or_create_key(str(tmp_path)) == key
    short = tmp_path / "short.key"
    short.write_text("abcd\n")
    with pytest.raises(signing.KeyFileError):
        signing.load_or_create_key(str(tmp_path), str(short))
    with pytest.raises(signing.KeyFileError):
        signing.load_or_create_key(str(tmp_path), str(tmp_path / "missing.key"))
