"""Keys and the rate limiter; error-location paths; Range parsing."""

from __future__ import annotations

import pytest

from server import security
from server.app import field_path
from server.errors import RangeNotSatisfiable
from server.routes.datasets import parse_range
from server.tables import new_id


def test_new_key_round_trips_and_only_its_hash_is_kept() -> None:
    row_id = new_id("dev")
    key, stored = security.new_secret("dk", row_id)
    parsed = security.parse_secret(key, "dk")
    assert parsed is not None and parsed[0] == row_id
    assert security.verify(parsed[1], stored) and stored not in key and len(stored) == 64
    assert not security.verify(parsed[1] + "x", stored)
    assert len(parsed[1]) >= 43  # 256 random bits, base64url
    assert security.parse_secret(key, "ak") is None  # a device key is not an admin key
    assert security.key_kind(key) == "dk"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "arte_dk_",
        "arte_dk_" + "0" * 32,
        "arte_dk_" + "0" * 32 + "_",
        "arte_dk_" + "G" * 32 + "_s",
        "arte_dk_" + "0" * 31 + "_secret",
        "Bearer arte_dk_" + "0" * 32 + "_s",
        "arte_dk_" + "0" * 32 + "_" + "s" * 129,
    ],
)
def test_malformed_keys_are_not_parsed(bad: str) -> None:
    assert security.parse_secret(bad, "dk") is None


def test_rate_limiter_token_bucket_with_an_injected_clock() -> None:
    now = [0.0]
    rl = security.RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [rl.check("k") for _ in range(3)] == [None, None, None]
    assert rl.check("k") == pytest.approx(0.5)
    assert rl.check("other") is None  # per key
    now[0] += 0.5
    assert rl.check("k") is None and rl.check("k") is not None
    assert security.RateLimiter(rate=0, burst=1).check("k") is None  # disabled


def test_field_paths() -> None:
    assert field_path(("body", "scores", 2, "n_correct")) == "scores[2].n_correct"
    assert field_path(("path", "round_id")) == "round_id"
    assert field_path(("body",)) == "body"


@pytest.mark.parametrize(
    "header,expected",
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=9-3", None),
        ("items=0-1", None),
        ("bytes=0-1,4-5", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header, expected) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=500-600", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)
