"""How `./dev test` shares the suite between its two xdist workers, and what it shows of it.

xdist's `--dist loadfile` hands a worker its next module while two of its tests are still to
run; when those two are a guest boot of ten minutes, the next module waits behind them while
the other worker may sit idle. `JustInTime` hands out the next module only when a worker has
no test it can start (a worker starts a test once it holds the one after it, so: one left).
`Timeline` records when each module ran on which worker, for the run's summary and for
out/test-artifacts/timeline.json, so a slow run says where its time went."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling


class JustInTime(LoadFileScheduling):
    """--dist loadfile, with the next module assigned to whichever worker runs out first."""

    def _reschedule(self, node: Any) -> None:
        if node.shutting_down:
            return
        # (a loop: a module may have nothing left to run, e.g. one handed back by a worker
        # that crashed after running it, and gives the worker no test to start)
        while self.workqueue and self._pending_of(self.assigned_work[node]) <= 1:
            self._assign_work_unit(node)
        if not self.workqueue:
            node.shutdown()


class Timeline:
    """Per worker and module: the first test's start, the last one's end (wall clock)."""

    def __init__(self) -> None:
        self.spans: dict[tuple[str, str], list[float]] = {}

    def add(self, report: pytest.TestReport) -> None:
        if not report.start:
            return
        node = getattr(report, "node", None)
        worker = node.gateway.id if node is not None else "main"
        span = self.spans.setdefault((worker, report.nodeid.split("::")[0]), [report.start, 0])
        span[0] = min(span[0], report.start)
        span[1] = max(span[1], report.stop)

    def rows(self) -> list[dict[str, Any]]:
        if not self.spans:
            return []
        t0 = min(start for start, _ in self.spans.values())
        rows = [
            {"worker": w, "module": m, "start_s": round(a - t0, 1), "end_s": round(b - t0, 1)}
            for (w, m), (a, b) in self.spans.items()
        ]
        return sorted(rows, key=lambda r: (r["worker"], r["start_s"]))

    def report(self, write: Callable[[str], None], dest: Path, longer_than: float = 60) -> None:
        rows = self.rows()
        long = [r for r in rows if r["end_s"] - r["start_s"] > longer_than]
        workers = sorted({r["worker"] for r in rows})
        if not long and len(workers) < 2:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(rows, indent=1) + "\n")
        write(f"modules that took over {longer_than:.0f} s, by worker (all: {dest}):\n")
        for r in long:
            span = f"{r['start_s']:7.0f} → {r['end_s']:7.0f} s"
            write(f"  {r['worker']:5} {span}  {r['module']}\n")
        for worker in workers:
            end = max(r["end_s"] for r in rows if r["worker"] == worker)
            write(f"  {worker:5} done at {end:.0f} s\n")
