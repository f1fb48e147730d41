"""The suite's own timeline (tests/schedule.py): when each module ran on which worker."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from tests.schedule import Timeline


def report(worker: str | None, nodeid: str, start: float, stop: float) -> SimpleNamespace:
    node = None if worker is None else SimpleNamespace(gateway=SimpleNamespace(id=worker))
    return SimpleNamespace(node=node, nodeid=nodeid, start=start, stop=stop)


def test_spans_per_worker_and_module_from_first_start_to_last_stop(tmp_path: Path) -> None:
    t = Timeline()
    for r in [
        report("gw0", "tests/integration/a.py::test_one", 100.0, 400.0),
        report("gw0", "tests/integration/a.py::test_two", 400.0, 700.5),
        report("gw1", "tests/integration/b.py::test_x[1]", 101.0, 130.0),
        report("gw1", "tests/unit/c.py::test_y", 130.0, 131.0),
        report("gw1", "tests/unit/c.py::test_z", 0.0, 0.0),  # (no times: not counted)
    ]:
        t.add(r)  # type: ignore[arg-type]
    lines: list[str] = []
    dest = tmp_path / "out" / "timeline.json"
    t.report(lines.append, dest)
    rows = json.loads(dest.read_text())
    assert rows == [
        {"worker": "gw0", "module": "tests/integration/a.py", "start_s": 0.0, "end_s": 600.5},
        {"worker": "gw1", "module": "tests/integration/b.py", "start_s": 1.0, "end_s": 30.0},
        {"worker": "gw1", "module": "tests/unit/c.py", "start_s": 30.0, "end_s": 31.0},
    ]
    text = "".join(lines)
    assert "tests/integration/a.py" in text and "b.py" not in text  # (only the long ones)
    assert "gw0   done at 600 s" in text and "gw1   done at 31 s" in text


def test_a_short_run_on_one_worker_prints_nothing(tmp_path: Path) -> None:
    t = Timeline()
    t.add(report(None, "tests/unit/c.py::test_y", 5.0, 6.0))  # type: ignore[arg-type]
    lines: list[str] = []
    t.report(lines.append, tmp_path / "timeline.json")
    assert lines == [] and not (tmp_path / "timeline.json").exists()
