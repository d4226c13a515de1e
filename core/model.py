"""The model adapter: a loaded Qwen2.5-VL seen through the few calls the engine makes.

`StreamModel` exposes only what the engine needs through the stock transformers modules: the
vision tower (`get_video_features`), the token embeddings, the language model driven with
`inputs_embeds`, explicit 3-D `position_ids` and a `Cache` object, and the LM head on the last
position. What the checkpoint is without its weights (tokenizer, special ids, vision and cache
shapes) is `core.spec.ModelSpec`; loading and device/dtype/attention resolution are in
`core.loading`; tiny and random-weight models are built by `core.builders`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from functools import cached_property
from typing import Any

import torch
from torch import nn

from core import warmup as warmup_module
from core.acceleration import Acceleration
from core.config import AccelerationConfig
from core.spec import ModelSpec, SpecialTokens, TextSpec, VisionSpec
from core.warmup import CompileWarmup, compiler_works

log = logging.getLogger(__name__)

MATMUL_ALIGNMENT = 64  # elements: keeps bf16 rows 16-byte aligned for cuBLAS's Hopper kernels


class StreamModel:
    """A loaded Qwen2.5-VL plus its tokenizer, seen through the few calls the engine makes."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        name: str,
        processor: Any | None = None,
        acceleration: AccelerationConfig | None = None,
    ) -> None:
        """`acceleration` is what engines on this model ask for unless they ask otherwise (`accelerate`)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name
        self.spec = ModelSpec.from_config(model.config, tokenizer, name, processor)
        from core import attention
        from core.vision import VisionRunner

        if self.model.config._attn_implementation == "sdpa":
            # The engine's own SDPA calls for its three attention shapes (core/attention.py).
            attention.register()
            self.model.set_attn_implementation(
                {"text_config": attention.CAUSAL_PREFILL, "vision_config": attention.VARLEN_VISION}
            )
        self._vision = VisionRunner(self.model, use_graph=False)
        if self.device.type == "cuda":
            for block in self.model.model.visual.blocks:
                align_mlp_width(block.mlp, MATMUL_ALIGNMENT)
        self.requested_acceleration = acceleration or AccelerationConfig()
        self.compiled = False  # the language model's norms and MLPs run compiled
        self.warmup: CompileWarmup | None = None  # compiling in the background (core/warmup.py)
        self._settled = False  # the warm-up's result has been switched to
        # Counts switches of how the modules run: a CUDA graph captured before one is captured again.
        self.modules_version = 0
        self._triton_ready = False
        language_model = self.model.model.language_model
        # transformers renamed `past_key_values` to `cache`; accept checkpoints on either side of it.
        params = inspect.signature(language_model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def accelerate(self, requested: AccelerationConfig) -> Acceleration:
        """Decide what runs for an engine on this model, prepare the model for it, and log it once.

        Compilation is kept once done (the compiled modules are shared by every engine on the model).
        With `compile_in_background` (the default where compiling is on) it runs on a thread while the
        engine runs eagerly (`phase`), and the engine switches when it is done (`settle`).
        """
        from core import kernels
        from core.compile_cache import compile_cache_dir, use_compile_cache

        decided = Acceleration.decide(requested, self.device)
        if decided.compile or decided.triton:  # before anything compiles: the caches outlive the process
            use_compile_cache(compile_cache_dir(self.model.config, self.dtype, self.device))
        if decided.triton and not self._triton_ready:
            kernels.warm_up(self.text.head_dim, self.dtype, self.device)
            self._triton_ready = True
        if decided.compile and not self.compiled and self.warmup is None:
            if decided.compile_in_background:
                self.warmup = CompileWarmup(self)
                for grid in self._vision.grids:  # met by an earlier engine on this model
                    self.warmup.saw_grid(*grid)
                self._vision.on_new_grid = self.warmup.saw_grid
                self.warmup.start()
            elif not self.compile_modules():
                decided = decided.without("compile", "torch.compile does not work here (see the warning)")
        self._vision.use_graph = decided.cuda_graphs
        if self.warmup is not None and self.warmup.finished.is_set() and not self.warmup.ok:
            decided = decided.without("compile", self.warmup.error)
        log.info("%s", decided.describe())
        return decided

    @property
    def warming(self) -> bool:
        """Compiling in the background, not yet switched to (the engine runs its eager phase)."""
        return self.warmup is not None and not self._settled

    def phase(self, decided: Acceleration) -> Acceleration:
        """What runs now of what was `decided`: no compile while compiling in the background (the rest runs
        over the eager modules) or where compilation failed."""
        if self.warming:
            return decided.while_compiling()
        if decided.compile and not self.compiled:
            return decided.without("compile", self.warmup.error if self.warmup else "not compiled")
        return decided

    def settle(self) -> bool:
        """Switch to the compiled modules if the background compilation has finished; True when it switched.

        Call only where no model work runs (the scheduler's thread between batches, or under the engine's
        lock): the modules change how they are called, and the tower's CUDA graphs are captured anew."""
        warmup = self.warmup
        if warmup is None or self._settled or not warmup.finished.is_set():
            return False
        self._settled = True
        self._vision.on_new_grid = None
        if self.device.type == "cuda":
            # A lone session's step started ahead (overlap) may still run on the GPU: the switch gives up
            # the tower's graphs, and the model's modules change under it.
            torch.cuda.synchronize(self.device)
        if not warmup.ok:
            log.info("staying with the uncompiled modules: %s", warmup.error)
            return True
        self.compile_modules(vision=warmup.vision_ok, probe=False)
        self.modules_version += 1
        self._vision.reset(use_graph=self._vision.use_graph)
        log.info("switched to the compiled modules after %.1f s of background compilation", warmup.seconds)
        return True

    def compile_modules(self, *, vision: bool = True, probe: bool = True) -> bool:
        """Fuse the elementwise work between the matmuls with `torch.compile` on stock submodules.

        A decode step is memory-bound and its RMSNorms (float32 upcasts, a mean, a rescale) and
        SiLU-gated MLP glue are dozens of tiny kernels per layer; a vision block's norms, float32
        rotary and MLP glue are the same over 2,880 patches. Compiled, each chain becomes one or two
        kernels (docs/performance.md has the measured gain). The language model's norms and MLPs and
        (with `vision`) the vision blocks and merger are compiled; attention and the cache stay eager.
        Compilation happens at the first call of each shape (the background warm-up makes those calls
        first, core/warmup.py), and a platform where it cannot work (`probe`) is left uncompiled with a
        warning.
        """
        if self.compiled:
            return True
        if probe and not compiler_works(self.device):
            return False
        language_model, visual = self.model.model.language_model, self.model.model.visual
        for layer in language_model.layers:
            for part in (layer.input_layernorm, layer.post_attention_layernorm, layer.mlp):
                part.compile(backend=warmup_module.COMPILE_BACKEND)
        language_model.norm.compile(backend=warmup_module.COMPILE_BACKEND)
        if vision:
            for block in visual.blocks:
                block.compile(backend=warmup_module.COMPILE_BACKEND)
            visual.merger.compile(backend=warmup_module.COMPILE_BACKEND)
        self.compiled = True
        return True

    def _stance(self, tokens: int):
        """Prefill runs the compiled modules' Python originals.

        Each compiled module checks its guards on the host at every call (85 calls a forward). In the
        CUDA graphs (decode, vision) that is paid once, at capture; the prefill runs eagerly with a
        new length every chunk, and there the checks cost more than the fusion saves (an H100 prefill:
        50.8 ms compiled vs 40.2 ms eager, docs/performance.md).
        """
        if self.compiled and tokens > 1:
            return torch.compiler.set_stance("force_eager")
        return contextlib.nullcontext()

    # -- facts -----------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    @cached_property
    def inv_freq(self) -> torch.Tensor:
        """Rotary inverse frequencies [head_dim / 2], float32, as the model's rotary module uses them."""
        rotary = self.model.model.language_model.rotary_emb
        return rotary.inv_freq.detach().to(self.device, torch.float32).clone()

    @property
    def attention_backend(self) -> str:
        return self.model.config.text_config._attn_implementation

    @property
    def ragged_prefill(self) -> bool:
        """Whether several sessions' prefills can run as one forward (the engine's own attention runs
        the prefill: `core.attention.causal_prefill_attention` handles ragged segments)."""
        from core import attention

        return self.attention_backend == attention.CAUSAL_PREFILL

    @property
    def special(self) -> SpecialTokens:
        return self.spec.special

    @property
    def vision(self) -> VisionSpec:
        return self.spec.vision

    @property
    def text(self) -> TextSpec:
        return self.spec.text

    def encode(self, text: str) -> list[int]:
        return self.spec.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.spec.decode(ids)

    # -- the three calls the engine makes ---------------------------------------------------------

    @torch.inference_mode()
    def encode_video(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Vision tower: patchified frames [patches, C*T*P*P] and grid [k, 3] (k chunks) -> merged tokens
        [n, hidden]."""
        return self._vision(pixel_values, grid_thw).to(self.dtype)

    @torch.inference_mode()
    def encode_videos(
        self, pixel_values: list[torch.Tensor], grids: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """The vision tower over several chunks in one call (each chunk's patches and grid [1, 3]); the
        tower keeps chunks apart (windows and full attention within each), so each gets what
        `encode_video` gives it alone. Returns each chunk's merged tokens [n_i, hidden]."""
        if len(pixel_values) == 1:
            return [self.encode_video(pixel_values[0], grids[0])]
        grid = torch.cat(grids)
        features = self.encode_video(torch.cat(pixel_values), grid)
        merge = self.vision.merge_size**2
        return list(features.split([int(g.prod()) // merge for g in grid]))

    @torch.inference_mode()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [n, hidden] for ids [n]."""
        return self.model.model.get_input_embeddings()(ids)

    @torch.inference_mode()
    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        all_logits: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the language model over new tokens [n, hidden] at positions [3, n], appending to `cache`.

        Returns float32 logits of the last position [vocab] (or of every position [n, vocab]).
        `attention_mask` [1, 1, n, keys] (bool, True = attend) replaces the causal mask the model
        would build from the cache's length; the static decode step uses it.
        """
        with self._stance(embeds.shape[0]):
            out = self.model.model.language_model(
                inputs_embeds=embeds.unsqueeze(0),
                position_ids=positions.unsqueeze(1),
                attention_mask=attention_mask,
                use_cache=True,
                **{self._cache_kwarg: cache},
            )
        hidden = out.last_hidden_state[0]
        hidden = hidden if all_logits else hidden[-1]
        return self.model.lm_head(hidden).float()

    @torch.inference_mode()
    def forward_ragged(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        caches: list[Any],
        lengths: list[int],
        all_logits: list[bool] | None = None,
    ) -> list[torch.Tensor]:
        """The prefills of several sessions in one forward (core/ragged.py): embeds [sum(lengths), hidden]
        at positions [3, sum(lengths)], segment i appending to `caches[i]` and attending to it only.

        Returns each segment's float32 logits of its last position [vocab] (or of every position
        [n, vocab] where `all_logits[i]`)."""
        from core.ragged import RaggedCache

        if not self.ragged_prefill:
            raise RuntimeError(
                "a ragged prefill needs the engine's SDPA attention (attn_implementation='sdpa')"
            )
        kinds = getattr(self.model.config.text_config, "layer_types", None) or ["full_attention"]
        no_mask = dict.fromkeys(set(kinds))
        with self._stance(embeds.shape[0]):
            out = self.model.model.language_model(
                inputs_embeds=embeds.unsqueeze(0),
                position_ids=positions.unsqueeze(1),
                attention_mask=no_mask,  # each segment's causal bounds are the attention function's
                use_cache=True,
                **{self._cache_kwarg: RaggedCache(caches, lengths)},
            )
        hidden = out.last_hidden_state[0]
        ends = torch.tensor(lengths).cumsum(0) - 1
        last = self.model.lm_head(hidden[ends.to(hidden.device)]).float()
        result, start = [], 0
        for i, n in enumerate(lengths):
            if all_logits is not None and all_logits[i]:
                result.append(self.model.lm_head(hidden[start : start + n]).float())
            else:
                result.append(last[i])
            start += n
        return result

    @torch.inference_mode()
    def forward_rows(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        attention_mask: torch.Tensor,
        captured: bool = False,
    ) -> torch.Tensor:
        """One new token for each of B streams: embeds [B, hidden] at positions [3, B], each row attending
        by its own bool mask [B, 1, 1, keys] to what `cache` returns for it; float32 logits [B, vocab].

        `captured`: the step is being captured in a CUDA graph, where the compiled modules' guard checks
        are paid once; eager batched steps run the modules' originals (each new batch size would compile)."""
        rows = 1 if captured else embeds.shape[0]
        with self._stance(2 if rows > 1 else 1), self.decode_attention():
            out = self.model.model.language_model(
                inputs_embeds=embeds.unsqueeze(1),
                position_ids=positions.unsqueeze(2),
                attention_mask=attention_mask,
                use_cache=True,
                **{self._cache_kwarg: cache},
            )
        return self.model.lm_head(out.last_hidden_state[:, -1]).float()

    @contextlib.contextmanager
    def decode_attention(self):
        """The language model's attention switched to the decode kernel while a step runs or is captured:
        query heads that share a key head stacked as rows, each key read once (SDPA with a mask and shared
        key heads falls back to a kernel that copies every key head per query head)."""
        from core.attention import CAUSAL_PREFILL, MATMUL_DECODE

        if self.attention_backend != CAUSAL_PREFILL:
            yield
            return
        self.model.set_attn_implementation({"text_config": MATMUL_DECODE})
        try:
            yield
        finally:
            self.model.set_attn_implementation({"text_config": CAUSAL_PREFILL})


def align_mlp_width(mlp: nn.Module, multiple: int) -> None:
    """Pad a gated MLP's hidden width with zero units up to a multiple of `multiple`, in place.

    The Qwen2.5-VL vision MLP is 3,420 wide: rows of 3,420 bf16 values are not 16-byte aligned, so
    cuBLAS cannot use its Hopper kernels and falls back to an Ampere one at ~190 TFLOP/s (12.8 of a
    chunk's ~19 ms of vision on an H100, docs/performance.md). A padded unit has zero gate and up
    weights and biases and a zero down-projection column: act(0) * 0 = 0 adds nothing, so outputs
    are unchanged. For inference only: the module no longer matches its config's width.
    """
    gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    width = gate.out_features
    pad = -width % multiple
    if pad == 0:
        return
    with torch.no_grad():
        for linear in (gate, up):
            linear.weight = nn.Parameter(
                torch.cat([linear.weight, linear.weight.new_zeros(pad, linear.in_features)]),
                requires_grad=False,
            )
            if linear.bias is not None:
                linear.bias = nn.Parameter(
                    torch.cat([linear.bias, linear.bias.new_zeros(pad)]), requires_grad=False
                )
            linear.out_features = width + pad
        down.weight = nn.Parameter(
            torch.cat([down.weight, down.weight.new_zeros(down.out_features, pad)], dim=1),
            requires_grad=False,
        )
        down.in_features = width + pad
    mlp.intermediate_size = width + pad
