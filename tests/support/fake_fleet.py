"""A fake fleet server for agent unit tests: the device endpoints of :mod:`arte.wire`, in memory, behind
``httpx.MockTransport`` — with idempotent reports and metrics, HTTP Range, and failures on demand.

Failure knobs (each consumed as it fires):

* ``down``: the next N requests fail with ``httpx.ConnectError`` (server unreachable);
* ``posts_down``: the next N POSTs fail with ``httpx.ConnectError`` (down just while reporting);
* ``statuses``: the next requests answer these statuses (e.g. ``[503, 503]``) with the error body;
* ``lose_answers``: the next N POSTs are processed but their answer is lost (``httpx.ReadError``);
* ``cut_after``: the next content download breaks (``httpx.ReadError``) after this many bytes;
* ``kill_after``: the next content download raises :class:`Killed` (the agent dies) after this many bytes;
* ``corrupt_downloads``: the next N content downloads have one byte flipped;
* ``ignore_range``: the content endpoint answers 200 with the whole file even when asked for a range.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx

from arte.wire import (
    API_PREFIX,
    DatasetManifest,
    DeviceInfo,
    EnrollRequest,
    EnrollResponse,
    Metrics,
    MetricsReceipt,
    PrivacyInfo,
    Report,
    ReportReceipt,
    RoundDrafts,
    RoundInfo,
    from_wire,
    to_wire,
)

NOW = "2026-01-01T00:00:00+00:00"


class Killed(BaseException):
    """The agent process 'dies' mid-download (not an Exception: nothing may catch it)."""


class _Stream(httpx.SyncByteStream):
    def __init__(self, data: bytes, *, cut_after: int | None = None, kill_after: int | None = None,
                 chunk: int = 7) -> None:
        self.data, self.cut_after, self.kill_after, self.chunk = data, cut_after, kill_after, chunk

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for i in range(0, len(self.data), self.chunk):
            block = self.data[i:i + self.chunk]
            for limit, exc in ((self.cut_after, httpx.ReadError("connection reset")), (self.kill_after, Killed())):
                if limit is not None and sent + len(block) > limit:
                    yield block[:limit - sent]
                    raise exc
            sent += len(block)
            yield block


@dataclass
class FakeFleet:
    tokens: set[str] = field(default_factory=lambda: {"tok-1"})
    cohort_id: str = "cohort-a"
    round: RoundInfo | None = None
    drafts: list[dict[str, Any]] = field(default_factory=list)
    datasets: dict[str, tuple[DatasetManifest, bytes]] = field(default_factory=dict)
    latest: str | None = None
    signing_key: bytes | None = None
    devices: dict[str, str] = field(default_factory=dict)            # key -> device id
    reports: dict[tuple[str, str], tuple[str, dict]] = field(default_factory=dict)  # (dev, round) -> (key, receipt)
    report_bodies: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)
    log: list[httpx.Request] = field(default_factory=list)
    # failure knobs
    down: int = 0
    posts_down: int = 0
    statuses: list[int] = field(default_factory=list)
    lose_answers: int = 0
    cut_after: int | None = None
    kill_after: int | None = None
    corrupt_downloads: int = 0
    ignore_range: bool = False

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- helpers for tests ----------------------------------------------------------------------------------

    def open_round(self, drafts: list[dict[str, Any]], *, round_id: str = "r1", mode: str = "cot-choice",
                   min_items: int = 1, privacy: PrivacyInfo | None = None) -> RoundInfo:
        self.drafts = drafts
        self.round = RoundInfo(round_id=round_id, cohort_id=self.cohort_id, task_name="t", n_drafts=len(drafts),
                               mode=mode, max_new_tokens=32, min_items=min_items,
                               privacy=privacy or PrivacyInfo(), created_at=NOW)
        return self.round

    def publish(self, content: bytes, dataset_id: str = "ds1", *, sign: bool = False) -> DatasetManifest:
        sha = hashlib.sha256(content).hexdigest()
        sig = ("hmac-sha256:" + hmac.new(self.signing_key, sha.encode(), hashlib.sha256).hexdigest()
               if sign and self.signing_key else None)
        m = DatasetManifest(dataset_id=dataset_id, cohort_id=self.cohort_id, round_id=None, sha256=sha,
                            size=len(content), n_examples=content.count(b"\n"), created_at=NOW, teacher="fake",
                            adapter=None, signature=sig)
        self.datasets[dataset_id] = (m, content)
        self.latest = dataset_id
        return m

    def requests(self, method: str, path_re: str) -> list[httpx.Request]:
        return [r for r in self.log if r.method == method and re.search(path_re, r.url.path)]

    # -- the server -----------------------------------------------------------------------------------------

    def _err(self, status: int, type_: str, message: str, **detail: Any) -> httpx.Response:
        return httpx.Response(status, json={"error": {"type": type_, "message": message, "detail": detail}})

    def _device(self, req: httpx.Request) -> str | None:
        auth = req.headers.get("Authorization", "")
        return self.devices.get(auth.removeprefix("Bearer "))

    def handle(self, req: httpx.Request) -> httpx.Response:
        self.log.append(req)
        if self.down:
            self.down -= 1
            raise httpx.ConnectError("connection refused", request=req)
        if self.posts_down and req.method == "POST":
            self.posts_down -= 1
            raise httpx.ConnectError("connection refused", request=req)
        if self.statuses:
            status = self.statuses.pop(0)
            return self._err(status, "unavailable", f"injected {status}")
        path = req.url.path.removeprefix(API_PREFIX)
        if req.method == "POST" and path == "/enroll":
            return self._enroll(req)
        dev = self._device(req)
        if dev is None:
            return self._err(401, "unauthorized", "unknown device key")
        resp = self._route(req, path, dev)
        if req.method == "POST" and self.lose_answers:
            self.lose_answers -= 1
            raise httpx.ReadError("answer lost", request=req)
        return resp

    def _enroll(self, req: httpx.Request) -> httpx.Response:
        msg = from_wire(EnrollRequest, json.loads(req.content))
        if msg.token not in self.tokens:
            return self._err(401, "invalid_token", "unknown or used enrollment token", field="token")
        self.tokens.discard(msg.token)
        dev, key = f"dev-{len(self.devices) + 1}", uuid.uuid4().hex
        self.devices[key] = dev
        return httpx.Response(201, json=to_wire(EnrollResponse(dev, key, self.cohort_id, NOW)))

    def _route(self, req: httpx.Request, path: str, dev: str) -> httpx.Response:
        if path == "/devices/me":
            return httpx.Response(200, json=to_wire(DeviceInfo(dev, "d", self.cohort_id, "laptop-cpu", NOW, NOW)))
        if path == "/rounds/current":
            return httpx.Response(200, json=to_wire(self.round)) if self.round else \
                self._err(404, "not_found", "no open round")
        if m := re.fullmatch(r"/rounds/([^/]+)/drafts", path):
            if not self.round or m.group(1) != self.round.round_id:
                return self._err(404, "not_found", "no such round")
            return httpx.Response(200, json=to_wire(RoundDrafts(m.group(1), self.drafts)))
        if m := re.fullmatch(r"/rounds/([^/]+)/reports", path):
            return self._report(req, m.group(1), dev)
        if path == "/datasets/latest":
            if self.latest is None:
                return self._err(404, "not_found", "no dataset")
            return httpx.Response(200, json=to_wire(self.datasets[self.latest][0]))
        if m := re.fullmatch(r"/datasets/([^/]+)/content", path):
            return self._content(req, m.group(1))
        if path == "/metrics" and req.method == "POST":
            msg = from_wire(Metrics, json.loads(req.content))
            if msg.idempotency_key in self.metrics:
                return httpx.Response(200, json={**self.metrics[msg.idempotency_key], "duplicate": True})
            receipt = to_wire(MetricsReceipt(f"m{len(self.metrics) + 1}", dev, NOW, False))
            self.metrics[msg.idempotency_key] = receipt
            return httpx.Response(201, json=receipt)
        return self._err(404, "not_found", f"no route {req.method} {path}")

    def _report(self, req: httpx.Request, round_id: str, dev: str) -> httpx.Response:
        if not self.round or round_id != self.round.round_id:
            return self._err(404, "not_found", "no such round")
        msg = from_wire(Report, json.loads(req.content))
        stored = self.reports.get((dev, round_id))
        if stored is not None:
            if stored[0] != msg.idempotency_key:
                return self._err(409, "conflict", "this device already reported this round",
                                 field="idempotency_key")
            return httpx.Response(200, json={**stored[1], "duplicate": True})
        receipt = to_wire(ReportReceipt(f"rep{len(self.reports) + 1}", round_id, dev, len(msg.scores), NOW, False))
        self.reports[(dev, round_id)] = (msg.idempotency_key, receipt)
        self.report_bodies.append(json.loads(req.content))
        return httpx.Response(201, json=receipt)

    def _content(self, req: httpx.Request, dataset_id: str) -> httpx.Response:
        if dataset_id not in self.datasets:
            return self._err(404, "not_found", "no such dataset")
        data = self.datasets[dataset_id][1]
        if self.corrupt_downloads:
            self.corrupt_downloads -= 1
            data = data[:3] + bytes([data[3] ^ 0xFF]) + data[4:]
        cut, kill = self.cut_after, self.kill_after
        self.cut_after = self.kill_after = None
        m = re.fullmatch(r"bytes=(\d+)-", req.headers.get("Range", ""))
        if m and not self.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                return self._err(416, "range_not_satisfiable", "bad range")
            return httpx.Response(206, headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                                                "Content-Length": str(len(data) - start)},
                                  stream=_Stream(data[start:], cut_after=cut, kill_after=kill))
        return httpx.Response(200, headers={"Content-Length": str(len(data))},
                              stream=_Stream(data, cut_after=cut, kill_after=kill))
