"""Where the seconds of loading a 7B folder onto a GPU go (issue 18): the same folder read four ways.

    python evals/scripts/load_breakdown.py FOLDER [--out DIR]

1. reading every shard's bytes (page cache or disk: the floor of any loading),
2. safetensors `load_file(device="cuda")` of every shard (bytes to GPU tensors, no model),
3. transformers `from_pretrained(dtype=bfloat16, device_map="cuda")` (what core/loading.py does),
4. the model built on the meta device and the shards' tensors assigned (`load_state_dict(assign=True)`).
Each is timed after `torch.cuda.synchronize()`; writes DIR/load.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def timed(label: str, fn, rows: list) -> object:
    torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    rows.append({"step": label, "s": round(time.perf_counter() - start, 2)})
    print(f"| {label} | {rows[-1]['s']} |", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/load-breakdown"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shards = sorted(args.folder.glob("*.safetensors"))
    size = sum(s.stat().st_size for s in shards)
    rows: list = []
    print(f"{len(shards)} shards, {size / 1e9:.2f} GB\n\n| step | s |\n|---|---|")
    timed(
        "import transformers (model class)",
        lambda: __import__("transformers").Qwen2_5_VLForConditionalGeneration,
        rows,
    )

    def read_all() -> int:
        # into one reused buffer: a new 64 MB bytes per read is bound by allocating it (~1.7 GB/s)
        n, buffer = 0, bytearray(16 << 20)
        for s in shards:
            with open(s, "rb", buffering=0) as f:
                while k := f.readinto(buffer):
                    n += k
        return n

    timed("read bytes", read_all, rows)
    from safetensors.torch import load_file

    def to_gpu() -> dict:
        out = {}
        for s in shards:
            out.update(load_file(s, device="cuda"))
        return out

    state = timed("safetensors load_file to cuda", to_gpu, rows)
    del state
    torch.cuda.empty_cache()
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    model = timed(
        "from_pretrained(device_map=cuda)",
        lambda: Qwen2_5_VLForConditionalGeneration.from_pretrained(
            args.folder, dtype=torch.bfloat16, device_map="cuda"
        ),
        rows,
    )
    del model
    torch.cuda.empty_cache()
    config = AutoConfig.from_pretrained(args.folder)

    def meta_then_assign() -> torch.nn.Module:
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        state = to_gpu()
        model.load_state_dict(state, strict=False, assign=True)
        return model

    timed("meta model + assign safetensors tensors", meta_then_assign, rows)
    (args.out / "load.json").write_text(json.dumps({"gb": size / 1e9, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
