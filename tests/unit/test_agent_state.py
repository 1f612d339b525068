"""The agent's SQLite state: settings, device key, outbox, ledgers, journal; failures lose nothing."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from edge_agent.errors import NotEnrolledError, StateError
from edge_agent.state import SCHEMA_VERSION, State


def test_settings_key_and_schema(tmp_path: Path) -> None:
    with State(tmp_path / "s") as st:
        st.set(server_url="http://x", device_id="d1")
        st.set(device_id=None)
        assert st.settings() == {"server_url": "http://x"}
        with pytest.raises(NotEnrolledError, match="enroll"):
            st.require("device_id")
        st.write_device_key("secret-key")
        assert stat.S_IMODE(st.key_path.stat().st_mode) == 0o600
        assert st.read_device_key() == "secret-key"
        assert "secret-key" not in (tmp_path / "s" / "state.db").read_bytes().decode("latin-1")
    db = sqlite3.connect(tmp_path / "s" / "state.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    State(tmp_path).close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StateError, match="newer than this agent"):
        State(tmp_path)


def test_outbox_is_idempotent_by_key(tmp_path: Path) -> None:
    with State(tmp_path) as st:
        a = st.enqueue("report", "/rounds/r1/reports", "k1", '{"a":1}')
        assert st.enqueue("report", "/rounds/r1/reports", "k1", '{"a":2}') == a
        st.enqueue("metrics", "/metrics", "k2", "{}")
        assert [i.idempotency_key for i in st.pending()] == ["k1", "k2"]
        st.mark_attempt(a, "down")
        st.mark_delivered(a, {"report_id": "x"})
        assert [i.idempotency_key for i in st.pending()] == ["k2"]
        item = st.outbox("k1")
        assert item.body == '{"a":1}' and item.attempts == 2 and item.receipt == {"report_id": "x"}
        assert st.outbox_counts() == {"delivered": 1, "pending": 1}


def test_transaction_rolls_back_everything(tmp_path: Path) -> None:
    with State(tmp_path) as st:
        with pytest.raises(RuntimeError):
            with st.transaction():
                st.enqueue("report", "/p", "k1", "{}")
                st.set_journal("round:r1", "queued")
                raise RuntimeError("killed between the two writes")
        assert st.pending() == [] and st.journal("round:r1") is None


def test_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    with State(tmp_path) as st:
        st.enqueue("report", "/rounds/r1/reports", "k1", '{"kept": true}')
        pages = st._db.execute("PRAGMA page_count").fetchone()[0]
        st._db.execute(f"PRAGMA max_page_count = {pages}")  # the "disk" is now full
        with pytest.raises(StateError, match="disk is full") as exc:
            st.enqueue("report", "/rounds/r2/reports", "k2", "x" * 100_000)
        assert str(tmp_path) in str(exc.value)
        assert [i.body for i in st.pending()] == ['{"kept": true}']


def test_read_only_database_is_a_clear_error(tmp_path: Path) -> None:
    with State(tmp_path) as st:
        st.set(device_id="d1")
        st._db.execute("PRAGMA query_only = 1")  # what a read-only mount looks like to SQLite
        with pytest.raises(StateError, match="read-only"):
            st.set(device_id="d2")
        assert st.get("device_id") == "d1"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_dir_opens_for_reading(tmp_path: Path) -> None:
    with State(tmp_path) as st:
        st.set(device_id="d1")
    tmp_path.chmod(0o500)
    try:
        with State(tmp_path) as st:
            assert st.read_only and st.get("device_id") == "d1"
            with pytest.raises(StateError, match="read-only"):
                st.set(device_id="d2")
    finally:
        tmp_path.chmod(0o700)


def test_uncreatable_state_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="cannot create the state dir"):
        State(tmp_path / "file" / "state")


def test_corrupt_database(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StateError, match="corrupt"):
        State(tmp_path)


def test_ledgers_and_journal(tmp_path: Path) -> None:
    with State(tmp_path) as st:
        st.record_privacy({"round_id": "r1", "mechanism": "laplace", "epsilon": 0.5, "delta": 0.0, "rho": 0.01})
        st.record_privacy({"round_id": "r2", "mechanism": "laplace", "epsilon": 0.25, "delta": 0.0, "rho": 0.01})
        assert st.privacy_spent() == 0.75 and [c["round_id"] for c in st.privacy_charges()] == ["r1", "r2"]
        st.add_adapter("v1", "ds1", "/a/v1.gguf", "gguf-lora", {"x": 1}, {"x": 2}, kept=True)
        st.add_adapter("v2", "ds2", "/a/v2.gguf", "gguf-lora", None, None, kept=False)
        assert st.active_adapter()["version"] == "v1"
        st.add_adapter("v3", "ds3", "/a/v3.gguf", "gguf-lora", None, None, kept=True)
        assert [a["version"] for a in st.adapters() if a["active"]] == ["v3"]
        st.record_artifact("ds1", "ab" * 32, 10, "/d/x.jsonl", {"dataset_id": "ds1"})
        assert st.artifact("ds1")["size"] == 10 and st.artifact("nope") is None
        st.set_journal("round:r1", "drafts", {"path": "/x"})
        assert st.journal("round:r1") == ("drafts", {"path": "/x"})
        st.clear_journal("round:r1")
        assert st.journal("round:r1") is None
