"""What devices receive: the cohorts' tailored datasets.

Contract as in :mod:`server.fleet`. Datasets are JSONL bytes, content-addressed by sha256 (also their
ETag). With a signing key, the manifest's ``signature`` is ``hmac-sha256:<hex>`` of the sha256 hex digest
under that key (devices configured with the same key verify it; HMAC because the server has no
asymmetric-crypto dependency).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from arte import wire
from server import fleet
from server.errors import BadRequest, NotFound
from server.schemas import DatasetIn
from server.tables import (
    Dataset,
    new_id,
)

__all__ = ["create_dataset", "dataset_content", "get_dataset", "latest_manifest", "list_datasets", "manifest", "sign"]


def sign(sha256_hex: str, key_hex: str) -> str:
    """``hmac-sha256:<hex>`` of the dataset's sha256 hex digest under the fleet signing key."""
    return "hmac-sha256:" + hmac.new(bytes.fromhex(key_hex), sha256_hex.encode(), hashlib.sha256).hexdigest()


def create_dataset(s: Session, body: DatasetIn, now: datetime, signing_key_hex: str | None) -> Dataset:
    """Store a JSONL dataset for a cohort; every non-empty line must be a JSON object."""
    fleet.get_cohort(s, body.cohort_id)
    if body.round_id is not None:
        rnd = fleet.get_round(s, body.round_id)
        if rnd.cohort_id != body.cohort_id:
            raise BadRequest(f"round {rnd.id} belongs to another cohort", field="round_id")
    n = 0
    for lineno, line in enumerate(body.content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadRequest(f"line {lineno} is not JSON: {e.msg}", field="content", line=lineno) from None
        if not isinstance(obj, dict):
            raise BadRequest(f"line {lineno} is not a JSON object", field="content", line=lineno)
        n += 1
    data = body.content.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    ds = Dataset(
        id=new_id("dat"),
        cohort_id=body.cohort_id,
        round_id=body.round_id,
        sha256=digest,
        size=len(data),
        n_examples=n,
        content=data,
        teacher=body.teacher,
        adapter=body.adapter,
        signature=sign(digest, signing_key_hex) if signing_key_hex else None,
        counts=dict(body.counts),
        created_at=now,
    )
    s.add(ds)
    s.flush()
    return ds


def get_dataset(s: Session, dataset_id: str, *, cohort_id: str | None = None) -> Dataset:
    ds = s.get(Dataset, dataset_id)
    if ds is None or (cohort_id is not None and ds.cohort_id != cohort_id):
        raise NotFound(f"no dataset {dataset_id}", field="dataset_id", dataset_id=dataset_id)
    return ds


_MANIFEST_COLUMNS = sa.select(
    Dataset.id,
    Dataset.cohort_id,
    Dataset.round_id,
    Dataset.sha256,
    Dataset.size,
    Dataset.n_examples,
    Dataset.created_at,
    Dataset.teacher,
    Dataset.adapter,
    Dataset.signature,
    Dataset.counts,
)


def latest_manifest(conn: Session | sa.Connection, cohort_id: str) -> wire.DatasetManifest:
    """The manifest of the cohort's newest dataset (404 when none), read in one statement by a session
    or a plain (read-only) connection."""
    row = conn.execute(
        _MANIFEST_COLUMNS.where(Dataset.cohort_id == cohort_id)
        .order_by(Dataset.created_at.desc(), Dataset.id.desc())
        .limit(1)
    ).first()
    if row is None:
        raise NotFound("the cohort has no dataset yet", cohort_id=cohort_id)
    return manifest(row)


def list_datasets(s: Session, cohort_id: str | None = None) -> list[Dataset]:
    q = sa.select(Dataset).order_by(Dataset.created_at, Dataset.id)
    if cohort_id:
        q = q.where(Dataset.cohort_id == cohort_id)
    return list(s.scalars(q))


def manifest(ds: Dataset | sa.Row[Any]) -> wire.DatasetManifest:
    return wire.DatasetManifest(
        dataset_id=ds.id,
        cohort_id=ds.cohort_id,
        round_id=ds.round_id,
        sha256=ds.sha256,
        size=ds.size,
        n_examples=ds.n_examples,
        created_at=ds.created_at.isoformat(),
        teacher=ds.teacher,
        adapter=ds.adapter,
        signature=ds.signature,
        counts=dict(ds.counts),
    )


# Dataset content never changes (its id and sha256 name it), so each process keeps the most recently
# served contents up to a byte budget instead of reading the blob from the database per download.
_CONTENT: dict[str, bytes] = {}
_CONTENT_MAX_BYTES = 64 << 20
_content_lock = threading.Lock()


def dataset_content(s: Session, ds: Dataset) -> bytes:
    """The dataset's JSONL bytes (from the process cache when they were served before)."""
    data = _CONTENT.get(ds.id)
    if data is not None:
        return data
    data = s.scalar(sa.select(Dataset.content).where(Dataset.id == ds.id)) or b""
    if len(data) <= _CONTENT_MAX_BYTES // 4:
        with _content_lock:
            while _CONTENT and sum(map(len, _CONTENT.values())) + len(data) > _CONTENT_MAX_BYTES:
                del _CONTENT[next(iter(_CONTENT))]
            _CONTENT[ds.id] = data
    return data
