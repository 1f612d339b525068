"""Fleet state operations: tasks, cohorts, enrollment tokens, devices and rounds.

Functions take an open :class:`~sqlalchemy.orm.Session` (one transaction, owned by the caller: a
request or a CLI command), validated input and ``now``; they return ORM rows and raise
:mod:`server.errors` types naming the field. The HTTP routes and the ``arte-server`` admin commands both
call these, so the rules live once. Device-facing lookups take the caller's cohort and answer "not
found" for anything outside it, so nobody learns what other cohorts hold.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from arte import wire
from arte.drafts import draft_from_dict
from arte.errors import DraftFormatError
from server import privacy as priv
from server import security
from server.errors import BadRequest, Conflict, NotFound, Unauthorized
from server.schemas import CohortIn, CohortOut, DeviceOut, RoundIn, RoundOut, TaskIn, TaskOut, TokenIn
from server.tables import Cohort, Device, EnrollmentToken, Report, Round, RoundDraft, Task, new_id

__all__ = [
    "create_task",
    "get_task",
    "list_tasks",
    "task_out",
    "create_cohort",
    "get_cohort",
    "list_cohorts",
    "cohort_out",
    "create_token",
    "list_tokens",
    "enroll",
    "device_out",
    "get_device",
    "list_devices",
    "create_round",
    "get_round",
    "list_rounds",
    "close_round",
    "round_out",
    "round_info",
    "current_round",
    "round_drafts",
    "round_drafts_json",
    "cached_round_drafts_json",
    "load_round_drafts_json",
    "drafts_json_for",
    "revoke_device",
]


# --- tasks --------------------------------------------------------------------------------------------


def create_task(s: Session, body: TaskIn, now: datetime) -> Task:
    if s.scalar(sa.select(Task.id).where(Task.name == body.name)):
        raise Conflict(f"a task named {body.name!r} exists", field="name")
    task = Task(
        id=new_id("tsk"),
        name=body.name,
        instruction=body.instruction,
        seeds=[x.model_dump(exclude_none=True) for x in body.seeds],
        created_at=now,
    )
    s.add(task)
    s.flush()
    return task


def get_task(s: Session, task_id: str) -> Task:
    task = s.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}", field="task_id", task_id=task_id)
    return task


def list_tasks(s: Session) -> list[Task]:
    return list(s.scalars(sa.select(Task).order_by(Task.created_at, Task.id)))


def task_out(t: Task) -> TaskOut:
    return TaskOut(
        task_id=t.id, name=t.name, instruction=t.instruction, seeds=t.seeds, created_at=t.created_at
    )


# --- cohorts ------------------------------------------------------------------------------------------


def create_cohort(s: Session, body: CohortIn, now: datetime) -> Cohort:
    if s.get(Task, body.task_id) is None:
        raise NotFound(f"no task {body.task_id}", field="task_id")
    if s.scalar(sa.select(Cohort.id).where(Cohort.name == body.name)):
        raise Conflict(f"a cohort named {body.name!r} exists", field="name")
    cohort = Cohort(
        id=new_id("coh"),
        name=body.name,
        task_id=body.task_id,
        student_model=body.student_model,
        profile_class=body.profile_class,
        privacy=body.privacy.model_dump(),
        min_devices=body.min_devices,
        adapter=None,
        created_at=now,
    )
    s.add(cohort)
    s.flush()
    return cohort


def get_cohort(s: Session, cohort_id: str, field: str = "cohort_id") -> Cohort:
    cohort = s.get(Cohort, cohort_id)
    if cohort is None:
        raise NotFound(f"no cohort {cohort_id}", field=field, cohort_id=cohort_id)
    return cohort


def list_cohorts(s: Session) -> list[Cohort]:
    return list(s.scalars(sa.select(Cohort).order_by(Cohort.created_at, Cohort.id)))


def cohort_out(s: Session, c: Cohort) -> CohortOut:
    n = s.scalar(
        sa.select(sa.func.count())
        .select_from(Device)
        .where(Device.cohort_id == c.id, Device.revoked_at.is_(None))
    )
    return CohortOut(
        cohort_id=c.id,
        name=c.name,
        task_id=c.task_id,
        student_model=c.student_model,
        profile_class=c.profile_class,
        privacy=c.privacy,
        min_devices=c.min_devices,
        adapter=c.adapter,
        adapter_id=c.adapter_id,
        n_devices=n or 0,
        created_at=c.created_at,
    )


# --- enrollment tokens and devices -----------------------------------------------------------------


def create_token(s: Session, body: TokenIn, now: datetime, default_ttl_s: int) -> tuple[EnrollmentToken, str]:
    """A one-time token for ``body.cohort_id``; returns the row and the token (never stored)."""
    get_cohort(s, body.cohort_id)
    row_id = new_id("tok")
    token, token_hash = security.new_secret("et", row_id)
    row = EnrollmentToken(
        id=row_id,
        token_hash=token_hash,
        cohort_id=body.cohort_id,
        note=body.note,
        created_at=now,
        expires_at=now + timedelta(seconds=body.ttl_s or default_ttl_s),
    )
    s.add(row)
    s.flush()
    return row, token


def list_tokens(s: Session, cohort_id: str | None = None) -> list[EnrollmentToken]:
    q = sa.select(EnrollmentToken).order_by(EnrollmentToken.created_at, EnrollmentToken.id)
    if cohort_id:
        q = q.where(EnrollmentToken.cohort_id == cohort_id)
    return list(s.scalars(q))


def enroll(
    s: Session,
    token: str,
    *,
    device_name: str,
    profile_id: str,
    hardware: dict[str, Any],
    agent_version: str,
    now: datetime,
) -> tuple[Device, str]:
    """Spend a one-time token: a new device in the token's cohort; returns the device and its key."""
    parsed = security.parse_secret(token, "et")
    invalid = Unauthorized("enrollment token is not valid", field="token")
    if parsed is None:
        raise invalid
    row_id, secret = parsed
    # FOR UPDATE: two devices racing with one token on PostgreSQL; on SQLite the transaction is IMMEDIATE.
    row = s.scalar(sa.select(EnrollmentToken).where(EnrollmentToken.id == row_id).with_for_update())
    if row is None or not security.verify(secret, row.token_hash):
        raise invalid
    if row.used_at is not None:
        raise Unauthorized("enrollment token was already used", field="token")
    if row.expires_at <= now:
        raise Unauthorized(
            "enrollment token has expired", field="token", expired_at=row.expires_at.isoformat()
        )
    device_id = new_id("dev")
    key, key_hash = security.new_secret("dk", device_id)
    device = Device(
        id=device_id,
        key_hash=key_hash,
        name=device_name,
        cohort_id=row.cohort_id,
        profile_id=profile_id,
        hardware=hardware,
        agent_version=agent_version,
        enrolled_at=now,
        last_seen_at=now,
    )
    row.used_at, row.device_id = now, device_id
    s.add(device)
    s.flush()
    return device, key


