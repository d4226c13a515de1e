"""The streaming engine: one model, many sessions; each session turns 1-second chunks into commentary.

`StreamingEngine` holds the model and the three configs; `engine.start(...)` opens a `Session`
for one stream. Per chunk, `Session.push(frames, t_start, t_end)`:

1. vision: resize and patchify the frames (core/frames.py), run the vision tower;
2. evict: apply the cache policy once, before the new user turn (core/cache.py);
3. prefill: the previous reply's unfed closing tokens + this chunk's user turn, one forward;
4. decode: sample up to `max_new_tokens`, one forward per token, stopping at <|im_end|>;
5. return the reply, with the ` ...` marker removed at token level, as `Commentary`.

`Session.ask(text)` (from any thread) queues a question; the next chunk asks it in its user turn in
the trainer's QA layout (core/conversation.py), one question a chunk (later ones wait for the next),
and that chunk's reply opens with the answer: a `Commentary` with its `question` set.

The last sampled token is not fed at once: it opens the next chunk's prefill, which saves one
forward per chunk. The only host synchronisation in the token loop is reading each token back to
decide whether to stop; on a GPU the next step is already queued behind the draw by then, so the
GPU never waits for the host.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.profiler import record_function

from core.acceleration import Acceleration
from core.cache import PREFIX_ROUND, StreamCache
from core.config import AccelerationConfig, CachePolicy, EvictionMode, GenerationConfig, StreamConfig
from core.conversation import MARKER, Conversation, Part, Piece, split_answer
from core.decode_step import StaticDecodeStep
from core.frames import VideoInput, video_input
from core.model import StreamModel
from core.pool import ROUND_TEXT_TOKENS, CachePool, slot_tokens, slots_that_fit
from core.positions import temporal_step
from core.sampling import TokenSampler
from core.scheduler import PrefillJob, Scheduler
from core.spec import ModelSpec
from core.stopwatch import Stopwatch
from core.types import Closeable, Commentary, Frame, one_line

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Commentate on this match"
TokenCallback = Callable[[str], None]


@dataclass(frozen=True)
class ChunkStats:
    """Where one chunk's time went (milliseconds, device-synchronised) and what the cache holds after it."""

    t_start: float
    t_end: float
    vision_ms: float
    evict_ms: float
    prefill_ms: float
    decode_ms: float
    vision_tokens: int
    prefill_tokens: int
    new_tokens: int
    cached_tokens: int
    max_position: float
    evicted_tokens: int
    queue_ms: float = 0.0  # batched: waiting for the model thread before this chunk's prefill batch
    compiled: bool = False  # the compiled modules ran (False while they compile in the background)

    @property
    def total_ms(self) -> float:
        return self.vision_ms + self.evict_ms + self.prefill_ms + self.decode_ms

    @property
    def decode_ms_per_token(self) -> float:
        return self.decode_ms / max(1, self.new_tokens - 1)  # the last token is fed by the next prefill


@dataclass
class Trace:
    """What a traced session fed and computed, for equivalence tests."""

    videos: list[VideoInput] = field(default_factory=list)  # every chunk's vision input
    logits: list[tuple[int, torch.Tensor]] = field(
        default_factory=list
    )  # (tokens cached after, logits [n, vocab])


