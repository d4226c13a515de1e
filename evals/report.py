"""Writing a benchmark's outputs (results.json, summary.md, a PNG plot), and `python -m evals report`.

`python -m evals report RUN_DIR [RUN_DIR...]` prints runs side by side, one column each: first how
each run's numbers were made (its `meta.provenance` record, evals/results.py), then every number of
its results.json. Numbers made differently (any of `COMPARED_FIELDS`: sampling, frames, pixel budget,
cache policy, judge, baseline, seed, benchmark) are refused with one line naming the fields, unless
`--allow-differences`, which prints them with those fields marked. A run folder from before runs
recorded their provenance is refused the same way, saying so.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

from core.cli_args import path_arg
from core.errors import ConfigError
from core.paths import make_output_folder, read_text_file
from evals.results import COMPARED_FIELDS, write_json

log = logging.getLogger(__name__)


def write_outputs(
    out: Path, results: dict, markdown: str, plot: Callable[[Path], None] | None = None
) -> None:
    make_output_folder(out, "the output folder (--out)")
    write_json(out / "results.json", results)
    (out / "summary.md").write_text(markdown)
    if plot is not None:
        try:
            plot(out)
        except ImportError:
            log.warning("matplotlib is not installed; no plot (pip install 'streamvlm[eval]')")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bar_plot(
    path: Path, labels: list[str], values: list[float], *, title: str, ylabel: str, line: float | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(labels) + 2), 3.5))
    ax.bar(range(len(values)), values, color="#4472c4")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    if line is not None:
        ax.axhline(line, color="grey", linestyle="--", linewidth=1)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def percent(numerator: float, denominator: float) -> float | None:
    return round(100.0 * numerator / denominator, 2) if denominator else None


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


# -- python -m evals report ------------------------------------------------------------------------

DIFFERS = "≠ "  # marks a provenance row whose runs differ
NOT_RECORDED = "(not recorded)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", type=path_arg, nargs="+", metavar="RUN_DIR", help="benchmark output folders")
    parser.add_argument(
        "--allow-differences",
        action="store_true",
        help="print runs whose numbers were made differently side by side anyway, the differences marked",
    )


def run(args: argparse.Namespace) -> int:
    runs = [load_run(path) for path in args.runs]
    differing = differences([r["provenance"] for r in runs])
    if differing and not args.allow_differences:
        raise ConfigError(
            f"these runs' numbers were made differently ({describe(differing, runs)}); "
            "pass --allow-differences to print them side by side anyway"
        )
    print(side_by_side(runs, differing))
    return 0


def load_run(path: Path) -> dict:
    """A run folder's results and its provenance record (None for a run made before they were kept)."""
    file = path / "results.json"
    if not file.is_file():
        raise ConfigError(f"'{path}' has no results.json; give benchmark output folders (their --out)")
    try:
        results = json.loads(read_text_file(file, "results.json"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(results, dict):
        raise ConfigError(f"{file} does not hold a benchmark's results (not a JSON object)")
    record = (results.get("meta") or {}).get("provenance")
    return {"path": path, "results": results, "provenance": record if isinstance(record, dict) else None}


def differences(records: list[dict | None]) -> list[str]:
    """The compared fields whose values are not the same in every record (all of them when a run has none)."""
    if any(r is None for r in records):
        return ["provenance"]
    return [f for f in COMPARED_FIELDS if any(r.get(f) != records[0].get(f) for r in records[1:])]


def describe(fields: list[str], runs: list[dict]) -> str:
    if fields == ["provenance"]:
        old = ", ".join(str(r["path"]) for r in runs if r["provenance"] is None)
        return (
            f"{old} {'was' if ',' not in old else 'were'} made before runs recorded how their numbers were "
            "made (no meta.provenance); rerun with the same command and --out to record it (finished items "
            "are kept)"
        )
    parts = []
    for field in fields:
        values = " vs ".join(_compact(r["provenance"].get(field)) for r in runs)
        parts.append(f"{field}: {values}")
    return "; ".join(parts)


def side_by_side(runs: list[dict], differing: list[str]) -> str:
    header = ["", *[str(r["path"]) for r in runs]]
    fields = ["model", *COMPARED_FIELDS, "git", "versions"]
    how = []
    for field in fields:
        marked = field in differing or "provenance" in differing
        cells = [
            NOT_RECORDED if r["provenance"] is None else _compact(r["provenance"].get(field)) for r in runs
        ]
        how.append([(DIFFERS if marked and field in COMPARED_FIELDS else "") + field, *cells])
    numbers: dict[str, list] = {}
    for i, r in enumerate(runs):
        for key, value in _numbers(r["results"]):
            numbers.setdefault(key, [None] * len(runs))[i] = value
    text = "## How the numbers were made\n\n" + table(header, how)
    if differing:
        text += f"\n{DIFFERS}marks what differs between these runs: their numbers are not comparable as they stand.\n"
    text += "\n## Numbers\n\n" + table(header, [[k, *v] for k, v in numbers.items()])
    return text


def _numbers(results: dict, prefix: str = "") -> list[tuple[str, float]]:
    """Every numeric leaf of a results file but its metadata, as (dotted path, value), in file order."""
    out = []
    for key, value in results.items():
        if not prefix and key == "meta":
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _numbers(value, path + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((path, value))
    return out


def _compact(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items())
    return str(value)
