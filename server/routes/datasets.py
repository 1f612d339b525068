"""Datasets: the newest manifest for a device's cohort and its content with HTTP Range; admin upload.

Content is served with ``ETag: "<sha256>"``, ``Accept-Ranges: bytes``; ``Range: bytes=a-b`` (also
``a-`` and ``-n``) gives 206 with ``Content-Range``, a range starting past the end gives 416 with
``Content-Range: bytes */size``. A malformed or multi-part Range header is ignored (200, the whole
content), as RFC 9110 allows; ``If-Range`` with another ETag also gets the whole content;
``If-None-Match`` with the current ETag gets 304.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from arte import wire
from server import datasets
from server.deps import AdminDep, AnyDep, Creds, NowDep, SessionDep, unit_of_work
from server.errors import BadRequest, Forbidden, NotFound, RangeNotSatisfiable
from server.openapi import raises
from server.routes.common import IdPath, IdPathLate, IdQuery
from server.schemas import DatasetIn

router = APIRouter(prefix=wire.API_PREFIX, tags=["datasets"])

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a single satisfiable range; None to serve everything; raises 416."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
        if start >= size:
            raise RangeNotSatisfiable(
                f"range starts at {start}, content has {size} bytes", field="range", size=size
            )
        return start, end
    suffix = int(last)
    if suffix == 0:
        raise RangeNotSatisfiable("empty suffix range", field="range", size=size)
    return max(0, size - suffix), size - 1


@router.get(
    "/datasets/latest",
    response_model=wire.DatasetManifest,
    responses=raises(Forbidden, (NotFound, "The device's cohort has no dataset yet.")),
)
async def latest(request: Request, creds: Creds) -> wire.DatasetManifest:
    """The newest dataset of the device's cohort (404 when none)."""
    # what every device polls: one thread hand-off (server.deps.unit_of_work)
    return await unit_of_work(
        request,
        creds,
        lambda s, who, now, _: datasets.latest_manifest(s, who.device.cohort_id),
        device_only=True,
    )


@router.get("/datasets/{dataset_id}", response_model=wire.DatasetManifest)
def show(dataset_id: IdPath, who: AnyDep, s: SessionDep) -> wire.DatasetManifest:
    cohort = who.device.cohort_id if who.device else None
    return datasets.manifest(datasets.get_dataset(s, dataset_id, cohort_id=cohort))


@router.get(
    "/datasets/{dataset_id}/content",
    response_class=Response,
    responses={
        200: {"content": {"application/x-ndjson": {}}, "description": "The JSONL bytes."},
        206: {"content": {"application/x-ndjson": {}}, "description": "A byte range."},
        304: {"description": "Not modified (If-None-Match matched)."},
        **raises(RangeNotSatisfiable),
    },
)
async def content(
    dataset_id: IdPathLate,
    request: Request,
    creds: Creds,
    range_: str | None = Header(None, alias="range"),
    if_range: str | None = Header(None),
    if_none_match: str | None = Header(None),
) -> Response:
    """The dataset's JSONL bytes, resumable with Range; the ETag is the sha256."""

    def unit(s: Any, who: Any, now: Any, body: Any) -> Response:
        cohort = who.device.cohort_id if who.device else None
        ds = datasets.get_dataset(s, dataset_id, cohort_id=cohort)
        etag = f'"{ds.sha256}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0"}
        if if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]:
            return Response(status_code=304, headers=headers)
        data = datasets.dataset_content(s, ds)
        use_range = if_range is None or if_range.strip() == etag
        rng = parse_range(range_, len(data)) if use_range else None
        if rng is None:
            return Response(data, media_type="application/x-ndjson", headers=headers)
        start, end = rng
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(
            data[start : end + 1], status_code=206, media_type="application/x-ndjson", headers=headers
        )

    # devices download here: one thread hand-off (server.deps.unit_of_work)
    return await unit_of_work(request, creds, unit, device_only=False, ids={"dataset_id": dataset_id})


@router.post(
    "/datasets",
    status_code=201,
    response_model=wire.DatasetManifest,
    responses=raises(
        (NotFound, "No such cohort or round."),
        (BadRequest, "A line of the content is not a JSON object, or the round is another cohort's."),
    ),
)
def upload(
    body: DatasetIn, request: Request, _: AdminDep, s: SessionDep, now: NowDep
) -> wire.DatasetManifest:
    """Store a JSONL dataset for a cohort (signed when the server has a signing key)."""
    key = request.app.state.settings.dataset_signing_key
    return datasets.manifest(datasets.create_dataset(s, body, now, key.get_secret_value() if key else None))


@router.get("/datasets", response_model=list[wire.DatasetManifest])
def list_datasets(_: AdminDep, s: SessionDep, cohort_id: IdQuery = None) -> list[wire.DatasetManifest]:
    return [datasets.manifest(d) for d in datasets.list_datasets(s, cohort_id)]
