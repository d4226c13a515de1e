"""The late-chunk policy the real-time runner and the server share (core/latency.py)."""

from __future__ import annotations

import logging

import pytest

from core.latency import LatencyBudget


def test_a_chunk_runs_while_its_wait_plus_the_predicted_time_fits():
    policy = LatencyBudget(2.0)
    assert policy.allows(1.9, newest=False)  # nothing measured yet: only the wait counts
    policy.record(0.5)
    policy.record(1.0)
    assert policy.seconds_per_chunk == pytest.approx(1.1)  # the slowest recent chunk, +10%
    assert policy.allows(0.9, newest=False)
    assert not policy.allows(0.95, newest=True)  # late, and the model fits the budget: skip


def test_the_prediction_forgets_old_chunks():
    policy = LatencyBudget(2.0)
    policy.record(5.0)
    for _ in range(8):
        policy.record(0.1)
    assert policy.seconds_per_chunk == pytest.approx(0.11)


def test_a_model_slower_than_the_budget_still_comments_on_the_newest_chunk(caplog):
    policy = LatencyBudget(1.0)
    policy.record(1.5)
    with caplog.at_level(logging.WARNING, logger="core.latency"):
        assert not policy.allows(0.5, newest=False)  # a newer chunk waits: comment on that one
        assert policy.allows(0.5, newest=True)
        assert policy.allows(0.7, newest=True)
    warnings = [r.getMessage() for r in caplog.records if "latency budget" in r.getMessage()]
    assert len(warnings) == 1 and "more than the 1.0 s latency budget" in warnings[0]


def test_the_budget_must_be_positive():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            LatencyBudget(bad)


def test_one_policy_serves_the_runner_and_the_server():
    """grep-level check of 'one implementation': neither side keeps its own estimate."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "core"
    for path in (root / "media" / "realtime.py", root / "remote" / "server.py"):
        text = path.read_text()
        assert "LatencyBudget(" in text and "seconds_per_chunk =" not in text, path
