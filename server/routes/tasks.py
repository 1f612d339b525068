"""Tasks (admin): name, instruction and public seed examples."""

from __future__ import annotations

from fastapi import APIRouter

from arte.wire import API_PREFIX
from server import fleet
from server.deps import AdminDep, NowDep, SessionDep
from server.errors import Conflict
from server.openapi import raises
from server.routes.common import IdPath
from server.schemas import TaskIn, TaskOut

router = APIRouter(prefix=API_PREFIX, tags=["tasks"])


@router.post(
    "/tasks", status_code=201, response_model=TaskOut, responses=raises((Conflict, "A task of that name exists."))
)
def create(body: TaskIn, _: AdminDep, s: SessionDep, now: NowDep) -> TaskOut:
    return fleet.task_out(fleet.create_task(s, body, now))


@router.get("/tasks", response_model=list[TaskOut])
def list_tasks(_: AdminDep, s: SessionDep) -> list[TaskOut]:
    return [fleet.task_out(t) for t in fleet.list_tasks(s)]


@router.get("/tasks/{task_id}", response_model=TaskOut)
def show(task_id: IdPath, _: AdminDep, s: SessionDep) -> TaskOut:
    return fleet.task_out(fleet.get_task(s, task_id))
