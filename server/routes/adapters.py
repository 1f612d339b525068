"""Teacher adapters (admin): each cohort's adapters with their lineage, and rollback to an earlier one."""

from __future__ import annotations

from fastapi import APIRouter

from arte.wire import API_PREFIX
from server import fleet, lineage
from server.deps import AdminDep, SessionDep
from server.errors import Conflict
from server.lineage import AdapterOut, RollbackIn
from server.openapi import raises
from server.routes.common import IdPath, IdQuery
from server.schemas import CohortOut

router = APIRouter(prefix=API_PREFIX, tags=["adapters"])


@router.get("/adapters", response_model=list[AdapterOut])
def list_adapters(_: AdminDep, s: SessionDep, cohort_id: IdQuery = None) -> list[AdapterOut]:
    """Adapters, oldest first, each with its round, pairs, parent and the datasets written with it."""
    return [lineage.adapter_out(s, a) for a in lineage.list_adapters(s, cohort_id)]


@router.get("/adapters/{adapter_id}", response_model=AdapterOut)
def show(adapter_id: IdPath, _: AdminDep, s: SessionDep) -> AdapterOut:
    return lineage.adapter_out(s, lineage.get_adapter(s, adapter_id))


@router.post("/cohorts/{cohort_id}/rollback", response_model=CohortOut,
             responses=raises((Conflict, "An align job of the cohort is in flight.")))
def rollback(cohort_id: IdPath, body: RollbackIn, _: AdminDep, s: SessionDep) -> CohortOut:
    """Make an earlier adapter of the cohort (null: the base teacher) its adapter again: the next tailor
    and elicit jobs use it, and the next adapter names it as its parent."""
    return fleet.cohort_out(s, lineage.rollback(s, cohort_id, body.adapter_id))
