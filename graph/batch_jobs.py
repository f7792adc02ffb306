"""`POST /batch`: a batch of workflows run by this process as ordinary stored runs.

A `BatchJob` feeds its valid items to `RunService.start_run` with at most `concurrency` in
flight (never more than the per-user cap, and it waits instead of failing when the cap is hit by
the user's other runs); each item becomes a normal run, readable at `/runs/{id}`. The job keeps
its progress in memory for `GET /batch/{id}`; `BatchJobs` keeps the newest `_KEEP` jobs.
A batch whose process stops loses the items that had not started (their runs were never
created); the runs that had started end `interrupted` like any other.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from typing import Any

from graph.batch import BatchItem, Progress, outcome, run_batch
from graph.errors import NotFound, TooManyRuns
from graph.runs import RunService
from graph.schema import RunResponse

_KEEP = 200              # finished batches remembered per process
_CAP_RETRY_S = 0.2       # how long an item waits when its user is at the in-flight cap


class BatchJob:
    def __init__(self, items: list[BatchItem], tenant: str, runs: RunService, concurrency: int):
        self.batch_id = f"batch_{uuid.uuid4().hex}"
        self.tenant = tenant
        self.progress = Progress(total=len(items))
        self.items: dict[int, dict[str, Any]] = {item.line: {"line": item.line, "status": "waiting"}
                                                 for item in items}
        self._runs = runs
        self.task = asyncio.ensure_future(run_batch(items, self._execute, concurrency, self._record,
                                                    self.progress))

    async def _execute(self, item: BatchItem) -> RunResponse:
        assert item.workflow is not None
        while True:
            try:
                run_id, _ = await self._runs.start_run(item.workflow, self.tenant)
                break
            except TooManyRuns:
                await asyncio.sleep(_CAP_RETRY_S)
        self.items[item.line].update(run_id=run_id, status="running")
        return await self._runs.result(run_id)

    def _record(self, result: dict[str, Any]) -> None:
        entry = {"line": result["line"], "status": result["status"]}
        if "run_id" in result:
            entry["run_id"] = result["run_id"]
        if "error" in result:
            entry["error"] = result["error"]
        self.items[result["line"]] = entry

    def view(self) -> dict[str, Any]:
        eta = self.progress.eta_s()
        return {"batch_id": self.batch_id, "status": "done" if self.task.done() else "running",
                "total": self.progress.total, "done": self.progress.done, "failed": self.progress.failed,
                "statuses": dict(self.progress.statuses),
                "workflows_per_s": round(self.progress.rate(), 2),
                "eta_s": round(eta, 1) if eta is not None else None,
                "items": [self.items[line] for line in sorted(self.items)]}


class BatchJobs:
    def __init__(self, runs: RunService):
        self._runs = runs
        self._jobs: OrderedDict[str, BatchJob] = OrderedDict()

    def start(self, items: list[BatchItem], tenant: str, concurrency: int) -> BatchJob:
        job = BatchJob(items, tenant, self._runs, concurrency)
        self._jobs[job.batch_id] = job
        finished = [batch_id for batch_id, j in self._jobs.items() if j.task.done()]
        for batch_id in finished[:max(0, len(self._jobs) - _KEEP)]:
            del self._jobs[batch_id]
        return job

    def get(self, batch_id: str, tenant: str) -> BatchJob:
        job = self._jobs.get(batch_id)
        if job is None or job.tenant != tenant:
            raise NotFound(f"batch {batch_id} does not exist here (batches are kept by the process "
                           "that runs them; their runs are at /runs/{run_id})")
        return job

    def invalid(self, items: list[BatchItem]) -> list[dict[str, Any]]:
        return [outcome(item, None) for item in items if item.workflow is None]
