"""Download ranges, page sizes and page tokens: API.md's rules, and "valid or the typed error"."""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import InvalidArgument, InvalidPageToken, InvalidRange
from node.ranges import (
    decode_page_token,
    encode_page_token,
    new_page_token_secret,
    page_size,
    resolve_range,
)

SECRET = b"s" * 32
FAST = settings(max_examples=400, deadline=None)

# --- ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize("size, start, end, expected", [
    (100, 0, None, (0, 100)),
    (100, 10, 20, (10, 20)),
    (100, 10, None, (10, 100)),
    (100, -10, None, (90, 100)),       # the last 10 bytes
    (100, -10, 95, (90, 95)),
    (100, -1000, None, (0, 100)),      # back before byte 0 starts at 0
    (100, -100, None, (0, 100)),
    (100, 0, 1000, (0, 100)),          # end past the size is cut
    (100, 50, 50, (50, 50)),           # empty
    (100, 100, None, (100, 100)),      # start == size: empty
    (100, 100, 100, (100, 100)),
    (100, 100, 500, (100, 100)),
    (100, 0, 0, (0, 0)),
    (0, 0, None, (0, 0)),              # empty object
    (0, -5, None, (0, 0)),
    (0, 0, 10, (0, 0)),
])
def test_resolve_range(size, start, end, expected):
    assert resolve_range(size, start, end) == expected


@pytest.mark.parametrize("size, start, end", [
    (100, 101, None),                  # start past the size
    (100, 101, 200),                   # ... even after end is cut to the size
    (0, 1, None),
    (100, 0, -1),                      # negative end
    (100, -10, -5),
    (100, 50, 40),                     # end before start
    (100, -10, 80),                    # start resolves to 90 > 80
])
def test_resolve_range_invalid(size, start, end):
    with pytest.raises(InvalidRange) as info:
        resolve_range(size, start, end)
    assert (info.value.code, info.value.reason) == ("OUT_OF_RANGE", "INVALID_RANGE")
    assert info.value.metadata["size"] == str(size)


@given(size=st.integers(0, 2**40), start=st.integers(-(2**63), 2**63 - 1),
       end=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)))
@FAST
def test_resolve_range_resolves_or_raises_invalid_range(size, start, end):
    _check_range(size, start, end)


@given(size=st.integers(0, 50), start=st.integers(-60, 60),
       end=st.one_of(st.none(), st.integers(-60, 60)))
@FAST
def test_resolve_range_small_numbers(size, start, end):
    _check_range(size, start, end)


def _check_range(size, start, end):
    try:
        lo, hi = resolve_range(size, start, end)
    except InvalidRange:
        s = max(0, size + start) if start < 0 else start
        e = size if end is None else min(end, size)
        assert s > size or e < 0 or e < s
        return
    assert 0 <= lo <= hi <= size
    assert lo == (start if start >= 0 else max(0, size + start))
    assert hi == (size if end is None else min(end, size))


# --- page sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize("requested, expected", [
    (0, 100), (1, 1), (100, 100), (999, 999), (1000, 1000), (1001, 1000), (2**31 - 1, 1000),
])
def test_page_size(requested, expected):
    assert page_size(requested) == expected


def test_page_size_negative():
    with pytest.raises(InvalidArgument):
        page_size(-1)


@given(st.integers(-(2**31), 2**31 - 1))
@FAST
def test_page_size_parses_or_raises(requested):
    try:
        n = page_size(requested)
    except InvalidArgument:
        assert requested < 0
    else:
        assert 1 <= n <= 1000


# --- page tokens ---------------------------------------------------------------------------


def test_page_token_round_trip_and_is_url_safe():
    token = encode_page_token(SECRET, "objects", "photos/", ("photos-2024",))
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")
    assert decode_page_token(SECRET, "objects", "photos/", token) == ("photos-2024",)
    key = ("obj", "0123456789abcdef01234567")
    token = encode_page_token(SECRET, "sessions", "", key)
    assert decode_page_token(SECRET, "sessions", "", token) == key


def test_empty_token_means_the_first_page():
    assert decode_page_token(SECRET, "objects", "", "") == ()


