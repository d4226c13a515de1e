"""Reading what a training run (`python -m trainer`) wrote, for the loop and distributed tests."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(out: Path) -> dict[int, dict]:
    """The last record of each step in OUT/metrics.jsonl (a resumed run rewrites the steps after its
    checkpoint)."""
    records = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["step"]] = record
    return records
