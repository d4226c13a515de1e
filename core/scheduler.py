"""The scheduler: one thread runs the model for all of an engine's sessions, batching their work.

Each session still pushes its chunks from a thread of its own (the server's, the pipeline's), and
keeps its own books (conversation, cache spans, sampling). What touches the model goes through the
engine's `Scheduler`, whose one model thread runs, in a loop:

- **prefills**: every chunk that is waiting (its frames already resized and patchified by its own
  thread), earliest deadline first and up to a token budget: the vision tower for each, each
  session's eviction and prefill inputs, then one ragged forward over all their new tokens
  (core/ragged.py), each segment attending to its own cache;
- **decode steps**: one token for every session that is generating, in one batched forward over the
  cache pool (core/batch.py), each row attending to its own slot at its own length and position.

Continuous batching: a session joins the decode batch when its prefill is done and leaves when its
reply ends, so a new chunk waits for at most one batched step, never for another session's reply.

Batch-invariant mode (`acceleration.batch_invariant`): a session's tokens do not depend on the other
sessions, bit for bit, also in bf16 on a GPU. Batching changes the shapes of the matmuls, and the GPU
libraries choose kernels, tiles and summation orders by shape, so a row rounds differently in a batch
of 8 than alone. In this mode every decode forward has the same number of rows
(`BATCH_INVARIANT_ROWS`, padded; more sessions run as several such forwards, and a lone session's
step is one of them rather than its own single-row step), and each chunk's vision tower call and
prefill forward runs alone, as it would for a session alone on the engine (the decode kernel over
the pool already treats each row alone: its splits follow the slot's size). The price: prefills no
longer share forwards, and a lone session's decode step computes padding rows.
Deadlines (a chunk's arrival plus its latency budget, by default the chunk's own duration) order
the prefills, and decide whether waiting prefills or the next decode step go first: whichever holds
the earliest deadline. A session gives the same tokens through the scheduler as alone
(tests/test_batch.py, token for token in float32).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from core.batch import BatchedDecode, DecodeRow
from core.model import StreamModel
from core.pool import CachePool
from core.stopwatch import Stopwatch

log = logging.getLogger(__name__)

# How long a decode step waits for sessions that are decoding but have not asked for their next
# token yet (they are sampling or keeping their books, which takes microseconds): a little longer
# than that lets them join, more would only add latency.
GATHER_SECONDS = 0.005
# Most new tokens in one ragged prefill on a GPU: about ten HD chunks. Decoding sessions wait for a
# whole prefill batch, so the budget bounds that stall (~25 ms per chunk on an H200) while leaving
# enough rows to fill the GPU. A CPU takes every waiting chunk (the tests' tiny model).
GPU_PREFILL_TOKENS = 8192
# Rows of every decode forward in batch-invariant mode: decode reads all the weights whatever the rows,
# so 16 rows cost a lone session little more than 1 (its matmuls stay memory-bound).
BATCH_INVARIANT_ROWS = 16
IDLE_SECONDS = 5.0  # an idle model thread ends after this long (an engine dropped by its owner is freed)


@dataclass
class PrefillJob:
    """One session's chunk (or its text-only flush) waiting for the model.

    `video` is the chunk's vision input (None for text only); `prepare(features)` runs on the model
    thread after the vision tower and returns the segment to feed: (embeds [n, hidden], positions
    [3, n], the session's cache, whether to keep every position's logits)."""

    prepare: Callable[[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor, object, bool]]
    video: object | None
    tokens: int  # an estimate of the new tokens, for the batch's budget
    deadline: float
    submitted: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    logits: torch.Tensor | None = None
    error: BaseException | None = None
    # Where the chunk's time went (milliseconds): its wait for the model, and its batch's phases.
    queue_ms: float = 0.0
    vision_ms: float = 0.0
    prepare_ms: float = 0.0
    forward_ms: float = 0.0
    batch_size: int = 0
    tokens_fed: int = 0  # the segment's length, once prepared


@dataclass
class _Step:
    row: DecodeRow
    deadline: float
    sample: Callable[[torch.Tensor], torch.Tensor] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    logits: torch.Tensor | None = None
    token: torch.Tensor | None = None
    token_id: int | None = None
    error: BaseException | None = None


class Scheduler:
    """Runs an engine's vision, prefills and decode steps on one model thread; see the module docstring."""

    def __init__(
        self,
        model: StreamModel,
        pool: CachePool,
        *,
        use_graphs: bool = False,
        prefill_tokens: int | None = None,
        batch_invariant: bool = False,
    ) -> None:
        self.model = model
        self.batch_invariant = batch_invariant
        fixed = BATCH_INVARIANT_ROWS if batch_invariant else None
        self.decode = BatchedDecode(model, pool, use_graphs=use_graphs, fixed_rows=fixed)
        cuda = model.device.type == "cuda"
        self.prefill_tokens = prefill_tokens or (GPU_PREFILL_TOKENS if cuda else 1 << 30)
        self._cuda = cuda
        self._cond = threading.Condition()
        self._prefills: list[PrefillJob] = []
        self._steps: list[_Step] = []
        self._decoding = 0  # sessions between `join` and `leave`
        self._busy = False  # the model is running work (on the model thread, or a lone step inline)
        self._thread: threading.Thread | None = None
        self._closed = False
        self.prefill_batches = 0  # ragged forwards run, and the chunks they carried (tests, reports)
        self.prefill_jobs = 0
        self.vision_calls = 0  # tower calls, and the chunks they carried
        self.vision_chunks = 0
        # Where the model thread's time went (milliseconds): prefill batches (vision, inputs, forward),
        # decode steps (forward and draws), and waiting for work (benchmarks report them).
        self.busy_ms = {"prefill": 0.0, "decode": 0.0, "idle": 0.0}
        _LIVE.add(self)

    # -- what sessions call (each from its own thread; each call blocks until its work is done) ------

    def prefill(self, job: PrefillJob) -> PrefillJob:
        """Run `job` in the next prefill batch that has room for it; returns it with its logits set."""
        self._submit(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job

    def join(self) -> None:
        """A session starts decoding a reply: decode steps wait briefly for its rows until it leaves."""
        with self._cond:
            self._decoding += 1

    def leave(self) -> None:
        with self._cond:
            self._decoding -= 1
            self._cond.notify_all()

    def hold(self) -> bool:
        """Take the model for a lone session's step on the session's own thread, when it is the only
        session decoding and the model thread has nothing queued or running: True, and the model thread
        waits until `release`. (No hand-over to the model thread and back per token: a single stream runs
        as fast as without a scheduler.) False: go through `step`."""
        with self._cond:
            if self.batch_invariant or self._decoding > 1:  # invariant: every step a fixed-size batch
                return False
            # The model thread may still be finishing the batch that answered this session (it marks
            # itself idle after the answer): wait for that rather than hand the step over to it, unless
            # other work arrives meanwhile (handing over would wait for the same batch anyway).
            self._cond.wait_for(lambda: not self._busy or self._steps or self._prefills, IDLE_SECONDS)
            alone = not (self._steps or self._prefills or self._busy)
            self._busy |= alone
        return alone

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def step(
        self,
        slot: int,
        token: torch.Tensor,
        position: float,
        write_at: int,
        deadline: float,
        solo: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
        sample: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
        """Feed `token` at `position` into `slot` (its keys and values at index `write_at`); return the
        next logits [vocab] (float32), and with `sample` (logits -> token [1] on the device) the token it
        draws and its id, drawn on the model thread with every row's, read back in one sync. `solo`: the
        session's own single-session step, used when no other session decodes at the same time
        (`core.batch.DecodeRow`)."""
        if solo is not None and self.hold():  # alone on an idle model: the step on this thread
            try:
                logits = solo(token, position)
                drawn = sample(logits) if sample is not None else None
                return logits, drawn, None if drawn is None else int(drawn.item())
            finally:
                self.release()
        step = _Step(DecodeRow(slot, token, position, write_at, solo), deadline, sample)
        self._submit(step)
        step.done.wait()
        if step.error is not None:
            raise step.error
        return step.logits, step.token, step.token_id

    def close(self) -> None:
        """Stop the model thread (work already queued is finished first)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # -- the model thread ----------------------------------------------------------------------------

    def _submit(self, item: PrefillJob | _Step) -> None:
        with self._cond:  # the queues are replaced as they are taken: look them up under the lock
            if self._closed:
                raise RuntimeError("this engine's scheduler is closed")
            (self._prefills if isinstance(item, PrefillJob) else self._steps).append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="streamvlm-scheduler", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            waited = time.perf_counter()
            with self._cond:
                self._cond.wait_for(
                    lambda: (self._prefills or self._steps or self._closed) and not self._busy, IDLE_SECONDS
                )
                if self._busy:  # a lone step is running inline (and took longer than the idle wait)
                    continue
                if not (self._prefills or self._steps):
                    # Closed, or idle: the thread ends (and holds the model no longer); the next
                    # submission starts a new one.
                    self._thread = None
                    return
                if self._steps and not self._prefills and len(self._steps) < self._decoding:
                    # Let decoding sessions that are still sampling their last token join this step.
                    self._cond.wait_for(
                        lambda: len(self._steps) >= self._decoding or bool(self._prefills), GATHER_SECONDS
                    )
                steps, self._steps = self._steps, []
                jobs = self._take_prefills()
                self._busy = True
            self.busy_ms["idle"] += (time.perf_counter() - waited) * 1000.0
            first_prefill = min((j.deadline for j in jobs), default=float("inf"))
            first_step = min((s.deadline for s in steps), default=float("inf"))
            try:
                self.model.settle()  # to the compiled modules once they are ready: nothing else runs now
                with torch.inference_mode():
                    if first_prefill <= first_step:
                        self._run_prefills(jobs)
                        self._run_steps(steps)
                    else:
                        self._run_steps(steps)
                        self._run_prefills(jobs)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()  # a lone session waiting to take its step (`hold`)

    def _take_prefills(self) -> list[PrefillJob]:
        """The waiting chunks by deadline, as many as the token budget holds (at least one)."""
        self._prefills.sort(key=lambda j: j.deadline)
        taken, tokens = 0, 0
        for job in self._prefills:
            if taken and tokens + job.tokens > self.prefill_tokens:
                break
            taken += 1
            tokens += job.tokens
        jobs, self._prefills = self._prefills[:taken], self._prefills[taken:]
        return jobs

    def _run_steps(self, steps: list[_Step]) -> None:
        if not steps:
            return
        started = time.perf_counter()
        try:
            row = steps[0].row
            if len(steps) == 1 and row.solo is not None and not self.batch_invariant:
                logits = row.solo(row.token, row.position)[None]
            else:
                logits = self.decode.run([s.row for s in steps])
            drawn = []
            for index, step in enumerate(steps):
                step.logits = logits[index]
                if step.sample is not None:
                    try:  # a session's own draw failing fails that session's step only
                        step.token = step.sample(step.logits)
                        drawn.append(step)
                    except Exception as exc:
                        step.error = exc
            if drawn:  # one host sync for every row's token
                for step, token_id in zip(drawn, torch.cat([s.token.view(1) for s in drawn]).tolist()):
                    step.token_id = token_id
        except BaseException as exc:  # every row of a failed forward hears why
            for step in steps:
                step.error = step.error or exc
        finally:
            if self._cuda:
                torch.cuda.synchronize()
            self.busy_ms["decode"] += (time.perf_counter() - started) * 1000.0
            for step in steps:
                step.done.set()

    def _vision(self, jobs: list[PrefillJob]) -> list[torch.Tensor | None]:
        """The tower over the batch's chunks of each frame grid, in calls of `vision_pieces` sizes (a CUDA
        graph per grid and size); None for text-only jobs."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, job in enumerate(jobs):
            if job.video is not None:  # batch-invariant: each chunk its own call, as alone
                groups.setdefault((index,) if self.batch_invariant else _grid_key(job), []).append(index)
        features: list[torch.Tensor | None] = [None] * len(jobs)
        pieces = []
        for members in groups.values():
            start = 0
            for size in vision_pieces(len(members)):
                pieces.append(members[start : start + size])
                start += size
        for members in pieces:
            videos = [jobs[i].video for i in members]
            outs = self.model.encode_videos([v.pixel_values for v in videos], [v.grid_thw for v in videos])
            self.vision_calls += 1
            self.vision_chunks += len(videos)
            for i, out in zip(members, outs, strict=True):
                features[i] = out
        return features

    def _run_prefills(self, jobs: list[PrefillJob]) -> None:
        if not jobs:
            return
        clock = Stopwatch(self.model.device)
        started = clock.last
        try:
            for job in jobs:
                job.queue_ms = (started - job.submitted) * 1000.0
                job.batch_size = len(jobs)
            features = self._vision(jobs)
            vision_ms = clock.lap()
            segments, ready = [], []
            for job, feats in zip(jobs, features, strict=True):
                try:  # one session's bad chunk (a full slot, a failed eviction) fails that chunk only
                    segments.append(job.prepare(feats))
                    ready.append(job)
                except BaseException as exc:
                    job.error = exc
                job.prepare_ms = clock.lap()
            if ready:
                lengths = [s[0].shape[0] for s in segments]
                if len(segments) == 1 or self.batch_invariant:  # alone: the single-session forward, exactly
                    logits = [
                        self.model.forward(embeds, positions, cache, all_logits=every)
                        for embeds, positions, cache, every in segments
                    ]
                else:
                    embeds = torch.cat([s[0] for s in segments])
                    positions = torch.cat([s[1] for s in segments], dim=1)
                    logits = self.model.forward_ragged(
                        embeds, positions, [s[2] for s in segments], lengths, [s[3] for s in segments]
                    )
                forward_ms = clock.lap()
                for job, out, n in zip(ready, logits, lengths, strict=True):
                    job.logits, job.tokens_fed = out, n
                    job.vision_ms, job.forward_ms = vision_ms, forward_ms
                self.prefill_batches += 1
                self.prefill_jobs += len(ready)
        except BaseException as exc:  # the batch failed as a whole: every chunk in it hears why
            for job in jobs:
                if job.error is None and job.logits is None:
                    job.error = exc
        finally:
            self.busy_ms["prefill"] += (time.perf_counter() - started) * 1000.0
            for job in jobs:
                job.done.set()


_LIVE: weakref.WeakSet[Scheduler] = weakref.WeakSet()


def _close_all() -> None:
    """End the model threads before the interpreter tears down (a daemon thread stopped inside a C++
    call aborts the process)."""
    for scheduler in list(_LIVE):
        scheduler.close()


# At the start of interpreter shutdown, before other threads are joined (the hook concurrent.futures
# uses for its workers), and again at exit for any started after it.
getattr(threading, "_register_atexit", atexit.register)(_close_all)
atexit.register(_close_all)


def vision_pieces(chunks: int) -> list[int]:
    """How many chunks of one frame grid each tower call takes: powers of two, largest first (13 chunks:
    8, 4, 1). Every new count is a new input shape for the tower, so a new CUDA graph captured (and, once
    compiled, a recompilation) in the middle of the stream, stalling every session at once: on the H200,
    8 streams waited ~1.7 s together when a batch met a count it had not met before. Powers of two bound
    the counts to 1 + log2(sessions) per grid (5 for 24 streams), for a few more tower calls."""
    sizes = []
    while chunks:
        size = 1 << (chunks.bit_length() - 1)
        sizes.append(size)
        chunks -= size
    return sizes


def _grid_key(job: PrefillJob) -> tuple[int, ...]:
    return (*job.video.grid_thw.flatten().tolist(), job.video.pixel_values.shape[0])
