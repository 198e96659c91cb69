"""Shared output helpers for benchmarks and evaluations: the command line, Markdown tables, JSON files.

Every `python -m eval <task>` writes `<out>/<task>.json` (the payload: `task`, `command`, `schema`, `device`,
`methods`, `settings`, `rows`, ...), `<out>/<task>.md` (a Markdown table headed by the exact command) and its
plot `<out>/<task>.png`.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

SCHEMA_VERSION = 1


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run: `python -m <module> <args>`."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "-m", module, *map(shlex.quote, args)])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """columns: (key, header, format) triples; a missing or None value prints as '—'."""
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---:" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "—" for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pivot(rows: Sequence[dict[str, Any]], index: str, column: str, value: str) -> list[dict[str, Any]]:
    """Long rows -> one row per distinct `index` value with one key per distinct `column` value (order kept)."""
    table: dict[Any, dict[str, Any]] = {}
    for row in rows:
        table.setdefault(row[index], {index: row[index]})[row[column]] = row[value]
    return list(table.values())


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def write_markdown(path: str | Path, command: str, body: str) -> Path:
    """A Markdown file headed by the exact command that produced it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"`{command}`\n\n{body.strip()}\n")
    return path


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
