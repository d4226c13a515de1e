"""The Triton kernels equal their PyTorch versions.

On a CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before Triton is
imported, so in a child process); where a GPU exists they also run compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import torch
    from core.kernels import rotate_into_triton
    from core.positions import rotate, rotation

    device = "{device}"
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2 ** -7)):
        torch.manual_seed(0)
        layers, heads, capacity, dim = 3, 2, 50, 16
        buffers = torch.randn(layers, 1, heads, capacity, dim, device=device).to(dtype)
        index = torch.tensor([5, 6, 7, 20, 21, 30, 31, 32, 33, 40, 41], device=device)
        shifts = torch.tensor([-2.0] * 3 + [-7.5] * 2 + [-10.0] * 4 + [-12.25] * 2, device=device)
        inv_freq = 1.0 / (1e6 ** (torch.arange(0, dim, 2, device=device).float() / dim))
        cos, sin = rotation(shifts, inv_freq)
        moved = buffers.index_select(3, index)
        expected = buffers.clone()
        expected[:, :, :, 2:13] = rotate(moved, cos, sin)
        buffers[:, :, :, 2:13] = float("nan")  # poison: every element must be written
        rotate_into_triton(buffers[:, :, :, 2:13], moved, cos, sin)
        assert torch.equal(buffers[:, :, :, :2], expected[:, :, :, :2])  # neighbours untouched
        assert torch.equal(buffers[:, :, :, 13:], expected[:, :, :, 13:])
        err = ((buffers.float() - expected.float()).abs() / expected.float().abs().clamp(min=1)).max().item()
        assert err <= tol, (dtype, err)
        print(dtype, "max relative error", err)
    """
)


def test_rotate_kernel_equals_pytorch_rotation_in_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(device="cpu")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bfloat16 max relative error" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rotate_kernel_equals_pytorch_rotation_on_the_gpu():
    pytest.importorskip("triton")
    exec(CHECK.format(device="cuda"), {})


def test_rotate_into_falls_back_to_pytorch_off_the_gpu():
    from core.kernels import rotate_into
    from core.positions import rotate, rotation

    keys = torch.randn(2, 1, 2, 6, 8)
    cos, sin = rotation(torch.full((6,), 3.0), torch.rand(4))
    out = torch.empty_like(keys)
    rotate_into(out, keys, cos, sin)
    torch.testing.assert_close(out, rotate(keys, cos, sin), rtol=0, atol=0)
