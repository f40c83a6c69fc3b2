"""The capacity ramp as a picture: offered vs accepted vs drained over time, backlog beside.

One panel per ramp of scenario 8, from the per-second samples in the results' JSON
(``data.capacity.<ramp>.samples``). Written as ``bench/results/<date>-capacity.png``.
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
    import matplotlib as mpl

    mpl.use("Agg")  # no display here
    import matplotlib.pyplot as plt

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
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