class StreamingEngine:
    """Holds a model and the stream, cache and generation configs; opens sessions."""

    def __init__(
        self,
        model: StreamModel,
        *,
        stream: StreamConfig | None = None,
        cache: CachePolicy | None = None,
        generation: GenerationConfig | None = None,
        acceleration: AccelerationConfig | None = None,
        sessions: int | str | None = None,
        batched: bool = False,
    ) -> None:
        """`acceleration` asks for speed-ups (default: the model's request, else auto); what runs is
        decided once here (`self.acceleration`) and logged in one line. `sessions`: preallocate that
        many session caches in a pool ("auto": as many as the device's free memory holds); opening one
        more session is then refused with `core.pool.CapacityError`. None: each session allocates its own.
        `batched` (with `sessions`): sessions pushed from different threads share one model thread
        (`core.scheduler.Scheduler`) that batches their prefills and their decode steps."""
        self.model = model
        self.decided = model.accelerate(acceleration or model.requested_acceleration)
        self.stream = stream or StreamConfig()
        self.cache_policy = cache or CachePolicy()
        self.generation = generation or GenerationConfig()
        self.conversation = Conversation(model.spec)
        self.dt = temporal_step(
            model.vision.tokens_per_second, model.vision.temporal_patch_size, self.stream.fps
        )
        self.pool = self._pool(sessions) if sessions is not None else None
        self.model_lock = threading.Lock()  # unbatched sessions: one chunk on the model at a time
        self.steps_ahead = 0  # decode steps started before the host read the previous token (overlap)
        # Batched: one model thread for all sessions (needs the pool's slots and the ragged prefill).
        self.scheduler = (
            Scheduler(
                model,
                self.pool,
                use_graphs=self.decided.cuda_graphs,
                batch_invariant=self.decided.batch_invariant,
            )
            if batched and self.pool and model.ragged_prefill
            else None
        )
        if batched and self.pool and self.scheduler is None:
            log.warning(
                "sessions are not batched: attention %r cannot run several prefills in one forward "
                "(use attn_implementation='sdpa')",
                model.attention_backend,
            )

    @property
    def acceleration(self) -> Acceleration:
        """What runs now: `decided` (once, at start), in its eager phase while the model compiles in the
        background (`StreamModel.phase`)."""
        return self.model.phase(self.decided)

    def _pool(self, sessions: int | str) -> CachePool:
        model, text = self.model, self.model.text
        tokens = slot_tokens(model.spec, self.cache_policy, self.stream, self.generation)
        if sessions == "auto":
            sessions = slots_that_fit(tokens * text.kv_bytes_per_token(model.dtype), model.device)
        pool = CachePool(
            slots=int(sessions),
            tokens=tokens,
            num_layers=text.num_layers,
            num_kv_heads=text.num_kv_heads,
            head_dim=text.head_dim,
            dtype=model.dtype,
            device=model.device,
        )
        log.info(
            "cache pool: %d sessions of %s tokens each, %.2f GiB",
            pool.slots,
            f"{tokens:,}",
            pool.bytes / 2**30,
        )
        return pool

    def start(
        self,
        instruction: str | None = DEFAULT_INSTRUCTION,
        previous_text: str = "",
        *,
        on_token: TokenCallback | None = None,
        seed: int | None = None,
        trace: bool = False,
    ) -> Session:
        """Open a session for one stream; `previous_text` seeds the context (a title, earlier commentary).
        With a pool, the session takes a free cache slot (`core.pool.CapacityError` when none is)."""
        slot = self.pool.acquire() if self.pool is not None else None
        try:
            return Session(
                self, instruction, previous_text, on_token=on_token, seed=seed, trace=trace, slot=slot
            )
        except BaseException:
            if slot is not None:  # a session that could not open gives its slot back
                self.pool.release(slot)
            raise


