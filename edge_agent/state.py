"""The agent's local state: one SQLite file plus the device key, in a state dir.

Contract: :class:`State` owns ``<dir>/state.db`` and ``<dir>/device.key`` (mode 0600, never in the
database). Tables:

* ``settings``  — key/value: server URL, device id, cohort, profile, private data path (never sent);
* ``outbox``    — reports and metrics waiting for delivery, each with its idempotency key and, once
  delivered, the server's receipt (store-and-forward: a row is written before the first send);
* ``sent_log``  — the exact body of every POST the agent sent, with the status it got back;
* ``artifacts`` — downloaded datasets with their verified sha256 and path;
* ``adapters``  — adapter versions, their before/after accuracy and which one is active;
* ``privacy``   — per round: mechanism, epsilon and delta spent (the privacy accountant's ledger);
* ``journal``   — the run loop's step journal (key -> step + data), so a killed agent resumes.

The schema is versioned (``PRAGMA user_version``); a newer schema is refused. Every write runs in one
transaction: a read-only or full state dir raises :class:`StateError` saying so, and the transaction is
rolled back, so nothing already stored is lost or half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from edge_agent.errors import NotEnrolledError, StateError

__all__ = ["SCHEMA_VERSION", "State", "OutboxItem", "utc_now"]

SCHEMA_VERSION = 1
DB_NAME = "state.db"
KEY_NAME = "device.key"

_SCHEMA = [
    # version 0 -> 1
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('report', 'metrics')),
        path TEXT NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'rejected')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        sent_at TEXT,
        receipt TEXT
    );
    CREATE TABLE sent_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL, kind TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
        body TEXT NOT NULL, status INTEGER, response TEXT
    );
    CREATE TABLE artifacts (
        dataset_id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, path TEXT NOT NULL,
        manifest TEXT NOT NULL, verified_at TEXT NOT NULL
    );
    CREATE TABLE adapters (
        version TEXT PRIMARY KEY, dataset_id TEXT, path TEXT NOT NULL, format TEXT NOT NULL,
        created_at TEXT NOT NULL, before TEXT, after TEXT, kept INTEGER NOT NULL,
        active INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE privacy (
        round_id TEXT PRIMARY KEY, mechanism TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL,
        rho REAL NOT NULL, spent_at TEXT NOT NULL
    );
    CREATE TABLE journal (key TEXT PRIMARY KEY, step TEXT NOT NULL, data TEXT NOT NULL, updated_at TEXT NOT NULL);
    """,
]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class OutboxItem:
    id: int
    kind: str
    path: str
    idempotency_key: str
    body: str
    created_at: str
    status: str
    attempts: int
    last_error: str | None
    sent_at: str | None
    receipt: dict[str, Any] | None


def _problem(e: sqlite3.Error) -> str:
    msg = str(e)
    if "readonly" in msg or "read-only" in msg:
        return "the state dir is read-only (nothing was changed); make it writable by the agent's user"
    if "disk is full" in msg or "disk I/O" in msg:
        return f"the disk is full or failing ({msg}); nothing was changed: free space and retry"
    if "not a database" in msg or "malformed" in msg:
        return f"the database is corrupt ({msg}); move it aside and re-enroll"
    if "unable to open" in msg:
        return f"cannot open the database ({msg}); check the path and its permissions"
    if "locked" in msg:
        return f"the database is locked by another agent process ({msg})"
    return msg


