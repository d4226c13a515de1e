"""The efficiency benchmark's baseline (a): stock transformers `generate` over a growing cache.

What a user of the stock library would write to stream: keep one `DynamicCache` for the whole
stream, append each chunk's user turn to the token history and call `model.generate` on it, so
every new chunk attends to everything before it (full attention; the cache grows until memory
runs out). Everything that computes runs through stock transformers: the vision tower
(`get_video_features`, stock SDPA attention), 3-D positions (`get_rope_index`, inside
`generate`), the language model, the cache and the sampling loop. The token sequence is the
engine's own conversation layout (core/conversation.py), so both sides see the same text, and
the frames go through the same resize and patchify (core/frames.py, equal to the stock video
processor), since preprocessing is not what is compared.

Per chunk it reports the same `ChunkStats` as the engine: vision ms, prefill ms (up to the first
sampled token, seen through a logits processor), decode ms and the cached token count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList

from core.config import GenerationConfig, StreamConfig
from core.conversation import Conversation
from core.engine import DEFAULT_INSTRUCTION, ChunkStats, Stopwatch, commentary
from core.frames import video_input
from core.model import StreamModel
from core.types import Closeable, Commentary, Frame

STOCK_ATTENTION = "sdpa"
STOCK_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class StockStream(Closeable):
    """One stream through stock `generate` with a cache that is never cut."""

    def __init__(
        self,
        model: StreamModel,
        stream: StreamConfig,
        generation: GenerationConfig,
        *,
        instruction: str | None = DEFAULT_INSTRUCTION,
        previous_text: str = "",
    ) -> None:
        self.model, self.stream, self.generation = model, stream, generation
        self.instruction = instruction
        self.conv = Conversation(model.spec)
        pieces = self.conv.preamble(previous_text, sink_tokens=1 << 30, window_tokens=0)
        self.ids: list[int] = [i for p in pieces for i in p.ids]
        self.grids: list[torch.Tensor] = []
        self.cache = DynamicCache(config=model.model.config)
        self.round = 0
        self.last_stats: ChunkStats | None = None
        self.last_reply: list[int] = []
        self._engine_attention = {
            "text_config": model.model.config.text_config._attn_implementation,
            "vision_config": model.model.config.vision_config._attn_implementation,
        }

    @torch.inference_mode()
    def push(self, frames: Sequence[np.ndarray | Frame], t_start: float, t_end: float) -> list[Commentary]:
        """Feed one chunk; return its commentary (`last_reply` holds the reply's word ids)."""
        model, hf, device = self.model, self.model.model, self.model.device
        gen = self.generation
        clock = Stopwatch(device)
        with self._stock():
            arrays = [f.rgb if isinstance(f, Frame) else f for f in frames]
            video = video_input(arrays, self.stream, model.vision, device)
            pixels = video.pixel_values.to(hf.model.visual.dtype)
            features = hf.model.get_video_features(
                pixel_values_videos=pixels, video_grid_thw=video.grid_thw.to(device), return_dict=True
            )
            vision_ms = clock.lap()

            turn = self.conv.user_turn(
                t_start, t_end, video.num_tokens, first=self.round == 0, instruction=self.instruction
            )
            self.ids += [i for p in turn for i in p.ids]
            self.grids.append(video.grid_thw)
            input_ids = torch.tensor([self.ids], dtype=torch.long, device=device)
            cached = self.cache.get_seq_length()
            first_token = _FirstToken(device)
            out = hf.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                cache=self.cache,
                mm_encoder_outputs={"video": features},
                video_grid_thw=torch.cat(self.grids).to(device),
                second_per_grid_ts=torch.full(
                    (len(self.grids),), model.vision.temporal_patch_size / self.stream.fps, device=device
                ),
                mm_token_type_ids=(input_ids == model.special.video_pad).int() * 2,
                max_new_tokens=gen.max_new_tokens,
                min_new_tokens=gen.min_new_tokens,
                do_sample=not gen.greedy,
                temperature=gen.temperature if not gen.greedy else None,
                top_p=gen.top_p if not gen.greedy else None,
                top_k=gen.top_k if not gen.greedy else None,
                repetition_penalty=gen.repetition_penalty,
                logits_processor=LogitsProcessorList([first_token]),
                # A reply may not hold vision tokens: stock transformers reads every <|video_pad|> in the
                # ids as a video's (a random model drew one, and the next chunk's video count broke).
                suppress_tokens=[
                    model.special.video_pad,
                    model.special.vision_start,
                    model.special.vision_end,
                ],
                eos_token_id=sorted(model.special.stops),
                pad_token_id=model.special.endoftext,
            )
            started = clock.last
            total_ms = clock.lap()
        generated = out[0, len(self.ids) :].tolist()
        prefill_tokens = len(self.ids) - cached
        words, _closing, to_feed = self.conv.close_reply(generated)
        # The last sampled token is not in the cache yet: the next generate call feeds it.
        self.ids += generated + to_feed
        self.last_reply = words
        prefill_ms = first_token.ms(started)
        self.last_stats = ChunkStats(
            t_start=t_start,
            t_end=t_end,
            vision_ms=vision_ms,
            evict_ms=0.0,
            prefill_ms=prefill_ms,
            decode_ms=max(0.0, total_ms - prefill_ms),
            vision_tokens=video.num_tokens,
            prefill_tokens=prefill_tokens,
            new_tokens=len(generated),
            cached_tokens=self.cache.get_seq_length(),
            max_position=float(len(self.ids)),
            evicted_tokens=0,
        )
        self.round += 1
        return commentary(model.spec, words, t_start, t_end)

    def close(self) -> None:
        self.cache = None  # type: ignore[assignment]

    @contextmanager
    def _stock(self):
        """Stock attention everywhere, modules as written (not compiled), and SDPA without cuDNN.

        cuDNN's attention builds a new execution plan for every key length it has not seen (about
        1.2 s on an H100, docs/performance.md), and a growing cache shows it a new length at every
        token; that would measure PyTorch's plan cache, not full attention, so the flash,
        memory-efficient and math kernels are left to choose from, as on GPUs without cuDNN's.
        """
        hf = self.model.model
        hf.set_attn_implementation({"text_config": STOCK_ATTENTION, "vision_config": STOCK_ATTENTION})
        try:
            with torch.compiler.set_stance("force_eager"), sdpa_kernel(STOCK_SDPA_BACKENDS):
                yield
        finally:
            hf.set_attn_implementation(self._engine_attention)


