"""Jobs (admin): long work as a resource. POST queues, GET polls, logs, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Request

from arte.wire import API_PREFIX
from server import queue
from server.deps import AdminDep, NowDep, SessionDep
from server.errors import BadRequest, BelowK, Conflict, NotFound
from server.openapi import raises
from server.routes.common import IdPath, IdQuery
from server.schemas import JobIn, JobKind, JobLogOut, JobOut, JobState

router = APIRouter(prefix=API_PREFIX, tags=["jobs"])



@router.post(
    "/jobs",
    status_code=201,
    response_model=JobOut,
    responses=raises(
        (NotFound, "No such cohort or round."),
        (BadRequest, "The round is another cohort's, or the kind needs a round."),
        (BelowK, "An align job for a round fewer than k devices reported."),
    ),
)
def create(body: JobIn, request: Request, _: AdminDep, s: SessionDep, now: NowDep) -> JobOut:
    """Queue a job; a worker (``arte-server worker``) runs it."""
    return queue.job_out(queue.submit(s, body, now, request.app.state.settings.job_max_attempts))


@router.get("/jobs", response_model=list[JobOut])
def list_jobs(
    _: AdminDep,
    s: SessionDep,
    state: JobState | None = None,
    kind: JobKind | None = None,
    cohort_id: IdQuery = None,
) -> list[JobOut]:
    return [queue.job_out(j) for j in queue.list_jobs(s, state=state, kind=kind, cohort_id=cohort_id)]


@router.get("/jobs/{job_id}", response_model=JobOut)
def show(job_id: IdPath, _: AdminDep, s: SessionDep) -> JobOut:
    return queue.job_out(queue.get_job(s, job_id))


@router.get("/jobs/{job_id}/logs", response_model=list[JobLogOut])
def logs(job_id: IdPath, _: AdminDep, s: SessionDep) -> list[JobLogOut]:
    return queue.job_logs(s, job_id)


@router.post(
    "/jobs/{job_id}/cancel", response_model=JobOut, responses=raises((Conflict, "The job has already finished."))
)
def cancel(job_id: IdPath, _: AdminDep, s: SessionDep, now: NowDep) -> JobOut:
    """Cancel: a queued job at once, a running one at its next heartbeat; 409 when already finished."""
    return queue.job_out(queue.cancel(s, job_id, now))