class State:
    """The state dir. Use as a context manager or call :meth:`close`."""

    def __init__(self, directory: str | Path, *, now: Callable[[], str] = utc_now) -> None:
        self.dir = Path(directory).expanduser()
        self.now = now
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StateError(str(self.dir), f"cannot create the state dir: {e.strerror}") from None
        self.path = self.dir / DB_NAME
        self.read_only = not os.access(self.dir, os.W_OK) or (self.path.exists()
                                                              and not os.access(self.path, os.W_OK))
        try:
            if self.read_only:
                if not self.path.exists():
                    raise StateError(str(self.dir), "the state dir is read-only and holds no state yet")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            else:
                self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._migrate()
        except sqlite3.Error as e:
            raise StateError(str(self.path), _problem(e)) from None

    # -- plumbing -------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "State":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(str(self.path), f"schema version {version} is newer than this agent's "
                                             f"{SCHEMA_VERSION}: upgrade the agent")
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            raise StateError(str(self.path), f"schema version {version} needs an upgrade to {SCHEMA_VERSION}, "
                                             "but the state dir is read-only")
        with self.transaction():
            for step in _SCHEMA[version:]:
                for stmt in step.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside commits together or not at all. Nested calls join the
        outer transaction."""
        if self._db.in_transaction:
            yield self._db
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite already rolled back after some errors (SQLITE_FULL)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StateError(str(self.path), _problem(e)) from None

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StateError(str(self.path), _problem(e)) from None

    # -- settings -------------------------------------------------------------------------------------------

    def get(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set(self, **values: str | None) -> None:
        """Set settings; a None value deletes the key."""
        with self.transaction() as db:
            for k, v in values.items():
                if v is None:
                    db.execute("DELETE FROM settings WHERE key = ?", (k,))
                else:
                    db.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                               "excluded.value", (k, str(v)))

    def settings(self) -> dict[str, str]:
        return dict(self._query("SELECT key, value FROM settings ORDER BY key"))

    def require(self, key: str) -> str:
        """A setting that enrollment writes; :class:`NotEnrolledError` when it is missing."""
        value = self.get(key)
        if value is None:
            raise NotEnrolledError(f"no {key} in {self.path}: enroll first (edge-agent enroll --server URL "
                                   f"--token T)")
        return value

    # -- device key -----------------------------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.dir / KEY_NAME

    def write_device_key(self, key: str) -> None:
        """Write the key atomically, readable by the owner only (0600)."""
        tmp = self.key_path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(key)
            os.replace(tmp, self.key_path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StateError(str(self.key_path), f"cannot write the device key: {e.strerror}") from None

    def read_device_key(self) -> str:
        try:
            return self.key_path.read_text().strip()
        except FileNotFoundError:
            raise NotEnrolledError(f"no device key at {self.key_path}: enroll first") from None
        except OSError as e:
            raise StateError(str(self.key_path), f"cannot read the device key: {e.strerror}") from None

    # -- outbox and sent log --------------------------------------------------------------------------------

    def enqueue(self, kind: str, path: str, idempotency_key: str, body: str) -> int:
        """Queue a message (idempotent: the same key is queued once); returns its outbox id."""
        with self.transaction() as db:
            row = db.execute("SELECT id FROM outbox WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
            if row:
                return int(row[0])
            cur = db.execute("INSERT INTO outbox (kind, path, idempotency_key, body, created_at) "
                             "VALUES (?, ?, ?, ?, ?)", (kind, path, idempotency_key, body, self.now()))
            return int(cur.lastrowid)

    def _item(self, row: tuple) -> OutboxItem:
        return OutboxItem(*row[:10], receipt=json.loads(row[10]) if row[10] else None)

    _COLS = "id, kind, path, idempotency_key, body, created_at, status, attempts, last_error, sent_at, receipt"

    def pending(self) -> list[OutboxItem]:
        """Undelivered messages, oldest first."""
        return [self._item(r) for r in self._query(f"SELECT {self._COLS} FROM outbox WHERE status = 'pending' "
                                                   "ORDER BY id")]

    def outbox(self, idempotency_key: str) -> OutboxItem | None:
        rows = self._query(f"SELECT {self._COLS} FROM outbox WHERE idempotency_key = ?", (idempotency_key,))
        return self._item(rows[0]) if rows else None

    def mark_attempt(self, item_id: int, error: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error, item_id))

    def mark_delivered(self, item_id: int, receipt: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE outbox SET status = 'delivered', attempts = attempts + 1, last_error = NULL, "
                       "sent_at = ?, receipt = ? WHERE id = ?", (self.now(), json.dumps(receipt), item_id))

    def mark_rejected(self, item_id: int, error: str) -> None:
        """The server refused the message for good (a 4xx other than auth): keep it, stop re-sending it."""
        with self.transaction() as db:
            db.execute("UPDATE outbox SET status = 'rejected', attempts = attempts + 1, last_error = ?, "
                       "sent_at = ? WHERE id = ?", (error, self.now(), item_id))

    def outbox_counts(self) -> dict[str, int]:
        return dict(self._query("SELECT status, COUNT(*) FROM outbox GROUP BY status"))

    def log_sent(self, kind: str, method: str, path: str, body: str, status: int | None,
                 response: str | None) -> None:
        """Record exactly what went out (``body`` is the request body as sent) and what came back."""
        with self.transaction() as db:
            db.execute("INSERT INTO sent_log (at, kind, method, path, body, status, response) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?)", (self.now(), kind, method, path, body, status, response))

    def sent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest sent messages first."""
        rows = self._query("SELECT at, kind, method, path, body, status, response FROM sent_log "
                           "ORDER BY id DESC LIMIT ?", (limit,))
        return [{"at": r[0], "kind": r[1], "method": r[2], "path": r[3], "body": r[4], "status": r[5],
                 "response": r[6]} for r in rows]

    # -- artifacts and adapters -----------------------------------------------------------------------------

    def record_artifact(self, dataset_id: str, sha256: str, size: int, path: str, manifest: dict) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?)",
                       (dataset_id, sha256, size, path, json.dumps(manifest), self.now()))

    def artifact(self, dataset_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT dataset_id, sha256, size, path, manifest, verified_at FROM artifacts "
                           "WHERE dataset_id = ?", (dataset_id,))
        if not rows:
            return None
        r = rows[0]
        return {"dataset_id": r[0], "sha256": r[1], "size": r[2], "path": r[3], "manifest": json.loads(r[4]),
                "verified_at": r[5]}

    def add_adapter(self, version: str, dataset_id: str | None, path: str, fmt: str, before: dict | None,
                    after: dict | None, kept: bool) -> None:
        """Record an adapter version; a kept one becomes the only active one."""
        with self.transaction() as db:
            if kept:
                db.execute("UPDATE adapters SET active = 0")
            db.execute("INSERT OR REPLACE INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (version, dataset_id, path, fmt, self.now(), json.dumps(before), json.dumps(after),
                        int(kept), int(kept)))

    def adapters(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT version, dataset_id, path, format, created_at, before, after, kept, active "
                           "FROM adapters ORDER BY created_at, version")
        return [{"version": r[0], "dataset_id": r[1], "path": r[2], "format": r[3], "created_at": r[4],
                 "before": json.loads(r[5]) if r[5] else None, "after": json.loads(r[6]) if r[6] else None,
                 "kept": bool(r[7]), "active": bool(r[8])} for r in rows]

    def active_adapter(self) -> dict[str, Any] | None:
        return next((a for a in self.adapters() if a["active"]), None)

    # -- privacy ledger -------------------------------------------------------------------------------------

    def record_privacy(self, charge: dict[str, Any]) -> None:
        """Record one round's charge: ``{"round_id", "mechanism", "epsilon", "delta", "rho"}`` (the shape of
        ``arte.privacy.Charge.to_dict()``)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO privacy VALUES (?, ?, ?, ?, ?, ?)",
                       (charge["round_id"], charge["mechanism"], float(charge["epsilon"]),
                        float(charge["delta"]), float(charge["rho"]), self.now()))

    def privacy_charges(self) -> list[dict[str, Any]]:
        """Every round's charge, oldest first (feed them to ``arte.privacy.PrivacyAccountant``)."""
        rows = self._query("SELECT round_id, mechanism, epsilon, delta, rho, spent_at FROM privacy "
                           "ORDER BY spent_at, round_id")
        return [dict(zip(("round_id", "mechanism", "epsilon", "delta", "rho", "spent_at"), r)) for r in rows]

    def privacy_spent(self) -> float:
        """Total epsilon by basic composition (the accountant may prove a tighter bound)."""
        return float(self._query("SELECT COALESCE(SUM(epsilon), 0) FROM privacy")[0][0])

    # -- step journal ---------------------------------------------------------------------------------------

    def journal(self, key: str) -> tuple[str, dict[str, Any]] | None:
        rows = self._query("SELECT step, data FROM journal WHERE key = ?", (key,))
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def set_journal(self, key: str, step: str, data: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO journal VALUES (?, ?, ?, ?)",
                       (key, step, json.dumps(data or {}), self.now()))

    def clear_journal(self, key: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM journal WHERE key = ?", (key,))

    def journals(self) -> dict[str, dict[str, Any]]:
        return {r[0]: {"step": r[1], "data": json.loads(r[2]), "updated_at": r[3]}
                for r in self._query("SELECT key, step, data, updated_at FROM journal ORDER BY updated_at")}
