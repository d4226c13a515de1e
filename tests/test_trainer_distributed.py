"""Two processes (torchrun, gloo, FSDP2 on CPU) train exactly like one with the same global batch.

1 process x 4 accumulation and 2 processes x 2 accumulation see the same samples in each step
(DataPlan) and normalise by the same global label count, so per-step losses and final weights
agree up to float32 summation order. A checkpoint written by two processes resumes in one (DCP
reshards it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainerhelpers import read_metrics

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "trainer" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    from trainer.fixture import make_fixture

    path = tmp_path_factory.mktemp("fixture")
    make_fixture(path, videos=3, seconds=20.0)
    return path


def _args(fixture_dir: Path, tiny_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(TINY),
        f"data.dir={fixture_dir}",
        f"model.path={tiny_dir}",
        f"run.out={out}",
        "batch.global_samples=4",
        "run.max_steps=3",
        "run.save_every=2",
        "run.log_every=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(fixture_dir, tiny_dir, tmp_path_factory):
    """The same 3 steps with one process (in this one) and with two (torchrun, FSDP2 over gloo)."""
    from trainer.__main__ import main

    root = tmp_path_factory.mktemp("runs")
    one, two = root / "one", root / "two"
    log = root / "two.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    with log.open("w") as sink:
        child = subprocess.Popen(
            [*command, "-m", "trainer", *_args(fixture_dir, tiny_dir, two)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=sink,
        )
        try:
            assert main(_args(fixture_dir, tiny_dir, one)) == 0
            assert child.wait(timeout=540) == 0, log.read_text()[-4000:]
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert "FSDP2 (gloo)" in log.read_text()
    return one, two


def test_two_processes_give_the_same_losses_and_weights_as_one(runs):
    one, two = runs
    a, b = read_metrics(one), read_metrics(two)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert a[step]["samples"] == b[step]["samples"]
        assert a[step]["labels"] == b[step]["labels"]
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5)
        assert b[step]["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=1e-4)
    assert a[3]["loss"] < a[1]["loss"]  # it trained
    wa = load_file(one / "export" / "model.safetensors")
    wb = load_file(two / "export" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_two_process_checkpoint_resumes_in_one_process(runs, fixture_dir, tiny_dir, tmp_path):
    from trainer.__main__ import main

    _, two = runs
    out = tmp_path / "resumed"
    shutil.copytree(two / "checkpoints" / "step_000002", out / "checkpoints" / "step_000002")
    assert main(_args(fixture_dir, tiny_dir, out, "run.export=false")) == 0
    resumed, reference = read_metrics(out), read_metrics(two)
    assert sorted(resumed) == [3]  # it started after step 2
    assert resumed[3]["samples"] == reference[3]["samples"]
    assert resumed[3]["loss"] == pytest.approx(reference[3]["loss"], rel=1e-5)
