"""Compilation off the critical path: the first chunks run eagerly while a thread compiles, then a switch.

torch.compile of the model's norms, MLPs and vision blocks (`StreamModel.compile_modules`) costs
seconds per process even with warm caches, and a minute for a 7B model the first time on a GPU. Done
at the first chunk it delays the first commentary by all of that. Instead `CompileWarmup` compiles on
its own thread, on shallow copies of the modules (the same classes and parameters, each copy with its
own compiled entry point) called with the shapes the stream will use:

- the language model's norms and MLP at decode shapes: one row (a session's own step) and two rows
  (which makes the batch dimension dynamic, as the batched steps' graphs need);
- the vision tower for the first frame grid the stream shows: it cannot be known before frames arrive.

It starts when the first chunk is done (or after `FIRST_CHUNK_WAIT_S` without one): Dynamo's tracing is
Python that holds the interpreter lock for long stretches, and the first chunk, which captures the
eager modules' CUDA graphs, would wait for it; the chunks after it replay graphs and barely need the
lock. By then the first frame grid is known too.

The compiler's first use costs more than any later one: importing Dynamo, Inductor and Triton, building
Inductor's pattern tables, starting the toolchain. Imports unmarshal and run module code in long C
stretches that never hand the interpreter lock over, so a serving thread waits through each whole
(on a CPU: one 0.43 s stall of a thread doing 7 ms of Python work, against 0.08 s once that first use
was behind it; on the H200 the chunk during which compilation started took 2.8-3.9 s). So
`prewarm_compiler`, called by `core.loading.load_model` before the weights load, does that first use
(the probe of `compile_works`) on a thread while the disk reads, and the warm-up takes its answer.

Dynamo keeps compiled code per function with guards on the module's type and structure, not on which
instance it is, and Inductor and Triton keep their output in their caches (`core.compile_cache`). So
when the serving side later calls `.compile()` on the real modules (`StreamModel.settle`, at a point
where no model work runs), their first calls find everything compiled.

Until the switch the engine runs everything else it decided over the eager modules (the phase
`StreamModel.phase` reports), CUDA graphs included: an eager decode step costs Python tens of
milliseconds per token, a replayed one the GPU's time. The switch bumps `modules_version`, and each
graph (the tower's per grid, a session's step, the batched steps') is captured again at its next use.
This thread runs its GPU work on a stream of its own; the captures check only their own thread's
calls, so the two may overlap. The switch changes no tokens of a greedy session beyond the compiler's
own rounding (tests/test_warmup.py checks it with a backend that keeps the arithmetic, and on a GPU
with Inductor in float32).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
import types
from concurrent.futures import Future
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from core.model import StreamModel

log = logging.getLogger(__name__)

COMPILE_BACKEND = "inductor"  # torch.compile's backend for every compiled module (tests use "aot_eager")
FIRST_CHUNK_WAIT_S = 60.0  # the warm-up starts at the first chunk's end, or after this long without one


class CompileWarmup:
    """Compiles a model's compiled parts on a background thread; see the module docstring."""

    def __init__(self, model: StreamModel) -> None:
        self.model = model
        self.finished = threading.Event()
        self.ok = False  # the language model's modules compiled and ran
        self.vision_ok = False  # the vision tower's too (a grid came in time)
        self.error = ""  # why compilation does not work here, when it does not
        self.seconds = 0.0
        self._grids: list[tuple[torch.Tensor, torch.Size]] = []
        self._first_chunk = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Compile on a daemon thread (an interpreter exiting mid-compile does not wait for it)."""
        self._thread = threading.Thread(target=self.run, name="streamvlm-compile", daemon=True)
        self._thread.start()

    def saw_grid(self, grid_thw: torch.Tensor, pixels: torch.Size) -> None:
        """The vision tower met a new frame grid ([1, 3]) whose patches are `pixels` [patches, width]
        (called by its runner)."""
        if not self._grids:
            self._grids.append((grid_thw, pixels))

    def chunk_done(self) -> None:
        """A chunk of the stream is done (the engine calls it after each): the warm-up may start."""
        self._first_chunk.set()

    def run(self) -> None:
        """Compile everything this warm-up covers, then set `finished` (also when it failed)."""
        self._first_chunk.wait(FIRST_CHUNK_WAIT_S)
        started = time.perf_counter()
        device = self.model.device
        try:
            with torch.inference_mode(), _own_stream(device):
                if not compiler_works(device):
                    self.error = "torch.compile does not work here (see the warning)"
                    return
                self._warm_language()
                self.ok = True
                log.info("compiled the language model in %.1f s", time.perf_counter() - started)
                if self._grids:
                    self._warm_vision(*self._grids[0])
                    self.vision_ok = True
                else:
                    log.info("no frames before the warm-up started: the vision tower stays uncompiled")
        except Exception as exc:  # any failure leaves the model eager, never the stream stopped
            self.error = f"compilation failed ({_said(exc)})"
            log.warning("torch.compile failed; running uncompiled: %s", self.error)
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # nothing of this thread's is left on the GPU at the switch
            self.seconds = time.perf_counter() - started
            self.finished.set()

    def _warm_language(self) -> None:
        model = self.model
        layer = model.model.model.language_model.layers[0]
        parts = [
            _compiled_copy(m) for m in (layer.input_layernorm, layer.post_attention_layernorm, layer.mlp)
        ]
        hidden = model.text.hidden_size
        for rows in (1, 2):  # one row, then two: the batch dimension becomes dynamic, as bucket captures need
            x = torch.zeros(rows, 1, hidden, dtype=model.dtype, device=model.device)
            for part in parts:
                part(x)

    def _warm_vision(self, grid_thw: torch.Tensor, pixels: torch.Size) -> None:
        from core.vision import VisionRunner

        model = self.model
        outer = model.model.model
        visual = copy.copy(outer.visual)
        visual._modules = dict(visual._modules)
        visual._modules["blocks"] = nn.ModuleList([_compiled_copy(b) for b in outer.visual.blocks])
        visual._modules["merger"] = _compiled_copy(outer.visual.merger)
        inner = copy.copy(outer)
        inner._modules = dict(inner._modules)
        inner._modules["visual"] = visual
        runner = VisionRunner(types.SimpleNamespace(model=inner), use_graph=False)
        runner(torch.zeros(pixels, dtype=model.dtype, device=model.device), grid_thw)


_prewarms: dict[tuple, Future] = {}  # by (device kind, backend): the answer is the backend's
_prewarm_lock = threading.Lock()


def prewarm_compiler(device: torch.device) -> None:
    """Start the compiler's first use on `device`'s kind (the `compile_works` probe) on a daemon thread,
    once per process; `compiler_works` waits for its answer. See the module docstring."""
    with _prewarm_lock:
        key = (device.type, COMPILE_BACKEND)
        if key in _prewarms:
            return
        future: Future = Future()
        _prewarms[key] = future

    def probe() -> None:
        # compile_works catches what compiling raises; anything else also means: not working here
        try:
            with torch.inference_mode():
                future.set_result(compile_works(device))
        except BaseException as exc:
            future.set_result(False)
            log.debug("compiler prewarm failed: %s", exc)

    threading.Thread(target=probe, name="streamvlm-compiler-prewarm", daemon=True).start()


def compiler_works(device: torch.device) -> bool:
    """Whether torch.compile works on `device`: the prewarm's answer when one was started, else the probe."""
    future = _prewarms.get((device.type, COMPILE_BACKEND))
    return future.result() if future is not None else compile_works(device)


def compile_works(device: torch.device) -> bool:
    """Compile and run one small function first: torch.compile needs Triton (GPU) or a C compiler (CPU)."""
    try:
        probe = torch.compile(lambda x: torch.nn.functional.silu(x) * x + 1, backend=COMPILE_BACKEND)
        probe(torch.ones(8, device=device))
        return True
    except Exception as exc:  # any toolchain failure means: run the stock modules eagerly
        log.warning("torch.compile does not work here (%s); running uncompiled", _said(exc))
        return False


def _said(exc: Exception) -> str:
    """An exception's message on one line, short (compiler errors span many lines)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _compiled_copy(module: nn.Module) -> nn.Module:
    """A shallow copy of `module` (its parameters and submodules shared) with its own compiled entry point,
    so compiling it leaves the original's calls eager."""
    twin = copy.copy(module)
    twin.compile(backend=COMPILE_BACKEND)
    return twin


def _own_stream(device: torch.device):
    """This thread's GPU work on a stream of its own (the serving threads keep theirs)."""
    return torch.cuda.stream(torch.cuda.Stream(device)) if device.type == "cuda" else contextlib.nullcontext()
