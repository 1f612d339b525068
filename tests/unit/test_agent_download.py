"""Dataset downloads: Range resume into a .part file, sha256 and signature checks; corrupt files never used."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
from pathlib import Path

import pytest

from arte.retry import RetryPolicy
from arte.wire import EnrollRequest
from edge_agent.client import ServerClient
from edge_agent.download import download_dataset
from edge_agent.errors import IntegrityError
from tests.support.fake_fleet import FakeFleet, Killed

CONTENT = b"".join(b'{"input": "question %d", "target": "answer %d"}\n' % (i, i) for i in range(40))


def setup(fleet: FakeFleet) -> ServerClient:
    """A client of an enrolled device (a new one each call, as after a restart)."""
    if not fleet.devices:
        c = ServerClient("http://fleet.test", None, transport=fleet.transport, wait=lambda s: None)
        c.enroll(EnrollRequest(token="tok-1", device_name="d", profile_id="laptop-cpu"))
    return ServerClient("http://fleet.test", next(iter(fleet.devices)), transport=fleet.transport, wait=lambda s: None,
                        retry=RetryPolicy(attempts=4), rng=random.Random(0))


def test_plain_download(tmp_path: Path) -> None:
    fleet = FakeFleet()
    m = fleet.publish(CONTENT)
    path = download_dataset(setup(fleet), m, tmp_path)
    assert path.read_bytes() == CONTENT and path.name == f"{m.sha256}.jsonl"
    assert not list(tmp_path.glob("*.part"))
    # already there and verified: no second request
    n = len(fleet.requests("GET", "content"))
    assert download_dataset(setup(fleet), m, tmp_path) == path and len(fleet.requests("GET", "content")) == n


def test_dropped_connection_resumes_with_range(tmp_path: Path) -> None:
    fleet = FakeFleet()
    m = fleet.publish(CONTENT)
    fleet.cut_after = 500
    path = download_dataset(setup(fleet), m, tmp_path)
    assert path.read_bytes() == CONTENT
    gets = fleet.requests("GET", "content")
    assert [g.headers.get("Range") for g in gets] == [None, "bytes=500-"]


def test_killed_agent_resumes_after_restart(tmp_path: Path) -> None:
    fleet = FakeFleet()
    m = fleet.publish(CONTENT)
    fleet.kill_after = 1234
    with pytest.raises(Killed):
        download_dataset(setup(fleet), m, tmp_path)
    part = tmp_path / f"{m.sha256}.jsonl.part"
    assert part.stat().st_size == 1234 and not (tmp_path / f"{m.sha256}.jsonl").exists()
    path = download_dataset(setup(fleet), m, tmp_path)  # a new process, a new client
    assert path.read_bytes() == CONTENT and not part.exists()
    assert fleet.requests("GET", "content")[-1].headers["Range"] == "bytes=1234-"


def test_server_ignoring_range_restarts_the_file(tmp_path: Path) -> None:
    fleet = FakeFleet(ignore_range=True)
    m = fleet.publish(CONTENT)
    fleet.cut_after = 300
    assert download_dataset(setup(fleet), m, tmp_path).read_bytes() == CONTENT


def test_a_corrupted_byte_is_detected_deleted_and_refetched(tmp_path: Path) -> None:
    fleet = FakeFleet()
    m = fleet.publish(CONTENT)
    fleet.corrupt_downloads = 1
    path = download_dataset(setup(fleet), m, tmp_path)
    assert path.read_bytes() == CONTENT
    assert [g.headers.get("Range") for g in fleet.requests("GET", "content")] == [None, None]


def test_persistent_corruption_is_an_error_and_nothing_is_kept(tmp_path: Path) -> None:
    fleet = FakeFleet()
    m = fleet.publish(CONTENT)
    fleet.corrupt_downloads = 5
    with pytest.raises(IntegrityError, match="failed verification 2 times"):
        download_dataset(setup(fleet), m, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_final_file_corrupted_on_disk_is_replaced(tmp_path: Path) -> None:
    fleet = FakeFleet()
    m = fleet.publish(CONTENT)
    path = download_dataset(setup(fleet), m, tmp_path)
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    assert download_dataset(setup(fleet), m, tmp_path).read_bytes() == CONTENT


def test_signed_manifests(tmp_path: Path) -> None:
    key = bytes(range(32))
    fleet = FakeFleet(signing_key=key)
    m = fleet.publish(CONTENT, sign=True)
    mac = hmac.new(key, hashlib.sha256(CONTENT).hexdigest().encode(), hashlib.sha256).hexdigest()
    assert m.signature == f"hmac-sha256:{mac}"
    assert download_dataset(setup(fleet), m, tmp_path / "ok", key_hex=key.hex()).read_bytes() == CONTENT
    with pytest.raises(IntegrityError, match="bad signature"):
        download_dataset(setup(fleet), m, tmp_path / "bad", key_hex=(b"x" * 32).hex())
    assert list((tmp_path / "bad").iterdir()) == []
    with pytest.raises(IntegrityError, match="no dataset signing key"):
        download_dataset(setup(fleet), m, tmp_path / "none")
    forged = dataclasses.replace(m, signature="ed25519:abcd")
    with pytest.raises(IntegrityError, match="unknown signature scheme"):
        download_dataset(setup(fleet), forged, tmp_path / "scheme", key_hex=key.hex())
