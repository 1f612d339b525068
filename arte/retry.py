"""Retry with exponential backoff and full jitter: the one retry helper of the project.

Contract: :class:`RetryPolicy` says how often and how long to wait: before retry ``n`` (1-based) wait
``uniform(0, min(max_delay, base_delay * 2**(n-1)))`` seconds, at most ``attempts`` tries in all; a
server's ``Retry-After`` is a lower bound (capped at ``max_delay``). :func:`retry_call` runs an attempt
until it succeeds, retrying only the exceptions it is told to (``retry_on``), and after the last attempt
calls ``give_up(error, attempts)`` for the exception to raise (:func:`problem` says what went wrong). ``wait`` and ``rng`` are injectable,
so tests never sleep. Users: the agent's server client (:mod:`edge_agent.client`), the endpoint teacher
(:mod:`arte.backends.openai`) and the server's job queue (a failed job's ``not_before``).

:class:`Retryable` is a failure worth retrying that is not an exception of the transport (a retryable
HTTP status, a resume the server refused); :func:`retry_after_seconds` reads a ``Retry-After`` header
(seconds; an HTTP date falls back to the policy's own backoff).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

__all__ = ["RETRY_STATUS", "RetryPolicy", "Retryable", "problem", "retry_after_seconds", "retry_call"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# HTTP statuses worth another try: timeouts, too early, rate limits, the server's own failures.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; ``attempts`` tries in all (so ``attempts - 1`` retries)."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts: must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError(f"base_delay, max_delay: need 0 <= base_delay <= max_delay, "
                             f"got {self.base_delay} and {self.max_delay}")

    def delay(self, retry: int, rng: random.Random | None = None, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``retry`` (1-based); ``retry_after`` is a lower bound."""
        d = (rng or random).uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (retry - 1)))
        return max(d, min(retry_after, self.max_delay)) if retry_after is not None else d


class Retryable(Exception):
    """A failure worth retrying: ``problem`` says what it was; ``retry_after`` is the server's hint."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        self.problem = problem
        self.retry_after = retry_after
        super().__init__(problem)


def problem(err: BaseException) -> str:
    """What a failed attempt's exception says went wrong."""
    return err.problem if isinstance(err, Retryable) else f"{type(err).__name__}: {err}"


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds, or None (absent, or an HTTP date)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def retry_call(attempt: Callable[[], T], policy: RetryPolicy, *, what: str,
               retry_on: tuple[type[BaseException], ...], give_up: Callable[[BaseException, int], BaseException],
               wait: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> T:
    """``attempt()`` until it returns; an exception in ``retry_on`` (or :class:`Retryable`) is retried after
    the policy's delay, and after the last attempt ``give_up(error, attempts)`` is raised. ``what`` names
    the operation in the log."""
    for n in range(1, policy.attempts + 1):
        try:
            return attempt()
        except (Retryable, *retry_on) as e:
            if n == policy.attempts:
                raise give_up(e, n) from e
            delay = policy.delay(n, rng, e.retry_after if isinstance(e, Retryable) else None)
            log.warning("%s: %s; retry %d/%d in %.2f s", what, problem(e), n, policy.attempts - 1, delay)
            wait(delay)
    raise AssertionError("unreachable")  # pragma: no cover