def probe_out_of_memory(
    stream: StockStream,
    frames: Sequence[np.ndarray],
    *,
    start_seconds: float,
    limit_seconds: float = 7200.0,
    refine: int = 3,
    console=None,
) -> list[dict]:
    """Where the growing cache stops fitting: one chunk at the cache length of later stream times.

    A stream that has not run out of memory after `start_seconds` would take hours to get there,
    so the cache is filled instead (random keys and values, a history of plain text tokens) to
    the length it would have at 1.5x, 2.25x, ... the streamed time, and one real chunk is run
    on it, until one fails or `limit_seconds` is passed; then the gap is halved `refine` times.
    Returns one record per probe: stream seconds, cached tokens, whether it ran, its time and peak.
    """
    device = stream.model.device
    prefix = sum(len(p) for p in stream.conv.preamble("", 1 << 30, 0))
    per_second = (stream.cache.get_seq_length() - prefix) / max(start_seconds, 1e-9)
    stream.cache = None
    records: list[dict] = []

    def probe(seconds: float) -> bool:
        tokens = int(prefix + per_second * seconds)
        ok, total_ms = True, None
        try:
            _fill(stream, tokens)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            stream.push(frames, seconds, seconds + stream.stream.chunk_seconds)
            total_ms = stream.last_stats.total_ms
        except torch.OutOfMemoryError:
            ok = False
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        stream.cache, stream.ids = None, []
        if device.type == "cuda":
            torch.cuda.empty_cache()
        records.append(
            {"seconds": seconds, "tokens": tokens, "ok": ok, "total_ms": total_ms, "peak_memory_gib": peak}
        )
        if console is not None:
            state = f"{total_ms:.0f} ms" if ok else "out of memory"
            state += f", peak {peak:.1f} GiB" if peak is not None else ""
            console.print(f"stock at {seconds:.0f} s ({tokens:,} cached tokens): {state}")
        return ok

    good, bad, seconds = start_seconds, None, start_seconds * 1.5
    while seconds <= limit_seconds:
        if not probe(seconds):
            bad = seconds
            break
        good, seconds = seconds, seconds * 1.5
    for _ in range(refine if bad is not None else 0):
        middle = (good + bad) / 2
        if probe(middle):
            good = middle
        else:
            bad = middle
    return records


def _fill(stream: StockStream, tokens: int) -> None:
    """Give the stream a cache and a text history of `tokens` tokens (content does not change the cost)."""
    model, text = stream.model, stream.model.text
    stream.cache = DynamicCache(config=model.model.config)
    shape = (1, text.num_kv_heads, tokens, text.head_dim)
    for layer in range(text.num_layers):
        keys = torch.empty(shape, dtype=model.dtype, device=model.device).normal_()
        values = torch.empty(shape, dtype=model.dtype, device=model.device).normal_()
        stream.cache.update(keys, values, layer)
    filler = model.encode(" the")[0]
    stream.ids = [filler] * tokens
    stream.grids = []
    stream.round = 1


class _FirstToken(LogitsProcessor):
    """Notes when generate first asks for logits to be processed: the prefill forward has finished."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.at is None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.at = time.perf_counter()
        return scores

    def ms(self, since: float) -> float:
        return 0.0 if self.at is None else (self.at - since) * 1000.0


__all__ = ["StockStream", "probe_out_of_memory"]
