"""Cohorts (admin): devices that share a student model, a task, a profile class and a privacy policy."""

from __future__ import annotations

from fastapi import APIRouter

from arte.wire import API_PREFIX
from server import fleet
from server.deps import AdminDep, NowDep, SessionDep
from server.errors import Conflict, NotFound
from server.openapi import raises
from server.routes.common import IdPath
from server.schemas import CohortIn, CohortOut

router = APIRouter(prefix=API_PREFIX, tags=["cohorts"])


@router.post(
    "/cohorts",
    status_code=201,
    response_model=CohortOut,
    responses=raises((NotFound, "No such task."), (Conflict, "A cohort of that name exists.")),
)
def create(body: CohortIn, _: AdminDep, s: SessionDep, now: NowDep) -> CohortOut:
    return fleet.cohort_out(s, fleet.create_cohort(s, body, now))


@router.get("/cohorts", response_model=list[CohortOut])
def list_cohorts(_: AdminDep, s: SessionDep) -> list[CohortOut]:
    return [fleet.cohort_out(s, c) for c in fleet.list_cohorts(s)]


@router.get("/cohorts/{cohort_id}", response_model=CohortOut)
def show(cohort_id: IdPath, _: AdminDep, s: SessionDep) -> CohortOut:
    return fleet.cohort_out(s, fleet.get_cohort(s, cohort_id))
