"""Time one offline-QA forward (evals/offline_qa.py) at the benchmarks' frame budgets, random 7B weights.

python evals/scripts/time_offline_qa.py   # on a GPU; prints seconds per question for each rule
"""

from __future__ import annotations

import time

import numpy as np
import torch

from core.builders import build_random_model
from core.config import AccelerationConfig
from evals.offline_qa import OVO_ANSWERS, OVO_PREFIX, FrameBudget, OfflineQA

RULES = {
    "OVO-Bench 480 frames at 2 FPS": (480, 2.0),
    "MVBench 64 frames": (64, 4.0),
    "Video-MME 1 fps, 768 cap": (768, 0.2),
}


def main() -> None:
    model = build_random_model("7b", dtype="bfloat16", acceleration=AccelerationConfig(compile=False))
    qa = OfflineQA(model, FrameBudget())
    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    for name, (count, fps) in RULES.items():
        frames = [frame] * count
        for _attempt in range(2):  # the first call includes one-off setup
            torch.cuda.synchronize()
            began = time.perf_counter()
            answer = qa.answer(frames, fps, "Question: which?\nA. a\nB. b", OVO_ANSWERS, OVO_PREFIX)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - began
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(
            f"{name}: {seconds:.2f} s per question, {answer.vision_tokens} vision tokens, peak {peak:.1f} GiB"
        )
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
