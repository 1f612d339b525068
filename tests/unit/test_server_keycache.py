"""The device key cache (:mod:`server.keycache`): an entry is given back only while it is fresh, for the
device's own secret, and while no contact is due; revocation forgets it; ``ttl_s == 0`` keeps nothing;
the number of entries is bounded."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from server import security
from server.keycache import LAST_SEEN_GRANULARITY, DeviceKeyCache, KnownDevice

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _device(cache: DeviceKeyCache, device_id: str = "dev_1", seen: datetime | None = T0) -> str:
    secret = f"secret-of-{device_id}"
    cache.remember(KnownDevice(device_id, "coh_1", security.hash_secret(secret), seen, T0))
    return secret


def test_a_fresh_entry_is_given_for_its_own_secret_only() -> None:
    cache = DeviceKeyCache(ttl_s=5)
    secret = _device(cache)
    known = cache.lookup("dev_1", secret, T0 + timedelta(seconds=4.9))
    assert known is not None and known.cohort_id == "coh_1"
    assert cache.lookup("dev_1", secret + "x", T0) is None
    assert cache.lookup("dev_2", secret, T0) is None


def test_an_entry_expires_after_the_ttl_and_never_counts_from_the_future() -> None:
    cache = DeviceKeyCache(ttl_s=5)
    secret = _device(cache)
    assert cache.lookup("dev_1", secret, T0 + timedelta(seconds=5)) is None
    assert cache.lookup("dev_1", secret, T0 - timedelta(seconds=1)) is None  # a clock that went back


def test_no_entry_while_a_contact_is_due() -> None:
    cache = DeviceKeyCache(ttl_s=300)
    secret = _device(cache, seen=T0 - LAST_SEEN_GRANULARITY)
    assert cache.lookup("dev_1", secret, T0) is None
    assert cache.lookup("dev_1", _device(cache, "dev_2", seen=None), T0) is None


def test_forget_and_ttl_zero() -> None:
    cache = DeviceKeyCache(ttl_s=5)
    secret = _device(cache)
    cache.forget("dev_1")
    assert cache.lookup("dev_1", secret, T0) is None
    off = DeviceKeyCache(ttl_s=0)
    assert off.lookup("dev_1", _device(off), T0) is None


def test_bounded_oldest_first() -> None:
    cache = DeviceKeyCache(ttl_s=5, max_devices=2)
    secrets = [_device(cache, f"dev_{i}") for i in range(3)]
    assert cache.lookup("dev_0", secrets[0], T0) is None
    assert all(cache.lookup(f"dev_{i}", secrets[i], T0) is not None for i in (1, 2))
