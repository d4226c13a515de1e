"""The vision tower's per-chunk fast path: the stock Qwen2.5-VL modules with the overhead taken out.

Stock transformers spends most of a chunk's vision time outside the arithmetic: it recomputes
the window and rotary indices from the grid in Python every call, and with SDPA it runs one
attention call per 112-px window (45 windows x 28 layers for an HD chunk). Here, through
transformers' public extension points:

- the indices are computed once per frame grid and passed in as precomputed kwargs
  (`transformers.vision_utils`), with the segment bounds kept on the host;
- the vision config's attention is `core.attention.batched_varlen_attention`, which receives all
  segments at once and runs equal-length windows as one batched SDPA call;
- on a GPU the whole tower is captured in a CUDA graph per frame grid and replayed per chunk.

The result equals the stock path (a test compares them); only the number of launches changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class _Plan:
    """Everything about one frame grid that does not depend on the pixels."""

    kwargs: dict
    graph: torch.cuda.CUDAGraph | None = None
    pixels: torch.Tensor | None = None  # the graph's static input
    features: torch.Tensor | None = None  # the graph's static output


class VisionRunner:
    """Runs `get_video_features` for one chunk: precomputed indices, batched windows, a graph per grid."""

    def __init__(self, model: nn.Module, *, use_graph: bool) -> None:
        """`model` is a Qwen2_5_VLForConditionalGeneration whose vision config uses VARLEN_VISION attention."""
        self.model = model
        self.use_graph = use_graph
        self._plans: dict[tuple[int, ...], _Plan] = {}
        # Each frame grid met ([1, 3], on the host) and its patches' shape, first first; and who is told of
        # each new one (the background compilation compiles the tower for the first).
        self.grids: list[tuple[torch.Tensor, torch.Size]] = []
        self.on_new_grid: Callable[[torch.Tensor, torch.Size], None] | None = None

    def reset(self, *, use_graph: bool) -> None:
        """Forget every grid's plan and graph (the modules changed: the next call of each grid plans and
        captures anew)."""
        self.use_graph = use_graph
        self._plans.clear()

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [patches, C*T*P*P] on the model's device, grid_thw [1, 3] (host) -> features [n, hidden]."""
        key = (*grid_thw.flatten().tolist(), pixel_values.shape[0])
        plan = self._plans.get(key)
        if plan is None:
            self.grids.append((grid_thw.detach().cpu().clone(), pixel_values.shape))
            if self.on_new_grid is not None:
                self.on_new_grid(*self.grids[-1])
            plan = self._plans[key] = _Plan(self._precompute(grid_thw.cpu()))
            if self.use_graph:
                self._capture(plan, pixel_values, grid_thw)
        if plan.graph is None:
            return self._run(plan, pixel_values, grid_thw)
        plan.pixels.copy_(pixel_values)
        plan.graph.replay()
        return plan.features.clone()  # the graph's output buffer is overwritten by the next chunk

    def _run(self, plan: _Plan, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        visual = self.model.model.visual
        out = self.model.model.get_video_features(
            pixel_values_videos=pixel_values.to(visual.dtype),
            video_grid_thw=grid_thw.cpu(),
            **dict(plan.kwargs),
        )
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.cat(list(features), dim=0) if isinstance(features, (list, tuple)) else features

    def _precompute(self, grid_thw: torch.Tensor) -> dict:
        from transformers.vision_utils import (
            get_vision_cu_seqlens,
            get_vision_position_ids,
            get_vision_window_index,
        )

        visual = self.model.model.visual
        config, device = visual.config, visual.patch_embed.proj.weight.device
        cu_seqlens = get_vision_cu_seqlens(grid_thw)
        window_index, cu_window_seqlens = get_vision_window_index(
            grid_thw, config.spatial_merge_size, config.window_size, config.patch_size
        )
        return {
            "position_ids": get_vision_position_ids(grid_thw, config.spatial_merge_size).to(device),
            "cu_seqlens": cu_seqlens,  # host: read for shapes only
            "max_seqlen": int((cu_seqlens[1:] - cu_seqlens[:-1]).max()),
            "window_index": window_index.to(device),
            "cu_window_seqlens": cu_window_seqlens.cpu(),
            "max_window_seqlen": int((cu_window_seqlens[1:] - cu_window_seqlens[:-1]).max()),
        }

    def _capture(self, plan: _Plan, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> None:
        pixels = pixel_values.clone()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._run(plan, pixels, grid_thw)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # Other threads (sessions resizing their frames) keep launching work during the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                features = self._run(plan, pixels, grid_thw)
        except Exception as exc:  # e.g. a transformers change that syncs inside the tower: run it eagerly
            log.warning("vision tower could not be captured in a CUDA graph (%s); running it eagerly", exc)
            return
        plan.graph, plan.pixels, plan.features = graph, pixels, features
