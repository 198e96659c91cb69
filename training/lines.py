"""Lines of work in one output folder: resuming from an older checkpoint starts a branch, never overwrites.

The folder's own `step_N/` are the main line. Resuming from a checkpoint older than the newest of its line,
or from another run's checkpoint into a folder that already holds checkpoints, starts a branch: a run folder
of its own inside the output folder, `branch-<n>-from-step_<k>/`, which gets that line's checkpoints,
metrics.jsonl, export and curves. Each line prunes only its own checkpoints, so neither line can delete
the other's work, and step numbers of the two lines never mix in one folder.

`lines.json` in the output folder records every line's origin (the checkpoint it started from) and the
active line. `resume: auto` continues the active line; naming again the checkpoint a line started from
continues that line (so rerunning the same command after a stop resumes the branch, not the other line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.checkpoint import list_checkpoints, step_of

LINES_FILE = "lines.json"
MAIN = "."  # the output folder itself


@dataclass
class ResumePlan:
    run_dir: Path  # where this run's checkpoints, metrics and export go: the output folder or a branch
    line: str  # MAIN or the branch folder's name
    checkpoint: Path | None  # what to load first; None: a fresh run
    origin: str | None  # the checkpoint the line started from (recorded in lines.json)
    walk_back: bool  # an unreadable checkpoint may be skipped for the line's previous one
    note: str | None  # a line to print (a branch started or continued)


def read_lines(output_dir: Path) -> dict[str, Any]:
    path = output_dir / LINES_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return {"active": MAIN, "lines": {MAIN: {"from": None}}}


def plan_resume(output_dir: str | Path, resume: str) -> ResumePlan:
    """Decide where the run continues. `resume`: auto | none | a step_N path. Reads only."""
    top = Path(output_dir)
    lines = read_lines(top)
    if resume == "none":
        return ResumePlan(top, MAIN, None, None, False, None)
    if resume == "auto":
        line = lines["active"]
        origin = lines["lines"].get(line, {}).get("from")
        newest = _newest(top / line)
        # A branch killed before its first save continues from where it started.
        start = newest or (Path(origin) if origin and Path(origin).is_dir() else None)
        return ResumePlan(top / line, line, start, origin, newest is not None, None)

    source = Path(resume).resolve()
    for line, info in lines["lines"].items():
        if info.get("from") == str(source):  # the same command again: continue the line it started
            newest = _newest(top / line)
            note = None
            if line != MAIN and newest is not None:
                note = (
                    f"resume={resume}: continuing {line}, the branch started from it (newest {newest.name})"
                )
            return ResumePlan(top / line, line, newest or source, str(source), newest is not None, note)

    own_lines = {(top / line).resolve(): line for line in lines["lines"]}
    line = own_lines.get(source.parent)
    if line is not None:
        newest = _newest(top / line)
        if newest is None or step_of(source) >= step_of(newest):
            return ResumePlan(top / line, line, source, lines["lines"][line].get("from"), False, None)
    elif not any(list_checkpoints(top / name) for name in lines["lines"]):
        return ResumePlan(top, MAIN, source, str(source), False, None)  # an empty folder: its main line

    name = f"branch-{len(lines['lines'])}-from-{source.name}"
    newest = max((c for name in lines["lines"] for c in list_checkpoints(top / name)), key=step_of)
    note = (
        f"resume={resume} is not the newest checkpoint here ({newest}): starting the branch {top / name}; "
        "both lines are kept"
    )
    return ResumePlan(top / name, name, source, str(source), False, note)


def record_line(output_dir: str | Path, plan: ResumePlan) -> None:
    """Main process: make the plan's line the active one and record its origin."""
    top = Path(output_dir)
    lines = read_lines(top)
    lines["lines"].setdefault(plan.line, {"from": plan.origin})
    if plan.line == MAIN and plan.origin is not None:
        lines["lines"][MAIN]["from"] = plan.origin
    lines["active"] = plan.line
    tmp = top / f".{LINES_FILE}.tmp"
    tmp.write_text(json.dumps(lines, indent=2))
    tmp.replace(top / LINES_FILE)  # atomic: a kill never leaves half a lines.json


def _newest(line_dir: Path) -> Path | None:
    found = list_checkpoints(line_dir)
    return found[-1] if found else None
