"""PNG plots of the task payloads (matplotlib, Agg backend): one figure per task, read from the JSON payload
alone, so `python -m eval plot <task>.json` redraws a figure without rerunning anything."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

STYLE = {  # method key -> (colour, marker): the same method looks the same in every figure
    "bct": ("#d62728", "o"),
    "bct-writes-closed": ("#ff9896", "o"),
    "full": ("#1f77b4", "s"),
    "sliding": ("#2ca02c", "^"),
    "sinks": ("#9467bd", "v"),
    "snapkv": ("#8c564b", "P"),
    "fastkv": ("#ff7f0e", "D"),
}


def _by_label(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["label"], []).append(row)
    return out


def _tokens(n: float) -> str:
    return f"{n / 1024:g}K" if n >= 1024 else f"{n:g}"


def _plain_log_axis(ax, contexts: list[int]) -> None:
    """Log-log axes labelled with plain numbers, context lengths as 1K, 2K, ..."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(contexts, [_tokens(n) for n in contexts])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    low, high = ax.get_ylim()
    if high / low < 20:  # less than about a decade shown: label the minor ticks too
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
    else:  # label only the 2s and 5s between the powers of ten
        ax.yaxis.set_minor_formatter(
            FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else "")
        )


def _style(rows: list[dict]) -> dict:
    colour, marker = STYLE.get(rows[0]["method"], ("#7f7f7f", "x"))
    return {"color": colour, "marker": marker, "markersize": 4, "linewidth": 1.5}


