"""Keys, tokens and who is calling: the admin key, enrollment tokens, device keys, the rate limit.

Every secret has the form ``arte_<kind>_<32 hex id>_<secret>`` where ``kind`` is ``ak`` (admin key),
``et`` (enrollment token) or ``dk`` (device key) and ``secret`` is 256 random bits (``secrets``,
base64url). The server stores only ``sha256(secret)``: the secret is uniformly random with 256 bits of
entropy, so a slow password hash (bcrypt/argon2) would add nothing against brute force, while a fast hash
keeps per-request authentication cheap. The public id part finds the row; the hashes are then compared
with :func:`hmac.compare_digest` so the comparison time does not depend on how many bytes match.

The rate limit is a token bucket per key id (per client address for requests without a well-formed
key), kept in the process: with several API processes each enforces its own share.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["new_secret", "hash_secret", "parse_secret", "verify", "RateLimiter", "KEY_KINDS"]

KEY_KINDS = {"ak": "admin key", "et": "enrollment token", "dk": "device key"}
_ID_PREFIX = {"ak": "adm", "et": "tok", "dk": "dev"}


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret(kind: str, row_id: str) -> tuple[str, str]:
    """A new secret for the row ``row_id`` (``<prefix>_<hex>``): returns (the full key, its stored hash)."""
    secret = secrets.token_urlsafe(32)
    hex_id = row_id.split("_", 1)[1]
    return f"arte_{kind}_{hex_id}_{secret}", hash_secret(secret)


def parse_secret(value: str, kind: str) -> tuple[str, str] | None:
    """``(row id, secret)`` from a key of ``kind``, or None when it is not shaped like one."""
    prefix = f"arte_{kind}_"
    if not value.startswith(prefix):
        return None
    rest = value[len(prefix) :]
    hex_id, sep, secret = rest[:32], rest[32:33], rest[33:]
    if (
        sep != "_"
        or not secret
        or len(secret) > 128
        or any(c not in "0123456789abcdef" for c in hex_id)
        or len(hex_id) != 32
    ):
        return None
    return f"{_ID_PREFIX[kind]}_{hex_id}", secret


def verify(secret: str, stored_hash: str) -> bool:
    """Constant-time check of ``secret`` against a stored sha256 hex digest."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())


def key_kind(value: str) -> str | None:
    """``ak``/``et``/``dk`` for a value shaped like one of our secrets, else None."""
    for kind in KEY_KINDS:
        if parse_secret(value, kind) is not None:
            return kind
    return None


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token bucket per key: ``rate`` tokens per second, at most ``burst``; ``rate == 0`` disables it.

    ``clock`` is injectable so tests never sleep. Thread-safe (uvicorn runs sync routes in threads).
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.rate, self.burst, self.clock, self.max_keys = rate, burst, clock, max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> float | None:
        """Take one token for ``key``: None if allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return None
        now = self.clock()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= self.max_keys:
                    self._buckets.clear()  # bounded memory; forgetting buckets only ever allows more
                b = self._buckets[key] = _Bucket(tokens=float(self.burst), at=now)
            b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
            b.at = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return None
            return (1.0 - b.tokens) / self.rate
