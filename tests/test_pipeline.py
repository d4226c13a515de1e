"""The one pipeline (core/pipeline.py): source -> chunks -> session -> recorder and sinks."""

from __future__ import annotations

import threading
from pathlib import Path

import av

from clihelpers import CLIP
from conftest import SMALL_STREAM
from core.config import GenerationConfig
from core.engine import StreamingEngine
from core.media.sources import FileSource
from core.pipeline import Pipeline, open_recording

ROOT = Path(__file__).resolve().parents[1]
GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=4)


def test_a_file_runs_every_chunk_in_order_into_the_sinks_and_the_recording(tiny_model, tmp_path):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY)
    lines = []
    source = FileSource(CLIP, fps=SMALL_STREAM.fps)
    with open_recording(tmp_path / "rec.mp4", source, SMALL_STREAM) as recorder, engine.start() as session:
        pipeline = Pipeline(
            source, session, SMALL_STREAM, live=False, duration=3.0, recorder=recorder, sinks=(lines.append,)
        )
        with pipeline:
            reports = list(pipeline.run())
    assert [(r.t_start, r.t_end) for r in reports] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    assert lines == [line for r in reports for line in r.commentary]
    assert pipeline.summary().startswith("3 chunks commented, 0 skipped")
    with av.open(str(tmp_path / "rec.mp4")) as container:  # the source's own 10 FPS, not the model's 2
        stream = container.streams.video[0]
        assert round(float(stream.average_rate)) == 10
        assert sum(1 for _ in container.decode(stream)) >= 25
    # The same tokens as pushing the chunks by hand: the pipeline adds nothing to the session.
    with engine.start() as by_hand:
        from core.media.chunker import chunks

        expected = []
        for chunk in chunks(FileSource(CLIP, fps=SMALL_STREAM.fps), SMALL_STREAM):
            if chunk.t_start >= 3.0:
                break
            expected += by_hand.push(chunk.frames, chunk.t_start, chunk.t_end)
    assert lines == expected


def test_a_live_run_stops_from_another_thread(tiny_model):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY)
    source = FileSource(CLIP, fps=SMALL_STREAM.fps, realtime=True)  # paced like a live feed
    with engine.start() as session:
        pipeline = Pipeline(source, session, SMALL_STREAM, live=True, budget=5.0)
        reports = []
        for report in pipeline.run():
            reports.append(report)
            if len(reports) == 1:
                threading.Timer(0.1, pipeline.stop).start()
    assert 1 <= len(reports) <= 3  # stopped after the chunk in progress, long before the 8-s clip ends
    assert reports[-1].t_end < 8.0


def test_the_cli_the_app_and_the_evals_run_the_one_pipeline():
    """grep-level check that the three assemblies of old now build a Pipeline and loop nowhere else."""
    for path in ("core/__main__.py", "app/worker.py", "evals/commentary.py"):
        text = (ROOT / path).read_text()
        assert "Pipeline(" in text, path
        assert "chunks(" not in text and "RealtimeRunner(" not in text, path


def test_the_latency_tally_gives_a_lists_median_and_max_in_bounded_memory():
    """An endless run keeps a count per 10 ms, not every chunk's latency; its summary's figures are those of
    the whole list at the printed precision."""
    import random
    import statistics

    from core.pipeline import LatencyTally

    rng = random.Random(3)
    for n in (1, 2, 3, 10, 101, 5000):
        latencies = [round(rng.uniform(0.05, 3.0), 2) for _ in range(n)]
        tally = LatencyTally()
        for x in latencies:
            tally.add(x)
        assert tally.count == n and tally.max == max(latencies)
        assert abs(tally.median() - statistics.median(latencies)) < 1e-9
    tally = LatencyTally()
    for k in range(200_000):  # a couple of days of one-second chunks
        tally.add(0.5 + (k % 300) / 1000)
    assert len(tally._per_10ms) <= 31  # 0.50 to 0.80 s: the memory is the spread of values, not the count