def _save(fig, path: Path, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_perplexity(payload: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, rows in _by_label(payload["rows"]).items():
        rows = [r for r in rows if r["loss"] is not None]
        centres = [(r["bucket_start"] + r["bucket_end"]) / 2 for r in rows]
        ax.plot(centres, [r["loss"] for r in rows], label=label, **_style(rows))
    ax.set_xlabel("token position (bucket centre)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"Loss by position, held-out text ({payload['settings']['windows']} windows)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_passkey(payload: dict, path: Path) -> None:
    groups = _by_label(payload["rows"])
    lengths, depths = payload["settings"]["lengths"], payload["settings"]["depths"]
    cols = min(3, len(groups))
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(3.4 * cols + 1, 2.6 * nrows + 0.6), squeeze=False, constrained_layout=True
    )
    for ax, (label, rows) in zip(axes.flat, groups.items()):
        grid = [[0.0] * len(lengths) for _ in depths]
        for r in rows:
            grid[depths.index(r["depth"])][lengths.index(r["context"])] = r["accuracy"]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lengths)), [_tokens(n) for n in lengths], fontsize=8)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=8)
        ax.set_title(label, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("context length", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("needle depth", fontsize=8)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="exact-match accuracy")
    fig.suptitle(f"Passkey retrieval ({payload['settings']['samples']} examples per cell)", fontsize=10)
    _save(fig, path, tight=False)  # constrained_layout already placed the colorbar


def plot_mqar(payload: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in _by_label(payload["rows"]).items():
        ax.plot([r["num_pairs"] for r in rows], [r["accuracy"] for r in rows], label=label, **_style(rows))
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("key-value pairs")
    ax.set_ylabel("accuracy per answer")
    ax.set_title(f"MQAR, {payload['settings']['seq_len']:,}-token sequences")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_induction(payload: dict, path: Path) -> None:
    by_label = _by_label(payload["rows"])
    first = next(iter(by_label.values()))  # every label has the same ranges, in order
    ranges = [row["range"] for row in first]
    width = 0.8 / len(by_label)
    fig, ax = plt.subplots(figsize=(6, 4))
    used: set[str] = set()
    for i, (label, rows) in enumerate(by_label.items()):
        colour = _style(rows)["color"] if rows[0]["method"] not in used else plt.cm.tab10(i % 10)
        used.add(rows[0]["method"])  # two models run the same way get different colours
        offsets = [k + (i - (len(by_label) - 1) / 2) * width for k in range(len(rows))]
        ax.bar(offsets, [r["accuracy"] for r in rows], width, label=label, color=colour)
    chance = [row["chance"] for row in first]
    ax.scatter(range(len(ranges)), chance, marker="_", s=400, color="black", label="chance", zorder=3)
    ax.set_xticks(range(len(ranges)), ranges)
    ax.set_ylim(0, 1.03)
    ax.set_xlabel("ids of the row")
    ax.set_ylabel("accuracy per answer token")
    settings = payload["settings"]
    look_back = ""
    if "segment" in settings:  # older payloads have no segment, and none before this had a lookback
        look_back = f", look-back 8-{settings.get('lookback') or settings['segment'] - 8}"
    ax.set_title(f"Induction copy, {settings['seq_len']:,}-token rows{look_back}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_speed(payload: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = (
        ("ms_per_token", "decode ms/token", 1.0),
        ("cache_bytes", "KV cache MiB", 2.0**-20),
        ("prefill_s", "prefill seconds", 1.0),
    )
    _against_context(axes, [r for r in payload["rows"] if not r.get("skipped")], panels)
    fig.suptitle(f"Speed and memory against context length, {payload['device']}", fontsize=10)
    _save(fig, path)


def _against_context(axes, rows: list[dict], panels: tuple) -> None:
    """One panel per `(key, title, scale)`: `row[key] * scale` against context length, a line per method."""
    contexts = sorted({r["context"] for r in rows})
    for ax, (key, title, scale) in zip(axes, panels):
        for label, method_rows in _by_label(rows).items():
            ax.plot(
                [r["context"] for r in method_rows],
                [r[key] * scale for r in method_rows],
                label=label,
                **_style(method_rows),
            )
        _plain_log_axis(ax, contexts)
        ax.set_xlabel("context length (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)


def plot_ttft(payload: dict, path: Path) -> None:
    """Time to first token and the most KV bytes held during the prefill, against context length."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (
        ("ttft_s", "time to first token (s)", 1.0),
        ("peak_prefill_bytes", "peak KV MiB in prefill", 2.0**-20),
    )
    _against_context(axes, payload["rows"], panels)
    fig.suptitle(f"Time to first token, {payload['device']}", fontsize=10)
    _save(fig, path)


def plot_recall(payload: dict, path: Path) -> None:
    """Accuracy against distance, one panel per (task, pairs), one line per method (writes closed dashed),
    the window and the stacked reach marked, chance and bag of values as grey levels."""
    settings = payload["settings"]
    panels: dict[tuple[str, int], list[dict]] = {}
    for row in payload["curve"]:
        panels.setdefault((row["task"], row["num_pairs"]), []).append(row)
    cols = min(2, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.2 * cols, 3.8 * nrows), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    labels = list(dict.fromkeys(row["label"] for row in payload["curve"]))
    for ax, ((task, pairs), rows) in zip(axes.flat, panels.items()):
        for (label, variant), line in _by_key(rows, ("label", "variant")).items():
            centres = [(r["lo"] + r["hi"]) / 2 for r in line]
            ax.plot(
                centres,
                [r["accuracy"] for r in line],
                color=colours[labels.index(label) % len(colours)],
                linestyle="--" if variant == "closed" else "-",
                marker="o",
                markersize=2.5,
                linewidth=1.3,
                label=label if variant == "open" else f"{label}, writes closed",
            )
        ax.axvline(settings["window"], color="0.4", linestyle=":", linewidth=1)
        ax.axvline(settings["stacked_reach"], color="0.4", linestyle=":", linewidth=1)
        ax.axhline(rows[0]["chance"], color="0.6", linewidth=0.8)
        ax.axhline(rows[0]["bag"], color="0.6", linewidth=0.8, linestyle="-.")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("distance to the recalled token (W and L·(W+C) dotted)")
        ax.set_ylabel("accuracy per answer")
        ax.set_title(
            f"{task}, {pairs} pair{'s' if pairs > 1 else ''} (grey: chance, bag of values)", fontsize=9
        )
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    _save(fig, path)


def _by_key(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return out


PLOTS = {
    "perplexity": plot_perplexity,
    "passkey": plot_passkey,
    "mqar": plot_mqar,
    "induction": plot_induction,
    "speed": plot_speed,
    "ttft": plot_ttft,
    "recall": plot_recall,
    "recall-study": plot_recall,
}


def plot_payload(payload: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PLOTS[payload["task"]](payload, path)
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m eval plot FILE.json [...]`: redraw each payload's PNG next to it."""
    parser = argparse.ArgumentParser(prog="python -m eval plot", description=main.__doc__)
    parser.add_argument("payloads", nargs="+", metavar="FILE.json", help="a task's JSON payload")
    for name in parser.parse_args(argv).payloads:
        payload = json.loads(Path(name).read_text())
        print(plot_payload(payload, Path(name).with_suffix(".png")))