def test_page_token_is_bound_to_listing_prefix_and_secret():
    token = encode_page_token(SECRET, "objects", "a", ("a1",))
    for secret, listing, prefix in [(b"other", "objects", "a"), (SECRET, "sessions", "a"),
                                    (SECRET, "objects", "b"), (SECRET, "objects", ""),
                                    (SECRET, "objects", "a\x00")]:
        with pytest.raises(InvalidPageToken) as info:
            decode_page_token(secret, listing, prefix, token)
        assert (info.value.code, info.value.reason) == ("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN")


def test_listing_and_prefix_cannot_be_shifted_into_each_other():
    token = encode_page_token(SECRET, "ab", "c", ("k",))
    with pytest.raises(InvalidPageToken):
        decode_page_token(SECRET, "a", "bc", token)


@pytest.mark.parametrize("token", [
    "x", "abc", "====", "not a token", "a/b", "a+b", "A" * 5000, "\u00e9\u00e9",
    base64.urlsafe_b64encode(b"\x01" + b"\x00" * 40).decode().rstrip("="),
    base64.urlsafe_b64encode(b"\x02" + b"\x00" * 40).decode().rstrip("="),
    None, 5, b"abc", ["a"],
])
def test_garbage_tokens(token):
    with pytest.raises(InvalidPageToken):
        decode_page_token(SECRET, "objects", "", token)


def test_padding_and_other_spellings_are_refused():
    token = encode_page_token(SECRET, "objects", "", ("k",))
    for spelled in (token + "=", token + "==", " " + token, token + "\n", token.upper()):
        with pytest.raises(InvalidPageToken):
            decode_page_token(SECRET, "objects", "", spelled)


def test_new_secret():
    a, b = new_page_token_secret(), new_page_token_secret()
    assert isinstance(a, bytes) and len(a) == 32 and a != b


keys = st.lists(st.text(max_size=30), max_size=3).map(tuple)
listings = st.sampled_from(["objects", "sessions"])


@given(st.binary(max_size=40), listings, st.text(max_size=40), keys)
@FAST
def test_token_round_trips(secret, listing, prefix, key):
    token = encode_page_token(secret, listing, prefix, key)
    assert token and set(token) <= set(string.ascii_letters + string.digits + "-_")
    assert decode_page_token(secret, listing, prefix, token) == key
    other = "sessions" if listing == "objects" else "objects"
    with pytest.raises(InvalidPageToken):
        decode_page_token(secret, other, prefix, token)
    with pytest.raises(InvalidPageToken):
        decode_page_token(secret, listing, prefix + "x", token)


@given(st.one_of(st.text(max_size=200), st.text(alphabet=string.ascii_letters + "-_=", max_size=200),
                 st.binary(max_size=50), st.none(), st.integers()), listings, st.text(max_size=10))
@FAST
def test_any_token_decodes_or_raises_invalid_page_token(token, listing, prefix):
    try:
        key = decode_page_token(SECRET, listing, prefix, token)
    except InvalidPageToken:
        return
    assert token == "" and key == ()  # nothing random is ever a token of ours


@given(keys, st.data())
@FAST
def test_altered_tokens_are_refused(key, data):
    token = encode_page_token(SECRET, "objects", "p", key)
    how = data.draw(st.sampled_from(["replace", "cut", "insert", "append"]))
    at = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_=+/."))
    if how == "replace":
        altered = token[:at] + char + token[at + 1:]
    elif how == "cut":
        altered = token[:at]
    elif how == "insert":
        altered = token[:at] + char + token[at:]
    else:
        altered = token + char
    if altered in (token, ""):  # unchanged, or no token at all (the first page)
        return
    with pytest.raises(InvalidPageToken):
        decode_page_token(SECRET, "objects", "p", altered)


def test_only_the_canonical_spelling_is_accepted():
    """Base64 decoders ignore the unused low bits of the last character: those must not count."""
    checked = 0
    for n in range(6):
        token = encode_page_token(SECRET, "objects", "", ("k" * n,))
        if len(token) % 4 == 0:
            continue  # no unused bits in this length
        checked += 1
        for char in string.ascii_letters + string.digits + "-_":
            altered = token[:-1] + char
            if altered != token:
                with pytest.raises(InvalidPageToken):
                    decode_page_token(SECRET, "objects", "", altered)
    assert checked
