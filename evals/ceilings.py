"""`python -m evals ceilings`: the two hardware ceilings every speed figure is judged against.

bf16 matrix-multiply rate (TFLOP/s, an 8192^3 product on random data) and device copy bandwidth
(GB/s, bytes read plus bytes written by a 2 GiB device-to-device copy), timed with CUDA events,
median of repeats after warm-up. On a CPU it reports the same two numbers for the CPU.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from core.cli_args import path_arg
from core.paths import make_output_folder

if TYPE_CHECKING:  # torch loads in run (evals/registry.py says why)
    import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--out",
        type=path_arg,
        default=None,
        help="write ceilings.json into this folder (another run's folder too)",
    )


def measure(device: torch.device) -> dict:
    import torch

    from evals.timing import median_ms

    cuda = device.type == "cuda"
    n = 8192 if cuda else 1024
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmul_ms = median_ms(lambda: a @ b, device)
    size = (2 if cuda else 0.25) * 2**30
    src = torch.randn(int(size // 2), device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), device)
    return {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "matmul_dtype": str(dtype),
        "matmul_tflops": 2 * n**3 / (matmul_ms / 1000) / 1e12,
        "copy_gbps": 2 * src.numel() * src.element_size() / (copy_ms / 1000) / 1e9,
    }


def run(args: argparse.Namespace) -> int:
    from core.loading import resolve_device

    if args.out:  # before the measurement, which takes a while
        make_output_folder(args.out, "the output folder (--out)")
    result = measure(resolve_device(args.device))
    print(json.dumps(result, indent=1))
    if args.out:
        (args.out / "ceilings.json").write_text(json.dumps(result, indent=1))
    return 0
