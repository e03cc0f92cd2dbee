"""The report: a table of ratios to the ceiling, the targets, JSON, a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.workloads import BY_NAME, SLEEP_IDEAL, WORKLOADS

Results = dict[tuple[str, str], dict[str, Any]]


def index(results: list[dict[str, Any]]) -> Results:
    return {(r["system"], r["workload"]): r for r in results}


def ceiling_rate(found: Results, workload: str) -> float | None:
    ref = BY_NAME[workload].ceiling or workload
    if ref == "ideal":
        return SLEEP_IDEAL
    entry = found.get(("ceiling", ref))
    if entry and entry.get("rate"):
        return float(entry["rate"]["median"])
    return None


def ratio_to_ceiling(found: Results, system: str, workload: str) -> float | None:
    """A system's median over the ceiling's; for sends, the median of the
    ratios to plain redis-py sends interleaved with them (see driver.py)."""
    entry = found.get((system, workload))
    if not entry or not entry.get("rate"):
        return None
    if entry.get("paired_ratio"):
        return float(entry["paired_ratio"]["median"])
    ceiling = ceiling_rate(found, workload)
    return entry["rate"]["median"] / ceiling if ceiling else None


def _rate(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def cell(found: Results, system: str, workload: str, detail: bool = False) -> str:
    entry = found.get((system, workload))
    if entry is None:
        return "–"
    if entry["status"] == "n/a":
        return "n/a"
    if entry["status"] == "failed" and not entry["runs"]:
        return "failed"
    if entry["unit"] == "ms":
        p50, p99 = entry["p50"], entry["p99"]
        text = f"{p50['median']:.2f} / {p99['median']:.2f}"
        if detail:
            text += f" (p99 {p99['min']:.2f}–{p99['max']:.2f})"
        return text
    if entry["unit"] == "MiB":
        return f"{entry['peak']['median']:.0f} MiB"
    rate = entry["rate"]
    text = f"{_rate(rate['median'])}/s"
    if detail:
        text += f" [{_rate(rate['min'])}–{_rate(rate['max'])}]"
    ratio = ratio_to_ceiling(found, system, workload)
    if ratio is not None and system != "ceiling":
        text += f" ({ratio:.2f}×)"
    if any(r.get("partial") for r in entry["runs"]):
        text += "*"
    return text


def table(found: Results, systems: list[str], detail: bool = False) -> str:
    workloads = [w for w in WORKLOADS if any((s, w.name) in found for s in systems)]
    lines = [
        "| workload | " + " | ".join(systems) + " |",
        "| --- | " + " | ".join("---" for _ in systems) + " |",
    ]
    for w in workloads:
        cells = [cell(found, s, w.name, detail) for s in systems]
        lines.append(f"| {w.title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(found: Results, systems: list[str]) -> str:
    """Why some cells are empty, and what each queue ran with.

    A queue that could not run any workload for one reason (a queue
    without Redis Cluster support on ``--target cluster``) gets one line.
    """
    lines = []
    for system in systems:
        entries = sorted(
            ((w, e) for (s, w), e in found.items() if s == system),
            key=lambda item: list(BY_NAME).index(item[0]),
        )
        whole = {(e["status"], e["reason"]) for _, e in entries}
        if len(whole) == 1 and entries and entries[0][1]["status"] != "ok":
            status, reason = whole.pop()
            if reason:
                lines.append(f"- {system}, every workload: {status}: {reason}")
            continue
        for workload, entry in entries:
            if entry["status"] != "ok" and entry["reason"]:
                lines.append(
                    f"- {system}, {BY_NAME[workload].title}: {entry['status']}: "
                    f"{entry['reason']}"
                )
    return "\n".join(dict.fromkeys(lines))


def settings_list(found: Results, systems: list[str]) -> str:
    lines = []
    for system in systems:
        parts = []
        for w in WORKLOADS:
            entry = found.get((system, w.name))
            if (
                entry
                and entry["settings"]
                and w.kind in ("process", "latency", "memory")
            ):
                parts.append(f"{w.name}: `{entry['settings']}`")
        if parts:
            lines.append(f"- **{system}**: " + "; ".join(parts))
    return "\n".join(lines)


def _median(
    found: Results, system: str, workload: str, key: str = "rate"
) -> float | None:
    entry = found.get((system, workload))
    if not entry or not entry.get(key):
        return None
    return float(entry[key]["median"])


def targets(found: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for taskq's targets."""
    rows: list[tuple[str, str, bool | None]] = []

    def ratio(name: str, value: float | None, ref: float | None, goal: float) -> None:
        if value is None or not ref:
            rows.append((name, "not measured", None))
            return
        rows.append((name, f"{value / ref:.2f}×", value / ref >= goal))

    ratio(
        "no-op processing, 1 process >= 0.40× the ceiling's read-and-ack",
        max(
            filter(
                None,
                [
                    _median(found, "taskq", "noop_tuned"),
                    _median(found, "taskq", "noop_default"),
                ],
            ),
            default=None,
        ),
        _median(found, "ceiling", "noop_tuned"),
        0.40,
    )
    peers = [s for s, _ in found if s not in ("taskq", "ceiling")]
    for label, ours, theirs in (
        ("1 process", ["incr_default", "incr_tuned"], ["incr_default", "incr_tuned"]),
        ("2 processes", ["incr_2proc"], ["incr_2proc"]),
    ):
        best_peer = max(
            (v for p in peers for w in theirs if (v := _median(found, p, w))),
            default=None,
        )
        mine = max(
            filter(None, (_median(found, "taskq", w) for w in ours)), default=None
        )
        ratio(f"INCR processing, {label} >= 2× the fastest peer", mine, best_peer, 2.0)
    for workload, name, goal in (
        ("enqueue_batch", "batched enqueue >= 0.60× pipelined XADD", 0.60),
        ("enqueue", "single sends >= 0.80× one XADD per call", 0.80),
    ):
        paired = ratio_to_ceiling(found, "taskq", workload)
        ratio(name, paired, 1.0 if paired is not None else None, goal)
    p50 = _median(found, "taskq", "latency", "p50")
    p99 = _median(found, "taskq", "latency", "p99")
    rows.append(
        (
            "idle latency p50 < 1 ms",
            "not measured" if p50 is None else f"{p50:.2f} ms",
            None if p50 is None else p50 < 1.0,
        )
    )
    rows.append(
        (
            "idle latency p99 < 3 ms",
            "not measured" if p99 is None else f"{p99:.2f} ms",
            None if p99 is None else p99 < 3.0,
        )
    )
    ratio(
        "2 processes >= 1.6× one (no-op)",
        _median(found, "taskq", "noop_2proc"),
        _median(found, "taskq", "noop_tuned"),
        1.6,
    )
    ratio(
        "2 processes >= 1.6× one (INCR)",
        _median(found, "taskq", "incr_2proc"),
        _median(found, "taskq", "incr_tuned"),
        1.6,
    )
    return rows