def get_device(s: Session, device_id: str) -> Device:
    device = s.get(Device, device_id)
    if device is None:
        raise NotFound(f"no device {device_id}", field="device_id", device_id=device_id)
    return device


def list_devices(s: Session, cohort_id: str | None = None) -> list[Device]:
    q = sa.select(Device).order_by(Device.enrolled_at, Device.id)
    if cohort_id:
        q = q.where(Device.cohort_id == cohort_id)
    return list(s.scalars(q))


def revoke_device(s: Session, device_id: str, now: datetime) -> Device:
    device = get_device(s, device_id)
    if device.revoked_at is None:
        device.revoked_at = now
    return device


def device_out(d: Device) -> DeviceOut:
    return DeviceOut(
        device_id=d.id,
        device_name=d.name,
        cohort_id=d.cohort_id,
        profile_id=d.profile_id,
        hardware=d.hardware,
        agent_version=d.agent_version,
        enrolled_at=d.enrolled_at,
        last_seen_at=d.last_seen_at,
        revoked_at=d.revoked_at,
    )


# --- rounds -------------------------------------------------------------------------------------------


def create_round(s: Session, body: RoundIn, now: datetime, job_id: str | None = None) -> Round:
    """A new open round of ``body.drafts`` for a cohort (drafts checked like a drafts file); ``job_id``:
    the elicit job that opened it."""
    cohort = get_cohort(s, body.cohort_id)
    seen: set[str] = set()
    rows: list[RoundDraft] = []
    for i, d in enumerate(body.drafts):
        try:
            draft = draft_from_dict(d, path="drafts", line=i)
        except DraftFormatError as e:
            raise BadRequest(
                f"drafts[{i}]: {e.problem}", field=f"drafts[{i}].{e.field}" if e.field else f"drafts[{i}]"
            ) from None
        if draft.id in seen:
            raise BadRequest(f"duplicate draft id {draft.id!r}", field=f"drafts[{i}].id")
        if len(draft.id) > 200:
            raise BadRequest("draft id longer than 200 characters", field=f"drafts[{i}].id")
        seen.add(draft.id)
        rows.append(RoundDraft(draft_id=draft.id, position=i, data=draft.to_dict()))
    if body.closes_at is not None and body.closes_at.tzinfo is None:
        raise BadRequest("closes_at must carry a time zone", field="closes_at")
    privacy = dict(cohort.privacy)
    if body.privacy is not None:  # a round may be stricter than its cohort's policy, never looser
        priv.check_stricter(priv.info(body.privacy.model_dump()), priv.info(cohort.privacy), what="round")
        privacy = body.privacy.model_dump()
    rnd = Round(
        id=new_id("rnd"),
        cohort_id=cohort.id,
        state="open",
        mode=body.mode,
        max_new_tokens=body.max_new_tokens,
        min_items=body.min_items,
        privacy=privacy,
        n_drafts=len(rows),
        created_at=now,
        closes_at=body.closes_at,
        closed_at=None,
        job_id=job_id,
    )
    s.add(rnd)
    s.flush()
    for r in rows:
        r.round_id = rnd.id
    s.add_all(rows)
    s.flush()
    return rnd