class Session(Closeable):
    """One stream's conversation with the model. Not thread-safe: push chunks from one thread."""

    def __init__(
        self,
        engine: StreamingEngine,
        instruction: str | None,
        previous_text: str,
        *,
        on_token: TokenCallback | None,
        seed: int | None,
        trace: bool,
        slot: int | None = None,
    ) -> None:
        self.engine = engine
        model, policy = engine.model, engine.cache_policy
        self.model, self.conv = model, engine.conversation
        self.instruction = instruction
        self.on_token = on_token
        self.trace = Trace() if trace else None
        self._slot = slot
        self.cache = StreamCache(
            num_layers=model.text.num_layers,
            num_kv_heads=model.text.num_kv_heads,
            head_dim=model.text.head_dim,
            dtype=model.dtype,
            device=model.device,
            inv_freq=model.inv_freq,
            policy=policy,
            fused_rotation=engine.acceleration.triton,
            buffers=engine.pool.buffers(self._slot) if self._slot is not None else None,
        )
        gen = engine.generation
        if seed is not None:
            gen = dataclasses.replace(gen, seed=seed)
        self.generation = gen
        self.sampler = TokenSampler(
            gen,
            valid_vocab=min(len(model.tokenizer), model.text.vocab_size),
            stop_ids=sorted(model.special.stops),
            suppress_ids=[i for text in gen.suppress for i in model.encode(text)],
            device=model.device,
        )
        self.round = 0
        self.last_t_end = -float("inf")
        self.last_stats: ChunkStats | None = None
        self.closed = False
        self._pending: list[Piece] = self.conv.preamble(
            previous_text, policy.sink_tokens, policy.text_window_tokens
        )
        self._pending_round = PREFIX_ROUND
        self._recent_replies: deque[list[int]] = deque(maxlen=max(1, gen.repetition_window_replies))
        self._vision_features: dict[int, torch.Tensor] = {}  # RECOMPUTE only: kept rounds' vision tokens
        self._cache_planned = False
        self._static_step = None
        self._token_reader = _TokenReader(model.device)
        self._deadline = float("inf")  # the current chunk's, for the scheduler's ordering
        self._questions: deque[str] = deque()  # asked, not yet in a chunk (deque: `ask` is any thread's)
        self._asking = ""  # the question of the chunk being pushed
        self._undo = None  # the cache as this chunk's eviction left it (`Eviction.undo`), while it runs

    # -- public interface ----------------------------------------------------------------------------

    def ask(self, text: str) -> None:
        """Queue a question (safe from any thread): the next chunk asks it, and its answer comes back from
        that `push` as a `Commentary` whose `question` is set. `core.conversation.QuestionError` for an
        empty question or one longer than a round has room for."""
        if self.closed:
            raise RuntimeError("this session is closed; start a new one")
        self._questions.append(self.conv.check_question(text))

    @property
    def questions_waiting(self) -> int:
        """Questions asked that no chunk has asked the model yet."""
        return len(self._questions)

    def push(
        self,
        frames: Sequence[np.ndarray | Frame],
        t_start: float,
        t_end: float,
        *,
        deadline: float | None = None,
    ) -> list[Commentary]:
        """Feed one chunk of frames spanning [t_start, t_end) stream seconds; return its commentary.

        `deadline` (a `time.perf_counter()` value): when the chunk's commentary is due; with other sessions
        on the engine's scheduler, the earliest deadline goes first. Default: one chunk's duration from now."""
        question = self._questions.popleft() if self._questions else ""
        before = self._pending, self._pending_round, list(self._recent_replies)
        self._undo = None
        try:
            return self._push(frames, t_start, t_end, deadline, question)
        except BaseException:
            if question:  # the chunk was refused or failed: the question waits for the next one
                self._questions.appendleft(question)
            self._forget_chunk(*before)
            raise

    def _forget_chunk(self, pending: list[Piece], pending_round: int, recent: list[list[int]]) -> None:
        """After a chunk failed (out of GPU memory part-way through its prefill or its reply, a full
        slot): the session as if the chunk had never come, bar what its eviction dropped, so that the
        next chunk's tokens are those of a session that skipped it. Without this the cache would count
        tokens whose keys were never written (or written in some layers only) and lose the previous
        reply's unfed tail."""
        if self._undo is None or self.cache is None:  # failed before its eviction, or closed meanwhile
            return
        self.cache.roll_back(self._undo)
        self._undo = None
        self._pending, self._pending_round = pending, pending_round
        self._recent_replies.clear()
        self._recent_replies.extend(recent)

    @torch.inference_mode()
    def _push(
        self,
        frames: Sequence[np.ndarray | Frame],
        t_start: float,
        t_end: float,
        deadline: float | None,
        question: str,
    ) -> list[Commentary]:
        if self.closed:
            raise RuntimeError("this session is closed; start a new one")
        if not t_end > t_start:
            raise ValueError(f"a chunk must end after it starts (got {t_start} to {t_end})")
        if t_start < self.last_t_end - 1e-6:
            raise ValueError(f"chunks must move forward in time (got {t_start} after {self.last_t_end})")
        arrays = [f.rgb if isinstance(f, Frame) else f for f in frames]
        model, cache, device = self.model, self.cache, self.model.device
        self._asking = question
        self._deadline = deadline if deadline is not None else time.perf_counter() + (t_end - t_start)

        clock = Stopwatch(device)
        scheduler = self.engine.scheduler
        queue_ms = 0.0
        if scheduler is not None:
            # Resize and patchify here, on this session's thread; the model thread batches the rest.
            with record_function("streamvlm.frames"):
                video = video_input(arrays, self.engine.stream, model.vision, device)
            frames_ms = clock.lap()
            opened: dict = {}

            def prepare(features):
                embeds, positions, opened["eviction"] = self._open_chunk(video, features, t_start, t_end)
                return embeds, positions, self.cache, self.trace is not None

            job = scheduler.prefill(
                PrefillJob(prepare, video, video.num_tokens + ROUND_TEXT_TOKENS, self._deadline)
            )
            logits = self._traced(job.logits)
            eviction, positions_n = opened["eviction"], job.tokens_fed
            vision_ms, evict_ms, prefill_ms = frames_ms + job.vision_ms, job.prepare_ms, job.forward_ms
            queue_ms = job.queue_ms
            clock.lap()
        else:
            # The model runs one thing at a time: vision and prefill here.
            with self.engine.model_lock:
                model.settle()  # to the compiled modules, once they are ready
                with record_function("streamvlm.vision"):
                    video = video_input(arrays, self.engine.stream, model.vision, device)
                    features = model.encode_video(
                        video.pixel_values, video.grid_thw
                    )  # [vision tokens, hidden]
                vision_ms = clock.lap()
                with record_function("streamvlm.evict+inputs"):
                    embeds, positions, eviction = self._open_chunk(video, features, t_start, t_end)
                evict_ms = clock.lap()
                with record_function("streamvlm.prefill"):
                    logits = self._forward(embeds, positions)
                prefill_ms = clock.lap()
                positions_n = int(positions.shape[1])

        with record_function("streamvlm.decode"):
            generated = self._decode(logits)
        decode_ms = clock.lap()
        words = self._finish_reply(generated)

        self.last_stats = ChunkStats(
            t_start=t_start,
            t_end=t_end,
            vision_ms=vision_ms,
            evict_ms=evict_ms,
            prefill_ms=prefill_ms,
            decode_ms=decode_ms,
            vision_tokens=video.num_tokens,
            prefill_tokens=positions_n,
            new_tokens=len(generated),
            cached_tokens=cache.length,
            max_position=cache.cursor,
            evicted_tokens=eviction.dropped,
            queue_ms=queue_ms,
            compiled=model.compiled,
        )
        self.round += 1
        self.last_t_end = t_end
        if model.warmup is not None:
            model.warmup.chunk_done()
        return commentary(model.spec, words, t_start, t_end, question)

    def _open_chunk(self, video: VideoInput, features: torch.Tensor, t_start: float, t_end: float):
        """Apply the cache policy and build this chunk's prefill: (embeds [n, hidden], positions [3, n],
        the eviction). Runs where the model runs (the scheduler's thread when batched)."""
        if self.trace is not None:
            self.trace.videos.append(video)
        self._plan_cache(video.num_tokens)
        with record_function("streamvlm.evict"):
            eviction = self.cache.evict(self.round)
        self._undo = eviction.undo
        if self.cache.policy.mode is EvictionMode.RECOMPUTE:
            self._vision_features[self.round] = features
        embeds, positions = self._prefill_inputs(eviction.refeed, video, features, t_start, t_end)
        return embeds, positions, eviction

    def close(self) -> None:
        """Free the cache (or give its pool slot back). Safe to call twice."""
        if not self.closed:
            self.closed = True
            self.cache = None  # type: ignore[assignment]
            self._static_step = None
            self._vision_features.clear()
            if self._slot is not None:
                self.engine.pool.release(self._slot)
                self._slot = None

    # -- steps -----------------------------------------------------------------------------------------

    def _prefill_inputs(
        self, refeed, video: VideoInput, features: torch.Tensor, t_start: float, t_end: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [n, hidden] and positions [3, n] of everything this chunk's prefill feeds."""
        cache, model, device = self.cache, self.model, self.model.device
        ids: list[int] = []
        vision_slots: list[tuple[int, torch.Tensor]] = []  # (offset of the first pad, features)
        positions = []

        def add(pieces: list[Piece], round: int, grid=None, dt=0.0, feats=None) -> None:
            for piece in pieces:
                if piece.part is Part.VISION:
                    vision_slots.append((len(ids) + 1, feats))
                ids.extend(piece.ids)
            positions.append(cache.reserve(pieces, round, grid=grid, dt=dt, device=device))

        for span in refeed:  # RECOMPUTE: the kept conversation again, from position 0
            piece = Piece(span.part, tuple(span.ids))
            feats = self._vision_features.get(span.round) if span.part is Part.VISION else None
            add([piece], span.round, span.grid, span.dt, feats)
        if cache.policy.mode is EvictionMode.RECOMPUTE:
            kept_rounds = {s.round for s in refeed if s.part is Part.VISION} | {self.round}
            self._vision_features = {r: f for r, f in self._vision_features.items() if r in kept_rounds}
        if self._pending and self._round_text_kept(self._pending_round):
            add(self._pending, self._pending_round)
        self._pending = []
        turn = self.conv.user_turn(
            t_start,
            t_end,
            video.num_tokens,
            first=self.round == 0,
            instruction=self.instruction,
            question=self._asking,
        )
        add(turn, self.round, video.merged_grid, self.engine.dt, features)

        embeds = model.embed(torch.tensor(ids, dtype=torch.long, device=device))
        for offset, feats in vision_slots:
            embeds[offset : offset + feats.shape[0]] = feats
        return embeds, torch.cat(positions, dim=1)

    def _round_text_kept(self, round: int) -> bool:
        policy = self.cache.policy
        return round == PREFIX_ROUND or policy.keeps_text(round, self.round)

    def _forward(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        logits = self.model.forward(embeds, positions, self.cache, all_logits=self.trace is not None)
        return self._traced(logits)

    def _traced(self, logits: torch.Tensor) -> torch.Tensor:
        """A prefill's logits: traced sessions get every position's ([n, vocab]), recorded; return the last."""
        if self.trace is None:
            return logits
        self.trace.logits.append((self.cache.length, logits.detach().cpu()))
        return logits[-1]

    def _decode(self, logits: torch.Tensor) -> list[int]:
        """Sample the reply; every sampled token but the last is fed (the next prefill feeds that one)."""
        gen, model, device = self.generation, self.model, self.model.device
        recent_ids = [i for reply in self._recent_replies for i in reply]
        recent = torch.tensor(recent_ids, dtype=torch.long, device=device)
        stop = model.special.stops
        text = _TextStream(model, self.conv.marker, self.on_token) if self.on_token else None
        acceleration = self.engine.acceleration  # one phase for the whole reply (core/warmup.py)
        if acceleration.static_decode and self._static_step is None:
            # With a scheduler: for the steps this session takes alone. Made at the first reply that runs
            # with the static step (after the switch from the eager phase, when compiling in the background).
            self._static_step = StaticDecodeStep(
                model, self.cache, use_graph=acceleration.cuda_graphs, attention=acceleration.decode_attention
            )
        step_fn = self._static_step if acceleration.static_decode else None
        overlap = step_fn is not None and acceleration.overlap
        scheduler = self.engine.scheduler
        generated: list[int] = []
        drawn = None  # (token, id) the scheduler drew for this step along with its forward
        if scheduler is not None:
            scheduler.join()  # its batches wait for this session's steps until it leaves
        try:
            for step in range(gen.max_new_tokens):
                last = step == gen.max_new_tokens - 1
                launched = False  # this step's forward was started ahead (overlap)
                if drawn is not None:
                    token, token_id = drawn
                elif overlap and not last and (scheduler is None or scheduler.hold()):
                    # Start the next forward before the host knows the token: the GPU runs it while the
                    # host waits for the token, decides whether to stop and keeps the books. After a stop
                    # token that forward is wasted but harmless (it wrote one slot past the cached ones).
                    # With a scheduler, only while this session decodes alone (`hold`); the model thread
                    # may run other work once released, queued on the GPU behind this forward.
                    try:
                        token = self.sampler(logits, recent, step)
                        self._token_reader.start(token)
                        self.cache.ensure_capacity(1)
                        logits = step_fn.launch(token, self.cache.cursor)
                        token_id = self._token_reader.result()
                    finally:
                        if scheduler is not None:
                            scheduler.release()
                    launched = True
                    self.engine.steps_ahead += 1
                else:
                    token = self.sampler(logits, recent, step)
                    token_id = int(token.item())  # the one host sync per token: do we stop?
                generated.append(token_id)
                if text is not None:
                    text.push(token_id)
                if token_id in stop or last:
                    break
                recent = torch.cat([recent, token.view(1)])
                if launched:
                    self.cache.append_token(Part.REPLY, self.round, token_id)
                    step_fn.commit()
                    if self.trace is not None:
                        self.trace.logits.append((self.cache.length, logits[None].detach().cpu()))
                elif scheduler is not None:
                    write_at = self.cache.length
                    position = self.cache.append_token(Part.REPLY, self.round, token_id)
                    if overlap and not last and scheduler.hold():
                        # Alone again (the sessions it was batched with have stopped decoding): feed here,
                        # and draw the next token above, its step started ahead.
                        try:
                            logits = step_fn.launch(token, position)
                        finally:
                            scheduler.release()
                        drawn = None
                    else:
                        solo = step_fn.launch if step_fn is not None else self._solo_step
                        # The next token is drawn on the model thread with every other row's, one host sync
                        # for all.
                        draw = functools.partial(self.sampler, recent=recent, step=step + 1)
                        logits, *drawn = scheduler.step(
                            self._slot, token, position, write_at, self._deadline, solo=solo, sample=draw
                        )
                    self.cache.advance(1)
                    if self.trace is not None:
                        self.trace.logits.append((self.cache.length, logits[None].detach().cpu()))
                elif step_fn is not None:
                    position = self.cache.append_token(Part.REPLY, self.round, token_id)
                    logits = step_fn(token, position)
                    if self.trace is not None:
                        self.trace.logits.append((self.cache.length, logits[None].detach().cpu()))
                else:
                    positions = self.cache.reserve(
                        [Piece(Part.REPLY, (token_id,))], self.round, device=device
                    )
                    logits = self._forward(model.embed(token.view(1)), positions)
        finally:
            if scheduler is not None:
                scheduler.leave()
        if text is not None:
            text.finish()
        return generated

    def _solo_step(self, token: torch.Tensor, position: float) -> torch.Tensor:
        """A step this session takes alone, without the static step (a CPU): the dynamic forward over its
        own cache, leaving the token uncounted as the static step's `launch` does (the caller counts it)."""
        positions = torch.full((3, 1), float(position), device=self.model.device)
        logits = self.model.forward(self.model.embed(token.view(1)), positions, self.cache)
        self.cache.advance(-1)
        return logits

    def _finish_reply(self, generated: list[int]) -> list[int]:
        """Label the cached reply tokens, queue the unfed ones for the next prefill, return the words."""
        words, closing, to_feed = self.conv.close_reply(generated)
        cached = len(generated) - 1  # all but the last sampled token are in the cache
        self.cache.split_tail(max(0, cached - len(words)), Part.REPLY_CLOSE)
        unfed_words = words[cached:]
        unfed_close = (closing + to_feed)[max(0, cached - len(words)) :]
        self._pending = [
            p
            for p in (Piece(Part.REPLY, tuple(unfed_words)), Piece(Part.REPLY_CLOSE, tuple(unfed_close)))
            if p.ids
        ]
        self._pending_round = self.round
        self._recent_replies.append(words)
        if not self.cache.policy.keeps_text(self.round, self.round + 1):
            # This round's reply retires at the next eviction, before a prefill could feed its tail.
            self._flush_pending()
        return words

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        ids = [i for p in self._pending for i in p.ids]
        pending, round = self._pending, self._pending_round
        self._pending = []

        def prepare(_features=None):
            positions = self.cache.reserve(pending, round, device=self.model.device)
            embeds = self.model.embed(torch.tensor(ids, device=self.model.device))
            return embeds, positions, self.cache, self.trace is not None

        if self.engine.scheduler is not None:  # the model is the scheduler thread's
            job = self.engine.scheduler.prefill(PrefillJob(prepare, None, len(ids), self._deadline))
            self._traced(job.logits)
        else:
            embeds, positions, _, _ = prepare()
            self._forward(embeds, positions)

    def _plan_cache(self, vision_tokens: int) -> None:
        if self._cache_planned:
            return
        self._cache_planned = True
        policy = self.cache.policy
        if not policy.evicts:
            log.info("cache policy: none (full attention); the cache grows with the stream")
            return
        fixed = sum(len(p) for p in self._pending if p.part is not Part.PREV_CONTENT)
        text_per_round = 40 + self.generation.max_new_tokens
        budget = policy.budget(
            fixed_tokens=fixed,
            vision_tokens_per_chunk=vision_tokens + 2,
            text_tokens_per_round=text_per_round,
            bytes_per_token=self.model.text.kv_bytes_per_token(self.model.dtype),
        )
        log.info("cache policy: %s; steady state at most about %s", policy.mode.value, budget)
        # Allocate the steady-state size now, so buffers (and the decode graph) are built once.
        self.cache.ensure_capacity(budget.tokens)


class _TokenReader:
    """Copies a sampled token to the host without waiting for work queued after it."""

    def __init__(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.host = torch.zeros(1, dtype=torch.long, pin_memory=cuda)
        self.ready = torch.cuda.Event() if cuda else None

    def start(self, token: torch.Tensor) -> None:
        self.host.copy_(token.view(1), non_blocking=True)
        if self.ready is not None:
            self.ready.record()

    def result(self) -> int:
        if self.ready is not None:
            self.ready.synchronize()
        return int(self.host[0])


class _TextStream:
    """Turns tokens into text deltas for `on_token`, holding back what may turn out to be the marker."""

    def __init__(self, model: StreamModel, marker: tuple[int, ...], callback: TokenCallback) -> None:
        self.model, self.marker, self.callback = model, list(marker), callback
        self.stop = model.special.stops
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> None:
        if token_id in self.stop:
            return
        self.ids.append(token_id)
        hold = _marker_prefix_overlap(self.ids, self.marker)
        self._emit(self.ids[: len(self.ids) - hold])

    def finish(self) -> None:
        ids = self.ids
        if self.marker and ids[-len(self.marker) :] == self.marker:
            ids = ids[: -len(self.marker)]
        self._emit(ids)

    def _emit(self, ids: list[int]) -> None:
        text = self.model.decode(ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.callback(text[len(self.sent) :])
            self.sent = text


def commentary(
    spec: ModelSpec, words: list[int], t_start: float, t_end: float, question: str = ""
) -> list[Commentary]:
    """A reply's word ids as the chunk's commentary: one line, or none for a silent second. The reply to a
    `question` is `{answer}\\n words` (core/conversation.py): the answer line, then any commentary."""
    text = spec.decode(words)
    lines = []
    if question:
        answer, text = split_answer(text)
        if one_line(answer):
            lines.append(Commentary(t_start, t_end, one_line(answer), question=question))
        else:
            log.warning("the model gave no answer to %r (asked at %.1f-%.1f s)", question, t_start, t_end)
    text = one_line(text)
    return lines + ([Commentary(t_start, t_end, text)] if text else [])


def _marker_prefix_overlap(ids: list[int], marker: list[int]) -> int:
    """How many trailing ids could be the start of the marker."""
    for k in range(min(len(ids), len(marker)), 0, -1):
        if ids[-k:] == marker[:k]:
            return k
    return 0


__all__ = ["MARKER", "ChunkStats", "Session", "Stopwatch", "StreamingEngine", "Trace"]