def targets_table(found: Results) -> str:
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    for name, measured, met in targets(found):
        mark = "–" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {name} | {measured} | {mark} |")
    return "\n".join(lines)


def memory_text(found: Results) -> str:
    entry = found.get(("taskq", "memory"))
    if not entry or not entry["runs"]:
        return ""
    run = entry["runs"][0]
    points = ", ".join(f"{k}: {v:.0f}" for k, v in run["rss_mib_at"].items())
    return (
        f"taskq worker RSS (MiB) after the given share of {run['n']:,} no-op tasks: "
        f"{points}."
    )


def markdown(data: dict[str, Any]) -> str:
    found = index(data["results"])
    systems = data["meta"]["systems"]
    meta = data["meta"]
    target = meta["target"]
    if meta.get("target_name"):
        target = f"target `{meta['target_name']}`: {target}"
    parts = [
        f"Measured {meta['date']} on {meta['machine']}; {target}; "
        f"median of {meta['runs']} runs; load average before/after: "
        f"{meta['load_before']} / {meta['load_after']}; the suite took "
        f"{meta['seconds']:.0f} s.",
        "",
        "Rates are tasks per second, median of the runs, with the ratio to the "
        "ceiling in brackets. For the two send rows that ratio is the median of "
        "paired runs, each queue's sends interleaved slice by slice with the same "
        "sends through plain redis-py, so it can differ from the quotient of the "
        "columns. Latency cells are p50 / p99 in milliseconds. `*` marks a figure "
        "from runs stopped before their backlog was done (the rate is over the "
        "part that was).",
        "",
        table(found, systems),
        "",
        "taskq's targets, from this run:",
        "",
        targets_table(found),
        "",
        memory_text(found),
        "",
        "Minimum and maximum of the runs:",
        "",
        table(found, systems, detail=True),
        "",
        "What each worker ran with:",
        "",
        settings_list(found, systems),
        "",
        "Not measured, or failed:",
        "",
        notes(found, systems) or "- nothing",
    ]
    return "\n".join(parts) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    found = index(data["results"])
    systems = data["meta"]["systems"]
    shown = [
        w
        for w in WORKLOADS
        if w.kind in ("enqueue", "process")
        and any(found.get((s, w.name), {}).get("rate") for s in systems)
    ]
    columns = 3
    rows = -(-(len(shown) + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(15, 3.2 * rows), squeeze=False)
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(systems)}
    for ax, w in zip(axes.flat, shown, strict=False):
        names, medians, lows, highs = [], [], [], []
        ref = ceiling_rate(found, w.name)
        others = [
            found[(s, w.name)]["rate"]["median"]
            for s in systems
            if s != "ceiling" and found.get((s, w.name), {}).get("rate")
        ]
        # A pipelined ceiling far beyond every queue would flatten their
        # bars: it is named in the title instead.
        off_scale = bool(ref and others and ref > 5 * max(others))
        title = w.title
        if off_scale and ref:
            title += f"\n(ceiling {_rate(ref)}/s, off the scale)"
        for s in systems:
            entry = found.get((s, w.name))
            if off_scale and s == "ceiling":
                continue
            if entry and entry.get("rate"):
                r = entry["rate"]
                names.append(s)
                medians.append(r["median"])
                lows.append(r["median"] - r["min"])
                highs.append(r["max"] - r["median"])
        ypos = list(range(len(names)))
        ax.barh(
            ypos,
            medians,
            xerr=[lows, highs],
            color=[colors[n] for n in names],
            capsize=2,
        )
        ax.set_yticks(ypos, names)
        ax.invert_yaxis()
        # Linear, with each figure written out: on a log axis the bars'
        # lengths mislead, and ranges here span several hundred times.
        top = max(m + h for m, h in zip(medians, highs, strict=True))
        if ref and not off_scale:
            ax.axvline(ref, color="grey", linestyle="--", linewidth=1)
            top = max(top, ref)
        ax.set_xlim(0, top * 1.45)
        for y, name, value, high in zip(ypos, names, medians, highs, strict=True):
            ratio = ratio_to_ceiling(found, name, w.name)
            label = f" {_rate(value)}/s"
            if ratio is not None and name != "ceiling":
                label += f" ({ratio:.2f}×)"
            ax.text(value + high, y, label, va="center", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("tasks/s")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _rate(x)))
        ax.xaxis.set_major_locator(MaxNLocator(5))
    # Latency: p50 and p99 side by side.
    used = len(shown)
    names, p50s, p99s = [], [], []
    for s in systems:
        entry = found.get((s, "latency"))
        if entry and entry.get("p50"):
            names.append(s)
            p50s.append(entry["p50"]["median"])
            p99s.append(entry["p99"]["median"])
    if names:
        ax = axes.flat[used]
        ypos = list(range(len(names)))
        ax.barh([y - 0.2 for y in ypos], p50s, height=0.4, label="p50")
        ax.barh([y + 0.2 for y in ypos], p99s, height=0.4, label="p99")
        ax.set_yticks(ypos, names)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_title("idle latency, send to handler start", fontsize=10)
        ax.legend(fontsize=8)
        used += 1
    for extra in list(axes.flat)[used:]:
        extra.axis("off")
    where = data["meta"].get("target_name")
    fig.suptitle(
        "taskq beside the ceiling (dashed line) and other queues, "
        + data["meta"]["date"]
        + (f", target {where}" if where and where != "local" else ""),
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(data: dict[str, Any], folder: Path) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "results.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path = folder / "results.md"
    md_path.write_text(markdown(data))
    png_path = folder / "throughput.png"
    plot(data, png_path)
    return json_path, md_path, png_path


if __name__ == "__main__":
    # python -m benchmarks.report DIR: draw the table and plot again from
    # DIR/results.json.
    import sys

    folder = Path(sys.argv[1])
    for path in write(json.loads((folder / "results.json").read_text()), folder):
        print("Wrote", path)
