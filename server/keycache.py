"""Verified device keys, remembered for a short while so that a device's reads on the fast path
(:mod:`server.device_fast_path`: a round's drafts, the dataset manifest) need no database read to authenticate.

Contract. An entry is what a committed transaction read about a device it authenticated (a request of
the device through :func:`server.deps.unit_of_work`, or a report batch, :mod:`server.groupcommit`): its key
hash, cohort and last contact, and when (``checked_at``, on the app's clock). :meth:`DeviceKeyCache.lookup`
returns it only while it is younger than ``ttl_s``, the presented secret hashes to its key hash
(:func:`server.security.verify`, constant time), and the device's last contact is recent enough that
the request would not record a new one (``LAST_SEEN_GRANULARITY``); otherwise None, and the request
goes to the routes, which authenticate against the database (and record the contact).

A device's cohort and key never change, so only revocation can make an entry wrong. The process that
revokes a device forgets it at once (``POST /devices/{id}/revoke``); other API processes (``--workers
N``, other hosts, ``arte-server devices revoke``) may still answer the device's *reads* for at most
``ttl_s`` after the revocation. Writes never use the cache: a report is authenticated in the
transaction that stores it. ``ttl_s == 0`` turns the cache off. Bounded at ``max_devices`` entries
(the oldest go first); a dict under the GIL, entries replaced whole, so threads may share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from server import security

__all__ = ["LAST_SEEN_GRANULARITY", "DeviceKeyCache", "KnownDevice"]

# A device's ``last_seen_at`` is written at most once per this interval (server.deps._authenticate).
LAST_SEEN_GRANULARITY = timedelta(seconds=60)


@dataclass(frozen=True)
class KnownDevice:
    """A device as a committed transaction read it at ``checked_at``."""

    device_id: str
    cohort_id: str
    key_hash: str
    last_seen_at: datetime | None
    checked_at: datetime


class DeviceKeyCache:
    """Device id -> :class:`KnownDevice`, trusted for ``ttl_s`` seconds of the app's clock."""

    def __init__(self, ttl_s: float, max_devices: int = 100_000) -> None:
        self.ttl = timedelta(seconds=ttl_s)
        self.max_devices = max_devices
        self._entries: dict[str, KnownDevice] = {}

    def lookup(self, device_id: str, secret: str, now: datetime) -> KnownDevice | None:
        """The device if its entry is fresh, the secret is its key and no contact is due; else None."""
        known = self._entries.get(device_id)
        if known is None or not (known.checked_at <= now < known.checked_at + self.ttl):
            return None
        if known.last_seen_at is None or now - known.last_seen_at >= LAST_SEEN_GRANULARITY:
            return None
        return known if security.verify(secret, known.key_hash) else None

    def remember(self, known: KnownDevice) -> None:
        """A device that a transaction which has committed read as not revoked."""
        if self.ttl <= timedelta(0):
            return
        if len(self._entries) >= self.max_devices and known.device_id not in self._entries:
            self._entries.pop(next(iter(self._entries)), None)
        self._entries[known.device_id] = known

    def forget(self, device_id: str) -> None:
        self._entries.pop(device_id, None)
