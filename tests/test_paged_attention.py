"""Decode attention over the cache pool in place (core/paged_attention.py): the Triton kernel (run by
Triton's interpreter on a CPU, natively on a GPU) and the PyTorch reference against plain SDPA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from core.paged_attention import PoolKV, reference_decode_attention

# Rows in different slots, of lengths from one key to the whole slot, across split boundaries.
CASE = {"slots": 5, "kv_heads": 2, "tokens": 300, "dim": 32, "rows": [(3, 1), (0, 257), (4, 300), (1, 64)]}


def make_case(group: int, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    g = torch.Generator().manual_seed(group)
    shape = (CASE["slots"], CASE["kv_heads"], CASE["tokens"], CASE["dim"])
    keys, values = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    rows = CASE["rows"]
    q = torch.randn(len(rows), CASE["kv_heads"] * group, CASE["dim"], generator=g)
    pool = PoolKV(
        keys.to(device, dtype),
        values.to(device, dtype),
        torch.tensor([s for s, _ in rows], device=device),
        torch.tensor([n for _, n in rows], device=device),
    )
    return q.to(device, dtype), pool


def per_row_sdpa(q: torch.Tensor, pool: PoolKV, scale: float) -> torch.Tensor:
    out = []
    for b, (slot, length) in enumerate(zip(pool.slots.tolist(), pool.lengths.tolist(), strict=True)):
        k, v = pool.keys[slot : slot + 1, :, :length], pool.values[slot : slot + 1, :, :length]
        out.append(
            F.scaled_dot_product_attention(q[b : b + 1, :, None], k, v, scale=scale, enable_gqa=True)[0, :, 0]
        )
    return torch.stack(out)


@pytest.mark.parametrize("group", [1, 7])
def test_the_reference_is_attention_over_each_rows_own_live_keys(group):
    q, pool = make_case(group)
    assert torch.allclose(reference_decode_attention(q, pool, 0.2), per_row_sdpa(q, pool, 0.2), atol=1e-5)


def test_the_triton_kernel_matches_the_reference_in_the_interpreter(tmp_path):
    """The kernel itself, run by Triton's interpreter on this CPU (a subprocess: the switch is read at import)."""
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import json, sys, torch
        sys.path.insert(0, "tests")
        from test_paged_attention import make_case
        from core.paged_attention import paged_decode_attention, reference_decode_attention
        errors = {}
        for group in (1, 2, 7):
            q, pool = make_case(group)
            errors[group] = (paged_decode_attention(q, pool, 0.2) - reference_decode_attention(q, pool, 0.2)).abs().max().item()
        print(json.dumps(errors))
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(err < 1e-5 for err in errors.values()), errors


def test_a_row_reading_another_slot_is_not_the_reference():
    """The check above can fail: the same rows pointed at other slots give other outputs."""
    q, pool = make_case(7)
    crossed = PoolKV(pool.keys, pool.values, pool.slots.flip(0), pool.lengths)
    assert not torch.allclose(
        reference_decode_attention(q, crossed, 0.2), per_row_sdpa(q, pool, 0.2), atol=1e-3
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_on_the_gpu(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from core.paged_attention import paged_decode_attention

    q, pool = make_case(7, dtype, "cuda")
    out = paged_decode_attention(q, pool, 0.2).float()
    ref = per_row_sdpa(
        q.float(), PoolKV(pool.keys.float(), pool.values.float(), pool.slots, pool.lengths), 0.2
    )
    assert (out - ref).abs().max().item() < (1e-4 if dtype == torch.float32 else 3e-2)
