"""The Triton kernels equal their PyTorch versions.

On a CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before Triton is
imported, so in a child process); where a GPU exists they also run compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_rotate_kernel_equals_pytorch_rotation_in_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kernel_check.py"), "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bfloat16 max relative error" in result.stdout


@pytest.mark.gpu
def test_rotate_kernel_equals_pytorch_rotation_on_the_gpu():
    pytest.importorskip("triton")
    from kernel_check import check_rotation

    assert len(check_rotation("cuda")) == 2


def test_rotate_into_falls_back_to_pytorch_off_the_gpu():
    from core.kernels import rotate_into
    from core.positions import rotate, rotation

    keys = torch.randn(2, 1, 2, 6, 8)
    cos, sin = rotation(torch.full((6,), 3.0), torch.rand(4))
    out = torch.empty_like(keys)
    rotate_into(out, keys, cos, sin)
    torch.testing.assert_close(out, rotate(keys, cos, sin), rtol=0, atol=0)
