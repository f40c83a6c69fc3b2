"""The capacity ramp as a picture: offered vs accepted vs drained over time, backlog beside.

One panel per ramp of scenario 8, from the per-second samples in the results' JSON
(``data.capacity.<ramp>.samples``). Written as ``bench/results/<date>-capacity.png``.
The soak (``bench/soak.py``) is drawn the same way into ``<date>-soak.png``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def _rates(samples: list[dict[str, Any]], field: str) -> tuple[list[float], list[float]]:
    """Per-interval rate of a counter: (midpoint times, events/s)."""
    times: list[float] = []
    rates: list[float] = []
    for a, b in itertools.pairwise(samples):
        dt = b["t"] - a["t"]
        if dt > 0:
            times.append((a["t"] + b["t"]) / 2)
            rates.append((b[field] - a[field]) / dt)
    return times, rates


def plot_capacity(capacity: dict[str, Any], path: Path, title: str) -> Path | None:
    """Draw every ramp with samples into `path` (PNG); None if there is nothing to draw."""
    ramps = {key: ramp for key, ramp in capacity.items() if len(ramp.get("samples", [])) > 2}
    if not ramps:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(ramps), 1, figsize=(11, 3.3 * len(ramps)), squeeze=False)
    for ax, ramp in zip(axes[:, 0], ramps.values(), strict=True):
        t0 = ramp["samples"][0]["t"]
        samples = [{**s, "t": s["t"] - t0} for s in ramp["samples"]]
        ts = [s["t"] for s in samples]
        ax.step(ts, [s["offered"] for s in samples], where="post", label="offered", color="0.4")
        for field, label, color in (
            ("added", "accepted", "tab:blue"),
            ("acked", "drained", "tab:green"),
        ):
            x, y = _rates(samples, field)
            ax.plot(x, y, label=label, color=color, linewidth=1)
        ax.set_ylabel("events/s")
        ax.set_ylim(bottom=0)
        sustained = ramp.get("sustained")
        shown = f"{sustained:,} events/s" if sustained else "none"
        ax.set_title(f"{ramp['ramp']['label']} - sustained: {shown}", fontsize=10)
        ax.grid(alpha=0.3)
        backlog = ax.twinx()
        backlog.fill_between(ts, [s["backlog"] for s in samples], color="tab:red", alpha=0.15,
                             step="post", label="backlog (lag + pending)")  # fmt: skip
        backlog.set_ylabel("backlog, events", color="tab:red")
        backlog.set_ylim(bottom=0)
        lines, labels = ax.get_legend_handles_labels()
        more, more_labels = backlog.get_legend_handles_labels()
        ax.legend(lines + more, labels + more_labels, loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("seconds since the ramp started")
    return _save(plt, fig, path, title)


def _pyplot() -> Any:
    import matplotlib as mpl

    mpl.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_MIB = 1024 * 1024
# The soak's panels: (title, unit divisor, [(sample field, label)]); p99 on a log scale, as the
# probe's seconds after a kill would flatten the HTTP milliseconds.
_SOAK_PANELS: tuple[tuple[str, float, tuple[tuple[str, str], ...]], ...] = (
    ("RSS, MiB", _MIB, (("producer_rss", "producer"), ("survivor_rss", "worker (survivor)"),
                        ("victim_rss", "worker (killed)"), ("redis_rss", "Redis"))),
    ("Redis memory, MiB", _MIB, (("used_memory", "used_memory"),
                                 ("series_bytes", "time series (MEMORY USAGE)"))),
    ("backlog, events", 1, (("backlog", "lag + pending"),)),
    ("p99, ms (log)", 1, (("batch_p99_ms", "HTTP, batches"), ("single_p99_ms", "HTTP, single"),
                    ("e2e_p99_ms", "e2e probe"))),
)  # fmt: skip


def plot_soak(soak: dict[str, Any], path: Path, title: str) -> Path | None:
    """The soak's samples (``samples``), one panel per kind, kills as dotted lines; None with
    fewer than 3 samples."""
    samples = soak.get("samples", [])
    if len(samples) < 3:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(_SOAK_PANELS), 1, figsize=(11, 2.6 * len(_SOAK_PANELS)),
                             sharex=True, squeeze=False)  # fmt: skip
    ts = [s["t"] for s in samples]
    for ax, (label, unit, fields) in zip(axes[:, 0], _SOAK_PANELS, strict=True):
        for field, name in fields:
            ys = [None if s[field] is None else s[field] / unit for s in samples]
            ax.plot(ts, ys, label=name, linewidth=1)
        for kill in soak.get("kills", []):
            ax.axvline(kill["t"], color="0.5", linestyle=":", linewidth=0.8)
        ax.set_ylabel(label, fontsize=9)
        if label.endswith("(log)"):
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("seconds since the load started (dotted: a worker SIGKILLed)")
    return _save(plt, fig, path, title)
