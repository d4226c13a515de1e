"""The realtime runner keeps latency bounded: a paced file, a session slower than the stream, a
bounded queue; and the CLI end to end on live sources (RTSP, a paced file) with the tiny model."""

from __future__ import annotations

import re
import threading
import time

import pytest

from clihelpers import CLIP, run_cli
from core.config import StreamConfig
from core.media.realtime import RealtimeRunner
from core.media.sources import FileSource, Source
from core.types import Commentary, Frame
from livehelpers import Display, RtspServer


class SlowSession:
    """A session that takes `seconds` per chunk (a model slower than the stream)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.pushed: list[tuple[float, float]] = []

    def push(self, frames, t_start: float, t_end: float) -> list[Commentary]:
        assert len(frames) == 2
        self.pushed.append((t_start, t_end))
        time.sleep(self.seconds)
        return [Commentary(t_start, t_end, f"chunk at {t_start:.0f}")]


def test_a_slow_session_skips_chunks_and_keeps_latency_under_the_budget():
    session = SlowSession(1.6)
    runner = RealtimeRunner(FileSource(CLIP, fps=2.0, realtime=True), session, StreamConfig(), budget=2.5)
    started = time.monotonic()
    reports = list(runner.run())
    assert time.monotonic() - started < 8.0 + 2 * 2.5  # ends with the stream, not with a backlog
    assert len(reports) >= 3 and runner.skipped >= 2
    assert len(reports) + runner.skipped == 8  # every chunk of the 8-s clip was commented or skipped
    assert all(r.latency < 2.5 for r in reports)  # the budget holds for every processed chunk
    assert runner.max_queue_depth <= 2
    # Skips show: the next label starts where the stream is, and the report says what was skipped.
    starts = [r.t_start for r in reports]
    assert any(b - a > 1 for a, b in zip(starts, starts[1:]))
    spans = [r.skipped_span for r in reports if r.skipped_span]
    assert spans and all(b > a for a, b in spans)
    assert reports[-1].skipped == runner.skipped or reports[-1].skipped < runner.skipped
    assert [r.commentary[0].text for r in reports] == [f"chunk at {s:.0f}" for s in starts]


def test_a_fast_session_misses_nothing_and_answers_within_its_own_time():
    session = SlowSession(0.05)
    runner = RealtimeRunner(FileSource(CLIP, fps=2.0, realtime=True), session, StreamConfig(), budget=2.0)
    reports = list(runner.run())
    assert [r.t_start for r in reports] == [float(k) for k in range(8)] and runner.skipped == 0
    # A chunk is ready when its last frame (at +0.5 s) arrives, and commented 0.05 s later.
    assert max(r.latency for r in reports) < 0.4


class BurstSource(Source):
    """Frames as fast as possible (a capture far ahead of inference), then an error."""

    def __init__(self, n: int, fail: bool = False) -> None:
        import numpy as np

        self.n, self.fail = n, fail
        self.rgb = np.zeros((28, 28, 3), np.uint8)
        self.closed = threading.Event()

    def __iter__(self):
        for k in range(self.n):
            if self.closed.is_set():
                return
            yield Frame(self.rgb, k / 2)
        if self.fail:
            from core.errors import SourceError

            raise SourceError("camera 0 could not be reached again for 120 s (unplugged)")

    def close(self) -> None:
        self.closed.set()


def test_the_queue_never_grows_past_its_bound_and_capture_never_waits():
    session = SlowSession(0.2)
    runner = RealtimeRunner(BurstSource(200), session, StreamConfig(), budget=100.0, queue_chunks=3)
    reports = list(runner.run())
    assert runner.max_queue_depth <= 3
    assert len(reports) + runner.skipped == 100 and runner.skipped > 80  # dropped, not queued


def test_a_capture_failure_ends_the_run_with_its_error():
    from core.errors import SourceError

    runner = RealtimeRunner(BurstSource(20, fail=True), SlowSession(0.0), StreamConfig(), budget=5.0)
    with pytest.raises(SourceError, match="could not be reached again"):
        list(runner.run())


def test_stop_from_another_thread_ends_a_live_run_promptly():
    runner = RealtimeRunner(FileSource(CLIP, fps=2.0, realtime=True), SlowSession(0.0), StreamConfig())
    threading.Timer(1.2, runner.stop).start()
    started = time.monotonic()
    reports = list(runner.run())
    assert time.monotonic() - started < 3.0 and len(reports) <= 2


# -- the CLI on live sources, tiny model -------------------------------------------------------------------


def latency_line(stderr: str) -> tuple[int, int, float, float]:
    match = re.search(
        r"(\d+) chunks commented, (\d+) skipped; capture-to-commentary latency median ([\d.]+) s, max ([\d.]+) s",
        stderr,
    )
    assert match, stderr[-3000:]
    return int(match[1]), int(match[2]), float(match[3]), float(match[4])


def test_cli_comments_on_an_rtsp_stream_live(tiny_dir, tmp_path):
    server = RtspServer(size=(1280, 720), fps=25).start()
    try:
        result = run_cli(
            "run",
            "--source",
            server.url,
            "--model",
            str(tiny_dir),
            "--device",
            "cpu",
            "--duration",
            "6",
            "--jsonl",
            str(tmp_path / "o.jsonl"),
            timeout=120,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    commented, skipped, median, worst = latency_line(result.stderr)
    print(
        f"RTSP 1280x720 25 FPS, tiny model: {commented} chunks, {skipped} skipped, latency median {median} s"
    )
    assert commented >= 4 and worst < 2.0


def test_cli_paces_a_file_with_realtime_and_reports_latency(tiny_dir):
    result = run_cli("run", "--source", str(CLIP), "--model", str(tiny_dir), "--device", "cpu", "--realtime")
    assert result.returncode == 0, result.stderr[-3000:]
    commented, skipped, median, worst = latency_line(result.stderr)
    print(f"paced file, tiny model: {commented} chunks, {skipped} skipped, latency median {median} s")
    assert commented + skipped == 8 and worst < 2.0


def test_cli_names_a_monitor_that_does_not_exist(tiny_dir):
    display = Display(640, 480).start()
    try:
        result = run_cli("run", "--source", "screen:4", "--model", str(tiny_dir), "--device", "cpu")
        listing = run_cli("sources")
    finally:
        display.stop()
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: monitor 4 does not exist; this display has monitors 1 (640x480)"]
    assert "screen:1  640x480 at 0,0" in listing.stdout
    assert "cameras: none that open" in listing.stdout or "camera:" in listing.stdout


def test_a_session_slower_than_the_budget_comments_on_the_newest_chunks(caplog):
    """Every chunk misses a 1-s budget when one takes 1.5 s: the newest is still worth commenting on."""
    session = SlowSession(1.5)
    runner = RealtimeRunner(FileSource(CLIP, fps=2.0, realtime=True), session, StreamConfig(), budget=1.0)
    with caplog.at_level("WARNING", logger="core.media.realtime"):
        reports = list(runner.run())
    assert len(reports) >= 3  # not only the first chunk (an estimate over the budget used to skip the rest)
    assert runner.skipped >= 2 and len(session.pushed) == len(reports)
    assert all(r.latency < 1.5 * 2 + 0.5 for r in reports)  # at most one chunk waits behind another
    starts = [t for t, _ in session.pushed]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert sum("more than the 1.0 s latency budget" in r.message for r in caplog.records) == 1
