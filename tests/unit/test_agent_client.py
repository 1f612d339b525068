"""The agent's HTTP client: retries with backoff and jitter in one place, typed errors, protocol checks."""

from __future__ import annotations

import random

import httpx
import pytest

from arte.retry import RetryPolicy
from arte.wire import EnrollRequest
from edge_agent.client import ServerClient
from edge_agent.errors import AuthError, NetworkError, ServerError
from tests.support.fake_fleet import FakeFleet


def client_for(fleet: FakeFleet, key: str | None = None, attempts: int = 4) -> tuple[ServerClient, list[float]]:
    waits: list[float] = []
    c = ServerClient("http://fleet.test", key, transport=fleet.transport, wait=waits.append,
                     retry=RetryPolicy(attempts=attempts, base_delay=1.0, max_delay=5.0), rng=random.Random(0))
    return c, waits


def enrolled(fleet: FakeFleet, **kw) -> tuple[ServerClient, list[float]]:
    c, _ = client_for(fleet)
    resp, _ = c.enroll(EnrollRequest(token="tok-1", device_name="d", profile_id="laptop-cpu"))
    return client_for(fleet, resp.device_key, **kw)


def test_backoff_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(attempts=10, base_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    for retry in range(1, 9):
        ceiling = min(4.0, 0.5 * 2 ** (retry - 1))
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling  # jitter spans the whole window


def test_connection_errors_and_5xx_are_retried_then_succeed() -> None:
    fleet = FakeFleet()
    c, waits = enrolled(fleet)
    fleet.down, fleet.statuses = 2, [503]
    assert c.current_round() is None  # 404: no open round
    assert len(waits) == 3 and all(0 <= w <= 5.0 for w in waits)


def test_gives_up_with_network_error_after_all_attempts() -> None:
    fleet = FakeFleet()
    c, waits = enrolled(fleet, attempts=3)
    fleet.down = 10
    with pytest.raises(NetworkError) as exc:
        c.latest_dataset()
    assert exc.value.attempts == 3 and len(waits) == 2
    assert "http://fleet.test/api/v1/datasets/latest" in str(exc.value)


def test_retry_after_is_honoured_up_to_the_ceiling() -> None:
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"type": "rate_limited",
                                                                                    "message": "slow down"}})
        return httpx.Response(404, json={"error": {"type": "not_found", "message": "none"}})

    waits: list[float] = []
    c = ServerClient("http://x", "k", transport=httpx.MockTransport(handler), wait=waits.append,
                     retry=RetryPolicy(attempts=3, base_delay=0.1, max_delay=10))
    assert c.current_round() is None
    assert waits == [3.0]


def test_4xx_is_not_retried_and_carries_the_error_body() -> None:
    fleet = FakeFleet()
    c, waits = client_for(fleet)
    with pytest.raises(AuthError) as exc:
        c.enroll(EnrollRequest(token="wrong", device_name="d", profile_id="laptop-cpu"))
    assert exc.value.status == 401 and exc.value.type == "invalid_token" and exc.value.detail["field"] == "token"
    assert "field token" in str(exc.value) and waits == []
    c2, _ = client_for(fleet, "not-a-key")
    with pytest.raises(AuthError):
        c2.current_round()  # a 401 is never mistaken for "no round"


def test_a_body_off_the_protocol_names_the_field() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"dataset_id": "d", "sha256": 5})

    c = ServerClient("http://x", "k", transport=httpx.MockTransport(handler))
    with pytest.raises(ServerError) as exc:
        c.latest_dataset()
    assert exc.value.type == "bad_response" and exc.value.detail["field"].startswith("DatasetManifest.")


def test_non_json_error_body() -> None:
    c = ServerClient("http://x", "k", transport=httpx.MockTransport(lambda r: httpx.Response(400, text="nope")))
    with pytest.raises(ServerError, match="HTTP 400 http_error: nope"):
        c.device_info()


def test_on_contact_is_called_for_every_answer() -> None:
    fleet = FakeFleet()
    contacts = []
    c = ServerClient("http://fleet.test", None, transport=fleet.transport, on_contact=lambda: contacts.append(1),
                     wait=lambda s: None)
    fleet.statuses = [502]
    c.enroll(EnrollRequest(token="tok-1", device_name="d", profile_id="laptop-cpu"))
    assert len(contacts) == 2