def get_round(s: Session, round_id: str, *, cohort_id: str | None = None, field: str = "round_id") -> Round:
    """The round; with ``cohort_id`` (a device's view) a round of another cohort is "not found"."""
    rnd = s.get(Round, round_id)
    if rnd is None or (cohort_id is not None and rnd.cohort_id != cohort_id):
        raise NotFound(f"no round {round_id}", field=field, round_id=round_id)
    return rnd


def list_rounds(s: Session, cohort_id: str | None = None, state: str | None = None) -> list[Round]:
    q = sa.select(Round).order_by(Round.created_at, Round.id)
    if cohort_id:
        q = q.where(Round.cohort_id == cohort_id)
    if state:
        q = q.where(Round.state == state)
    return list(s.scalars(q))


def is_open(rnd: Round, now: datetime) -> bool:
    return rnd.state == "open" and (rnd.closes_at is None or rnd.closes_at > now)


def current_round(s: Session, cohort_id: str, now: datetime) -> Round:
    """The cohort's newest open round (404 when none)."""
    q = (
        sa.select(Round)
        .where(Round.cohort_id == cohort_id, Round.state == "open")
        .order_by(Round.created_at.desc(), Round.id.desc())
    )
    for rnd in s.scalars(q):
        if is_open(rnd, now):
            return rnd
    raise NotFound("the cohort has no open round", cohort_id=cohort_id)


def close_round(s: Session, round_id: str, now: datetime) -> Round:
    rnd = get_round(s, round_id)
    if rnd.state != "closed":
        rnd.state, rnd.closed_at = "closed", now
    s.flush()
    return rnd


