"""The fused rotation kernel against `core.positions.rotate`, as a function the kernel tests run in
Triton's interpreter (a child process, since TRITON_INTERPRET must be set before Triton is imported)
and compiled on a GPU.

    TRITON_INTERPRET=1 python tests/kernel_check.py cpu
"""

from __future__ import annotations

import sys

import torch


def check_rotation(device: str) -> list[str]:
    """Rotate poisoned slices of a cache-shaped buffer with the kernel; one report line per dtype."""
    from core.kernels import rotate_into_triton
    from core.positions import rotate, rotation

    report = []
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2**-7)):
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
        report.append(f"{dtype} max relative error {err}")
    return report


if __name__ == "__main__":
    print("\n".join(check_rotation(sys.argv[1])))
