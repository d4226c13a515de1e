"""Write full-size Qwen2.5-VL-7B random weights as a `save_pretrained` folder (no download).

    python trainer/scripts/random_7b.py DIR

The trainer loads checkpoints from folders, so runs at full size without the real checkpoint
(speed, memory, multi-GPU checks) start from this one. bf16, built on the GPU when there is one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from core.builders import _processor, build_tokenizer, qwen25_vl_7b_config


def main(directory: str) -> None:
    path = Path(directory)
    if (path / "config.json").is_file():
        print(f"{path} exists")
        return
    begin = time.perf_counter()
    # The plain transformers model: a StreamModel would adapt it for inference (padded vision MLP).
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(qwen25_vl_7b_config(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _processor(tokenizer, 100 * 28 * 28, 768 * 28 * 28).save_pretrained(path)
    print(f"wrote {path} in {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1])