def round_drafts(s: Session, rnd: Round) -> wire.RoundDrafts:
    rows = s.scalars(sa.select(RoundDraft).where(RoundDraft.round_id == rnd.id).order_by(RoundDraft.position))
    return wire.RoundDrafts(round_id=rnd.id, drafts=[r.data for r in rows])


# A round's drafts and cohort never change after it is created (there is no route that edits or deletes
# them) and round ids are random, so each process keeps the serialized answer of the rounds devices
# pull, a bounded number of them, and checks only the cohort per request.
_DRAFTS_JSON: dict[str, tuple[str, bytes]] = {}
_DRAFTS_JSON_MAX = 256
_drafts_json_lock = threading.Lock()
_ROUND_DRAFTS_ADAPTER = TypeAdapter(wire.RoundDrafts)


def round_drafts_json(s: Session, round_id: str, *, cohort_id: str | None = None) -> bytes:
    """The JSON body of :func:`round_drafts` for ``round_id`` (404 as :func:`get_round` for a round of
    another cohort, when ``cohort_id`` is given)."""
    return drafts_json_for(load_round_drafts_json(s, round_id), round_id, cohort_id)


def load_round_drafts_json(s: Session, round_id: str) -> tuple[str, bytes]:
    """(cohort id, :func:`round_drafts_json`'s body), from the process cache or read and kept there;
    404 for an unknown round."""
    cached = cached_round_drafts_json(round_id)
    if cached is None:
        rnd = get_round(s, round_id)
        cached = (rnd.cohort_id, _ROUND_DRAFTS_ADAPTER.dump_json(round_drafts(s, rnd)))
        with _drafts_json_lock:
            if len(_DRAFTS_JSON) >= _DRAFTS_JSON_MAX:
                del _DRAFTS_JSON[next(iter(_DRAFTS_JSON))]
            _DRAFTS_JSON[round_id] = cached
    return cached


def cached_round_drafts_json(round_id: str) -> tuple[str, bytes] | None:
    """What :func:`load_round_drafts_json` gives when this process has served the round's drafts
    before; None when only the database can answer."""
    return _DRAFTS_JSON.get(round_id)


def drafts_json_for(cached: tuple[str, bytes], round_id: str, cohort_id: str | None) -> bytes:
    """The cached body for a caller of ``cohort_id`` (None: the admin); 404 for another cohort's."""
    if cohort_id is not None and cached[0] != cohort_id:
        raise NotFound(f"no round {round_id}", field="round_id", round_id=round_id)
    return cached[1]


def round_info(s: Session, rnd: Round) -> wire.RoundInfo:
    cohort = get_cohort(s, rnd.cohort_id)
    task = get_task(s, cohort.task_id)
    p = rnd.privacy
    return wire.RoundInfo(
        round_id=rnd.id,
        cohort_id=rnd.cohort_id,
        task_name=task.name,
        n_drafts=rnd.n_drafts,
        mode=rnd.mode,
        max_new_tokens=rnd.max_new_tokens,
        min_items=rnd.min_items,
        privacy=wire.PrivacyInfo(
            mechanism=p.get("mechanism", "none"), epsilon=p.get("epsilon"), delta=p.get("delta")
        ),
        created_at=rnd.created_at.isoformat(),
        closes_at=rnd.closes_at.isoformat() if rnd.closes_at else None,
    )


def round_out(s: Session, rnd: Round) -> RoundOut:
    n = s.scalar(sa.select(sa.func.count()).select_from(Report).where(Report.round_id == rnd.id))
    return RoundOut(
        round_id=rnd.id,
        cohort_id=rnd.cohort_id,
        state=rnd.state,
        mode=rnd.mode,  # type: ignore[arg-type]
        max_new_tokens=rnd.max_new_tokens,
        min_items=rnd.min_items,
        privacy=rnd.privacy,
        n_drafts=rnd.n_drafts,
        n_reports=n or 0,
        created_at=rnd.created_at,
        closes_at=rnd.closes_at,
        closed_at=rnd.closed_at,
    )
