"""Figures, targets and their rendering as a Markdown table and a JSON document.

A figure holds one value per repetition (None where that repetition failed); its headline
is the median. A ratio target pairs two figures repetition by repetition (the two were
measured back to back) and reports the median of the per-repetition ratios.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bench.profile import render as render_profiles

Comparison = Literal[">=", "<=", "<"]


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Figure:
    """One measured quantity of one scenario, one value per repetition."""

    key: str
    scenario: int
    label: str
    unit: str
    runs: list[float | None] = field(default_factory=list)
    p50_ms: list[float | None] = field(default_factory=list)
    p99_ms: list[float | None] = field(default_factory=list)
    gen_cpu_percent: list[float | None] = field(default_factory=list)
    server_cpu_percent: list[float | None] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        value: float | None,
        *,
        p50_ms: float | None = None,
        p99_ms: float | None = None,
        gen_cpu: float | None = None,
        server_cpu: float | None = None,
    ) -> None:
        self.runs.append(value)
        self.p50_ms.append(p50_ms)
        self.p99_ms.append(p99_ms)
        self.gen_cpu_percent.append(gen_cpu)
        self.server_cpu_percent.append(server_cpu)

    def fail(self, reason: str) -> None:
        """Mark the figure n/a (or partly so) with a reason shown in the table."""
        self.note = f"{self.note}; {reason}" if self.note and reason not in self.note else reason

    @property
    def median(self) -> float | None:
        return median(self.runs)


@dataclass
class Target:
    """A goal from the issue: a ratio between two figures, or a bound on one figure."""

    key: str
    label: str
    figure: str
    threshold: float | None  # None: shown for information, no pass/fail
    comparison: Comparison = ">="
    versus: str | None = None  # ratio target: figure / versus, per repetition
    versus_label: str = ""
    unit: str = ""
    runs: list[float | None] = field(default_factory=list)
    note: str = ""

    @property
    def value(self) -> float | None:
        return median(self.runs)

    @property
    def passed(self) -> bool | None:
        value = self.value
        if value is None or self.threshold is None:
            return None
        if self.comparison == ">=":
            return value >= self.threshold
        if self.comparison == "<=":
            return value <= self.threshold
        return value < self.threshold


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # Scenario-specific data (the capacity ramps, the scaling table) and their Markdown.
    data: dict[str, Any] = field(default_factory=dict)
    tables: list[tuple[str, str]] = field(default_factory=list)

    def figure(self, key: str, scenario: int, label: str, unit: str) -> Figure:
        if key not in self.figures:
            self.figures[key] = Figure(key, scenario, label, unit)
        return self.figures[key]

    def target(
        self,
        key: str,
        label: str,
        figure: str,
        threshold: float | None,
        *,
        comparison: Comparison = ">=",
        versus: str | None = None,
        versus_label: str = "",
    ) -> Target:
        if key not in self.targets:
            self.targets[key] = Target(
                key, label, figure, threshold, comparison, versus, versus_label or (versus or "")
            )
        return self.targets[key]

    def settle_targets(self) -> None:
        """Fill each target's per-repetition values from its figures."""
        for target in self.targets.values():
            fig = self.figures.get(target.figure)
            if fig is None:
                target.note = target.note or "not measured"
                continue
            if target.versus is None:
                target.unit = fig.unit
                target.runs = list(fig.runs)
                continue
            other = self.figures.get(target.versus)
            if other is None:
                target.note = target.note or f"{target.versus} not measured"
                continue
            target.runs = [
                a / b if a is not None and b else None
                for a, b in zip(fig.runs, other.runs, strict=False)
            ]

    def to_json(self) -> dict[str, Any]:
        self.settle_targets()
        return {
            "meta": self.meta,
            "figures": {k: {**asdict(f), "median": f.median} for k, f in self.figures.items()},
            "targets": {
                k: {**asdict(t), "value": t.value, "passed": t.passed}
                for k, t in self.targets.items()
            },
            "memory": self.memory,
            "profiles": self.profiles,
            "data": self.data,
            "errors": self.errors,
        }


