"""The decode step over fixed-shape buffers, captured once in a CUDA graph and replayed per token.

A decode forward on a 7B model is hundreds of small kernels; launched one by one from Python they
cost several times the weight-read floor (about 5 ms on an H100). Here every shape is fixed: the
new token is written at a device-side index (`StreamLayer.write_at`) and attention runs over the
cache's whole capacity with a mask of the live slots. So one CUDA graph serves every token of the
stream; it is captured again only when the cache's buffers grow, which a streaming policy stops
doing after its first chunks. On a CPU the same step runs eagerly (tests check it against the
dynamic path).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.attention import MATMUL_DECODE
from core.cache import StreamCache
from core.model import StreamModel

# core.acceleration.DECODE_ATTENTIONS -> the SDPA backends it allows (None: no restriction).
ATTENTION_BACKENDS = {
    "matmul": None,
    "auto": None,
    "math": [SDPBackend.MATH],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
}


class StaticDecodeStep:
    """Feeds one token at a given position and returns the next logits [vocab] (float32)."""

    def __init__(
        self, model: StreamModel, cache: StreamCache, *, use_graph: bool, attention: str = "auto"
    ) -> None:
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown decode attention {attention!r}; use one of {', '.join(ATTENTION_BACKENDS)}"
            )
        self.model, self.cache = model, cache
        self.use_graph = use_graph
        self.backends = ATTENTION_BACKENDS[attention]
        self.attention = attention
        device = model.device
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.position = torch.zeros(3, 1, dtype=torch.float32, device=device)
        self.write_at = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captures = 0
        self._capacity = -1
        self._modules = -1  # the model's modules_version the graph was captured with
        self._slots = torch.empty(0, device=device)
        self._logits: torch.Tensor | None = None

    @torch.inference_mode()
    def __call__(self, token: torch.Tensor, position: float) -> torch.Tensor:
        """Feed one token and count it in the cache; see `launch`."""
        logits = self.launch(token, position)
        self.commit()
        return logits

    @torch.inference_mode()
    def launch(self, token: torch.Tensor, position: float) -> torch.Tensor:
        """Start the forward of `token` (a device scalar: no host round trip) at `position`, writing its
        keys and values into the slot after the cached ones; return the logits [vocab] (float32).

        The cache's bookkeeping is left to the caller (`StreamCache.append_token`, then `commit`), so a
        step can be started before the host knows the token; one never committed is overwritten by
        the next write.
        """
        cache = self.cache
        if cache.capacity != self._capacity or self._modules != self.model.modules_version:
            self._prepare()
        self.token.copy_(token.view(1))
        self.position.fill_(position)
        self.write_at.fill_(cache.length)
        if self.graph is not None:
            self.graph.replay()
            return self._logits
        with self._decode_attention():
            return self._step()

    def commit(self) -> None:
        """Count the launched token as cached."""
        self.cache.advance(1)

    def _step(self) -> torch.Tensor:
        mask = (self._slots <= self.write_at).view(1, 1, 1, -1)  # the live slots and the new one
        layers = self.cache.layers
        for layer in layers:
            layer.write_at = self.write_at
        try:
            if self.backends is None:
                return self.model.forward(
                    self.model.embed(self.token), self.position, self.cache, attention_mask=mask
                )
            with sdpa_kernel(self.backends):
                return self.model.forward(
                    self.model.embed(self.token), self.position, self.cache, attention_mask=mask
                )
        finally:
            for layer in layers:
                layer.write_at = None

    @contextmanager
    def _decode_attention(self):
        """Switch the language model to the decode attention while a step runs or is captured."""
        if self.attention != "matmul":
            yield
            return
        hf = self.model.model
        previous = hf.config.text_config._attn_implementation
        hf.set_attn_implementation({"text_config": MATMUL_DECODE})
        try:
            yield
        finally:
            hf.set_attn_implementation({"text_config": previous})

    def _prepare(self) -> None:
        """(Re)build for the cache's current buffers (a new capacity means new addresses and shapes) and
        the model's modules (a switch to the compiled ones means another graph)."""
        self._capacity, self._modules = self.cache.capacity, self.model.modules_version
        self._slots = torch.arange(self._capacity, device=self.model.device)
        if self.graph is not None:
            # A step started ahead (overlap) may still be running the old graph: let it finish before
            # the graph and its memory pool are given up.
            torch.cuda.synchronize(self.model.device)
        self.graph, self._logits = None, None
        if not self.use_graph:
            return
        self.write_at.fill_(self.cache.length)  # warm-up writes land in the slot the next token fills
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with self._decode_attention():
            with torch.cuda.stream(side):
                for _ in range(2):  # let lazy initialisation (cuBLAS handles, kernel choice) happen outside
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other sessions' threads run on
                self._logits = self._step()
        self.graph = graph
        self.captures += 1
