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


def kv_bytes_table(rows: Sequence[dict[str, Any]], methods: Sequence[Any]) -> str:
    """Per method, the most KV bytes (KiB) it held over every row: after a prefill, after the last token fed,
    and at the peak of a prefill (rows carry `kv_bytes_after_prefill`, `..._after_decode`, `..._peak_prefill`)."""
    keys = ("kv_bytes_after_prefill", "kv_bytes_after_decode", "kv_bytes_peak_prefill")
    table = []
    for method in methods:
        mine = [row for row in rows if row["label"] == method.label]
        held = {k: max(row[k] for row in mine) / 1024 for k in keys} if mine else {}
        table.append({"label": method.label, **held})
    columns = [("label", "method", "{}"), (keys[0], "after prefill", "{:,.1f}")]
    columns += [(keys[1], "after decoding", "{:,.1f}"), (keys[2], "peak in prefill", "{:,.1f}")]
    return "KV cache KiB held (real tensor bytes, largest over the examples):\n\n" + markdown_table(
        table, columns
    )


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
