"""Writing a benchmark's outputs: results.json (numbers plus run metadata), summary.md, a PNG plot."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from evals.results import write_json

log = logging.getLogger(__name__)


def write_outputs(
    out: Path, results: dict, markdown: str, plot: Callable[[Path], None] | None = None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
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
