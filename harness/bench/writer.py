"""The benchmark report: one JSON record per benchmark, and ``benchmarks.md`` rendered from all of
them, so running one benchmark by name refreshes its section and keeps the others.

A record is ``{"benchmark", "command", "date", "seconds", "machine", "result"}``; ``result`` is
what the benchmark returned (see ``harness.bench.measure`` for the keys rendered specially:
``figures``, ``checks``, ``notes``). A result without ``checks`` (a benchmark that states no
target) is still shown, with its scalar values, and the report says it has no target.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.bench.machine import NO_GPU

__all__ = ["REPORT", "write_record", "load_records", "render_markdown"]

REPORT = "benchmarks.md"
_SPECIAL = ("figures", "checks", "notes")
_MET = {True: "yes", False: "**no**", None: "not measured"}
_MACHINE_ORDER = ("cpu", "cores", "usable_cores", "torch_threads", "memory_gib", "gpu", "torch", "python", "platform", "git_commit", "git_dirty")


def write_record(out_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write ``<out_dir>/<benchmark>.json`` and re-render ``<out_dir>/benchmarks.md`` from every record there.

    Args:
        out_dir: the benchmarks folder.
        record: one benchmark's record.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{record['benchmark']}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out_dir / REPORT).write_text(render_markdown(load_records(out_dir)))
    return path


def load_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every benchmark record in ``out_dir``, by name (files that are not records are skipped)."""
    records = []
    for path in sorted(out_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and {"benchmark", "result"} <= set(record):
            records.append(record)
    return records


def render_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """``benchmarks.md``: the machine, every check with its target, then one section per benchmark.

    Args:
        records: benchmark records (as :func:`load_records` returns them).
    """
    lines = [
        "# Benchmarks",
        "",
        "Written by `harness bench` (never by hand); each `<name>.json` beside this file holds the full",
        "record. Figures are medians of their repeats, with min and max; each check is measured in one",
        "process and compared with its target (source: `issue 14`, the suite's `earlier suite` target, or",
        "`proposed` where no issue set one).",
        "",
    ]
    lines += _machines(records)
    lines += ["## Targets", "", "| benchmark | check | value | target | met | source |", "|---|---|---|---|---|---|"]
    for record in records:
        checks = record["result"].get("checks") if isinstance(record["result"], Mapping) else None
        if not checks:
            lines.append(f"| {record['benchmark']} | (the result states no target) | | | | |")
        for c in checks or ():
            lines.append(
                f"| {record['benchmark']} | {c['name']} | {_value(c['value'], c.get('unit', ''))} | {_target(c)}"
                f" | {_MET[c['met']]} | {c.get('source', '')} |"
            )
    lines.append("")
    for record in records:
        lines += _section(record)
    return "\n".join(lines)


def _machines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    machines = {json.dumps(r.get("machine", {}), sort_keys=True): r.get("machine", {}) for r in records}
    lines = ["## Machine", ""]
    if len(machines) > 1:
        differ = sorted({k for m in machines.values() for k in m if len({json.dumps(n.get(k)) for n in machines.values()}) > 1})
        lines += [f"The records differ in {', '.join(differ)}: the table is the first record's; each section names its own.", ""]
    first = next(iter(machines.values()), {})
    lines += ["| | |", "|---|---|", *[f"| {key} | {first[key]} |" for key in _MACHINE_ORDER if key in first], ""]
    if all(r.get("machine", {}).get("gpu", NO_GPU) == NO_GPU for r in records):
        lines += ["GPU: none was available to these runs, so this report has no GPU figure.", ""]
    return lines


def _section(record: Mapping[str, Any]) -> list[str]:
    result = record["result"]
    seconds = f", {record['seconds']:.0f} s" if isinstance(record.get("seconds"), (int, float)) else ""
    machine = record.get("machine", {})
    lines = [f"## {record['benchmark']}", "", f"`{record['command']}` ({record.get('date', '')}{seconds}; {machine.get('cpu', '')}, commit {str(machine.get('git_commit'))[:10]})", ""]
    if not isinstance(result, Mapping):
        return [*lines, f"Result: {result}", ""]
    figures = result.get("figures") or {}
    if figures:
        lines += ["| figure | median | min | max | repeats | unit |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {name} | {_fmt(f['median'])} | {_fmt(f['min'])} | {_fmt(f['max'])} | {f['repeats']} | {f['unit']} |"
            for name, f in figures.items()
        ]
        lines.append("")
    checks = result.get("checks") or []
    if checks:
        lines += ["| check | value | target | met | how |", "|---|---|---|---|---|"]
        lines += [
            f"| {c['name']} | {_value(c['value'], c.get('unit', ''))} | {_target(c)} | {_MET[c['met']]} | {c.get('note', '')} |"
            for c in checks
        ]
        lines.append("")
    else:
        lines += ["This result states no target: its values are below and in its JSON.", ""]
    lines += [f"- {note}" for note in result.get("notes") or ()]
    if result.get("notes"):
        lines.append("")
    details = list(_scalars({k: v for k, v in result.items() if k not in _SPECIAL}))
    if details:
        lines += ["| detail | value |", "|---|---|", *[f"| {key} | {_fmt(value)} |" for key, value in details], ""]
    return lines


def _scalars(values: Mapping[str, Any], prefix: str = "", depth: int = 1) -> Iterable[tuple[str, Any]]:
    """Scalar entries, mappings ``depth`` levels down flattened to dotted keys (deeper ones stay in
    the JSON only); short lists of numbers shown inline."""
    for key, value in values.items():
        if isinstance(value, Mapping):
            if depth > 0:
                yield from _scalars(value, f"{prefix}{key}.", depth - 1)
        elif isinstance(value, (str, int, float, bool)) or value is None:
            yield f"{prefix}{key}", value
        elif isinstance(value, (list, tuple)) and len(value) <= 12 and all(isinstance(v, (str, int, float)) for v in value):
            yield f"{prefix}{key}", ", ".join(_fmt(v) for v in value)


def _target(check: Mapping[str, Any]) -> str:
    return f"{check['op']} {_fmt(check['target'])} {check.get('unit', '')}".strip()


def _value(value: float | None, unit: str) -> str:
    return "not measured" if value is None else f"{_fmt(value)} {unit}".strip()


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
