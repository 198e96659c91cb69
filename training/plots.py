"""A picture of every run: train and validation loss, recall on synthetic rows, and each memory signal, by step.

Drawn from the `metrics.jsonl` records at the end of a run (main process) into `metrics.png` beside them,
so an offline run with no tracker still gets its curves. Matplotlib's object API with the Agg canvas: no
display, and no pyplot state in the trainer's process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

LOSSES = ("train/loss", "val/loss")
MEMORY_PREFIX = "memory/"
RECALL = "train/answer_accuracy"
PROBE = ("probe/passkey", "probe/passkey_closed")  # training/probe.py: writes open, and closed (the control)


def plot_metrics(records: list[dict[str, Any]], path: str | Path, title: str | None = None) -> list[str]:
    """Draw `records` (metrics.jsonl lines: {"step": N, name: value, ...}) as a PNG at `path`: one panel for
    the losses, one for the passkey probe and one for the synthetic answers' accuracy if logged, one per
    `memory/*` signal. Returns the names of the series drawn, panel by panel."""
    memory = sorted({name for record in records for name in record if name.startswith(MEMORY_PREFIX)})
    panels = [("loss (nats/token)", list(LOSSES))] + [(name[len(MEMORY_PREFIX) :], [name]) for name in memory]
    if any(RECALL in record for record in records):  # runs with synthetic rows mixed in
        panels.insert(1, ("synthetic answer accuracy", [RECALL]))
    if any(PROBE[0] in record for record in records):  # runs with a passkey probe
        panels.insert(1, ("passkey probe accuracy", list(PROBE)))
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.0 * rows), layout="constrained")
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    drawn = []
    for ax, (heading, names) in zip(axes, panels):
        for name in names:
            # null: a non-finite value (training/tracking.py)
            points = [
                (r["step"], r[name]) for r in records if r.get(name) is not None and math.isfinite(r[name])
            ]
            if not points:
                continue
            steps, values = zip(*points)
            # Validation and probes are a few points (every eval_every / probe.every steps): markers show each.
            sparse = name.startswith(("val/", "probe/"))
            ax.plot(steps, values, marker="o" if sparse else None, markersize=3, label=name)
            drawn.append(name)
        ax.set_title(heading, fontsize=10)
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=8)
    for ax in axes[len(panels) :]:  # the empty cells of the last row
        ax.set_axis_off()
    fig.supxlabel("step", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=100)
    return drawn
