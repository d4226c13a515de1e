"""Write full-size Qwen2.5-VL-7B random weights as a `save_pretrained` folder (no download).

    python trainer/scripts/random_7b.py DIR

The trainer loads checkpoints from folders, so runs at full size without the real checkpoint
(speed, memory, multi-GPU checks) start from this one. bf16, built on the GPU when there is one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from core.builders import write_random_checkpoint


def main(directory: str) -> None:
    path = Path(directory)
    if (path / "config.json").is_file():
        print(f"{path} exists")
        return
    begin = time.perf_counter()
    write_random_checkpoint(path, "7b", dtype="bfloat16")
    print(f"wrote {path} in {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1])