# --- rendering --------------------------------------------------------------------------


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit in ("x", "%"):
        return f"{value:.2f}{unit}" if unit == "x" else f"{value:.1f}%"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def _runs(values: list[float | None]) -> str:
    if len(values) <= 1:
        return ""
    return " / ".join(_num(v) for v in values)


def _target_cells(target: Target) -> tuple[str, str, str]:
    if target.threshold is None:
        bound = f"(info) / {target.versus_label}" if target.versus else "(info)"
    elif target.versus:
        bound = f"{target.comparison} {target.threshold:g}x {target.versus_label}"
    else:
        bound = f"{target.comparison} {_num(target.threshold, target.unit)}"
    unit = "x" if target.versus else target.unit
    value = _num(target.value, unit)
    if target.versus and len(target.runs) > 1:
        value += f" ({' / '.join(_num(v, 'x') for v in target.runs)})"
    if target.threshold is None:
        verdict = "" if target.value is not None else "n/a"
    else:
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[target.passed]
    return f"{target.label}: {bound}", value, verdict


def render_markdown(results: Results) -> str:
    results.settle_targets()
    by_figure: dict[str, list[Target]] = {}
    for target in results.targets.values():
        by_figure.setdefault(target.figure, []).append(target)

    lines = [
        "| # | Scenario | Median | Runs | p50 ms | p99 ms | Load-gen CPU | Server CPU "
        "| Target | Ratio / value | Pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fig in sorted(results.figures.values(), key=lambda f: f.scenario):
        label = fig.label + (f" *({fig.note})*" if fig.note else "")
        targets = by_figure.get(fig.key, [])
        cells = [_target_cells(t) for t in targets] or [("", "", "")]
        lines.append(
            "| "
            + " | ".join(
                [
                    str(fig.scenario),
                    label,
                    _num(fig.median, fig.unit),
                    _runs(fig.runs),
                    _num(median(fig.p50_ms)) if any(v is not None for v in fig.p50_ms) else "",
                    _num(median(fig.p99_ms)) if any(v is not None for v in fig.p99_ms) else "",
                    _num(median(fig.gen_cpu_percent), "%")
                    if any(v is not None for v in fig.gen_cpu_percent)
                    else "",
                    _num(median(fig.server_cpu_percent), "%")
                    if any(v is not None for v in fig.server_cpu_percent)
                    else "",
                    "<br>".join(c[0] for c in cells),
                    "<br>".join(c[1] for c in cells),
                    "<br>".join(c[2] for c in cells),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def render_memory(results: Results) -> str:
    if not results.memory:
        return ""
    lines = [
        "| Process | Peak RSS MiB | Warm RSS MiB | End RSS MiB | Growth warm->end "
        "| Growth from first warm-up |",
        "|---|---|---|---|---|---|",
    ]
    for name, mem in results.memory.items():
        growth, from_first = mem.get("growth_percent"), mem.get("growth_from_first_warm_percent")
        lines.append(
            f"| {name} | {_num(mem.get('peak_mib'))} | {_num(mem.get('warm_mib'))} "
            f"| {_num(mem.get('end_mib'))} | {_num(growth, '%')} | {_num(from_first, '%')} |"
        )
    return "\n".join(lines)


def render_report(results: Results) -> str:
    meta = results.meta
    parts = [
        f"# Benchmark {meta.get('date', '')}",
        "",
        f"Mode: {meta.get('mode', '')}; {meta.get('repetitions', '')} repetition(s), "
        f"{meta.get('duration_s', '')} s per figure; medians, ratios paired per repetition. "
        f"Machine: {meta.get('machine', '')}.",
        "",
        render_markdown(results),
    ]
    for title, table in results.tables:
        parts += ["", title, "", table]
    memory = render_memory(results)
    if memory:
        parts += ["", "Memory (scenario 7; RSS of the whole process tree):", "", memory]
    if results.profiles:
        parts += [
            "",
            "Profiles (extra unmeasured repetitions, py-spy):",
            render_profiles(results.profiles),
        ]
    if meta.get("notes"):
        parts += ["", "Notes:", "", *(f"- {n}" for n in meta["notes"])]
    if results.errors:
        parts += ["", "Errors:", "", *(f"- {e}" for e in results.errors)]
    return "\n".join(parts) + "\n"
