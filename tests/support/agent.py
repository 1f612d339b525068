"""A device agent over the fake fleet (:mod:`tests.support.fake_fleet`): its hardware, drafts, dataset, a
fake train step, and :func:`make_agent` (a fresh agent process over the same state dir)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from arte.retry import RetryPolicy
from arte.wire import Accuracy, EnrollRequest
from edge_agent.client import ServerClient
from edge_agent.hardware import Hardware, PowerState
from edge_agent.loop import Agent
from edge_agent.state import State
from edge_agent.train_step import TrainingIncomplete, TrainRequest, TrainResult
from firmware_profiles import load_profiles
from tests.support.fake_fleet import FakeFleet
from tests.support.fakes import CopyingStudent

IDLE = Hardware(arch="x86_64", cpu_model="test", cpu_cores=4, memory_total=8 << 30, memory_available=6 << 30,
                device_tree_model=None, load_1min=0.2)


ON_BATTERY = dataclasses.replace(IDLE, power=PowerState(on_ac=False, has_battery=True, battery_percent=30))


DRAFTS = [{"id": "d-yes", "question": "Is 2 even?", "rationale": "2 is even. <ans>yes</ans>", "answer": "yes"},
          {"id": "d-no", "question": "Is 3 even?", "rationale": "3 is odd. <ans>no</ans>", "answer": "no"}]


DATASET = b"".join(b'{"input": "Is %d even?", "target": "%s"}\n' % (i, b"yes" if i % 2 == 0 else b"no")
                   for i in range(30))


class FakeTrainer:
    """Writes an adapter file and returns the accuracies it was given."""

    def __init__(self, before: float = 0.4, after: float = 0.6, fail: BaseException | None = None,
                 keep: bool | None = None, pause_first: int = 0) -> None:
        self.before, self.after, self.fail, self.pause_first = before, after, fail, pause_first
        self.keep = after > before if keep is None else keep   # a real step decides by McNemar on its holdout
        self.calls: list[TrainRequest] = []

    def __call__(self, req: TrainRequest) -> TrainResult:
        self.calls.append(req)
        if self.fail is not None:
            raise self.fail
        if len(self.calls) <= self.pause_first:
            raise TrainingIncomplete("time budget reached; resumes")
        assert req.dataset_path.read_bytes() == DATASET and req.holdout
        req.out_dir.mkdir(parents=True)
        (req.out_dir / "adapter.gguf").write_bytes(b"GGUF")
        return TrainResult(req.out_dir / "adapter.gguf", "gguf-lora", Accuracy(self.before, self.before, 15),
                           Accuracy(self.after, self.after, 15), keep=self.keep)


def make_agent(tmp_path: Path, fleet: FakeFleet, data: Path, *, train=None, hw: Hardware = IDLE,
               student=CopyingStudent, clock=None, profile_id: str = "laptop-cpu") -> Agent:
    """A fresh agent process over the same state dir (call again to 'restart')."""
    if not fleet.devices:
        ServerClient("http://fleet.test", None, transport=fleet.transport, wait=lambda s: None).enroll(
            EnrollRequest(token="tok-1", device_name="d", profile_id=profile_id))
    key = next(iter(fleet.devices))
    st = State(tmp_path / "state")
    st.set(device_id=fleet.devices[key], data_path=str(data), profile=profile_id)
    client = ServerClient("http://fleet.test", key, transport=fleet.transport, wait=lambda s: None,
                          retry=RetryPolicy(attempts=2))
    agent = Agent(state=st, client=client, profile=load_profiles()[profile_id],
                  open_student=lambda p, adapter: student(), train=train or FakeTrainer(), detect=lambda: hw,
                  noise_seed=0)
    if clock is not None:
        agent.clock = clock
    return agent
