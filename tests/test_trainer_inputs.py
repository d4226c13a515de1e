"""What `python -m trainer` reads and writes: a run never writes over its own inputs, and each path or
file a user names that cannot be used ends the command with the one line `error: ...` (status 2).

- run.out that is the model folder or data.dir, or an input on or inside what a run writes (its
  export, which the run replaces at its end): refused before anything is created or loaded;
- an output folder that cannot be made, a missing model folder, a hub id offline, a config file that
  is a folder, a device or not UTF-8 text: one sentence, never a traceback;
- a run none of whose samples can be used (every video missing) stops before training, saying how
  many were skipped and why, instead of exporting the untrained model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from clihelpers import assert_one_error_line, run_main
from core.errors import ConfigError
from trainer.__main__ import main
from trainer.config import load_train_config
from trainer.data.seeks import write_seeks

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "trainer" / "configs" / "tiny.yaml"


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _args(model: Path | str, data: Path, out: Path | str, *extra: str) -> list[str]:
    return [
        "--config",
        str(TINY),
        f"model.path={model}",
        f"data.dir={data}",
        f"run.out={out}",
        "run.max_steps=1",
        *extra,
    ]


@pytest.fixture
def layout(tmp_path, tiny_dir):
    """A copy of the tiny model and an (empty) data folder, side by side."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    data = tmp_path / "data"
    data.mkdir()
    return tmp_path, model, data


# -- outputs over inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, words",
    [
        (
            "model is the export",
            ["model folder (model.path)", "is the export folder", "choose another run.out"],
        ),
        ("model inside the checkpoints", ["lies inside the checkpoints folder", "choose another run.out"]),
        ("out is the model", ["run.out", "is the model folder (model.path)", "choose another run.out"]),
        ("out is the data", ["is the dataset folder (data.dir)", "choose another run.out"]),
        ("export links to the model", ["model folder (model.path)", "the export folder", "choose another"]),
        ("out links into the model", ["the model folder (model.path)", "choose another run.out"]),
    ],
)
def test_a_run_that_would_write_over_its_inputs_is_refused_before_anything_is_written(
    layout, case, words, capsys
):
    root, model, data = layout
    out = root / "run"
    if case == "model is the export":  # the tester's case: stage 2 from stage 1's export, same run.out
        out.mkdir()
        shutil.move(model, out / "export")
        model = out / "export"
    elif case == "model inside the checkpoints":
        (out / "checkpoints").mkdir(parents=True)
        shutil.move(model, out / "checkpoints" / "m")
        model = out / "checkpoints" / "m"
    elif case == "out is the model":
        out = model
    elif case == "out is the data":
        out = data
    elif case == "export links to the model":
        out.mkdir()
        (out / "export").symlink_to(model, target_is_directory=True)
    elif case == "out links into the model":
        out.symlink_to(model, target_is_directory=True)
    before = _digests(model)
    listing = sorted(p.relative_to(root) for p in root.rglob("*"))

    status, lines = run_main(main, _args(model, data, out, "run.resume=false"), capsys)

    assert_one_error_line(status, lines, *words)
    assert _digests(model) == before
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == listing  # nothing created


def test_inputs_beside_or_above_the_outputs_are_fine(tmp_path):
    from trainer.train import check_run_outputs

    runs = tmp_path / "runs"
    stage1 = runs / "stage1" / "export"
    stage1.mkdir(parents=True)
    for out, extra in [
        (runs / "stage2", []),  # the documented stage 2: another run.out
        (runs, []),  # the model is in run.out but in none of its outputs
        (runs / "stage1", ["run.export=false"]),  # nothing is written to export
        (stage1 / "runs" / "x", []),  # run.out a new subfolder of the model's: none of its files touched
        (tmp_path / "d" / "runs", []),  # data.dir=. with run.out=runs/x
    ]:
        cfg = load_train_config(TINY, [f"run.out={out}", *extra])
        check_run_outputs(
            cfg, {"model folder (model.path)": stage1, "dataset folder (data.dir)": tmp_path / "d"}
        )
    cfg = load_train_config(TINY, [f"run.out={runs / 'stage1'}"])
    with pytest.raises(ConfigError, match="is the export folder"):
        check_run_outputs(cfg, {"model folder (model.path)": stage1})


# -- paths that cannot be used -----------------------------------------------------------------------------


def test_an_output_folder_that_cannot_be_made_is_one_sentence(layout, capsys):
    root, model, data = layout
    a_file = root / "a_file"
    a_file.write_text("x")
    status, lines = run_main(main, _args(model, data, a_file), capsys)
    assert_one_error_line(status, lines, "run.out", str(a_file), "is a file")
    status, lines = run_main(main, _args(model, data, a_file / "run"), capsys)
    assert_one_error_line(status, lines, "cannot create the run folder (run.out)")
    status, lines = run_main(main, ["make-fixture", str(a_file)], capsys)
    assert_one_error_line(status, lines, "the fixture folder", "is a file")
    status, lines = run_main(main, ["make-fixture", str(a_file / "fx")], capsys)
    assert_one_error_line(status, lines, "cannot create the fixture folder")
    status, lines = run_main(main, ["make-fixture", ""], capsys)
    assert_one_error_line(status, lines, "an empty path")
    status, lines = run_main(main, ["make-fixture", str(root / "fx"), "--seconds", "5"], capsys)
    assert_one_error_line(status, lines, "--seconds")
    assert a_file.read_text() == "x"


def test_a_model_that_is_not_there_is_one_sentence_as_in_core_run(layout, capsys, monkeypatch):
    root, _, data = layout
    status, lines = run_main(main, _args(root / "nonexistent", data, root / "run"), capsys)
    assert_one_error_line(status, lines, "model folder", "does not exist")
    (root / "empty").mkdir()
    status, lines = run_main(main, _args(root / "empty", data, root / "run"), capsys)
    assert_one_error_line(status, lines, "has no config.json")
    # An empty recipe trains the hub default; offline, that is core's sentence, not transformers' OSError.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = root / "empty.yaml"
    empty.write_text("")
    status, lines = run_main(main, ["--config", str(empty), f"run.out={root / 'run'}"], capsys)
    assert_one_error_line(status, lines, "Qwen/Qwen2.5-VL-7B-Instruct", "could not be found locally")
    assert not (root / "run").exists()


def test_config_files_that_cannot_be_read_are_one_sentence(tmp_path, capsys):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    cases = {
        str(binary): "is not UTF-8 text",
        str(tmp_path): "is a folder",
        os.devnull: "is not a regular file",
        str(tmp_path / "missing.yaml"): "not found",
        "": "an empty path",
    }
    for path, message in cases.items():
        status, lines = run_main(main, ["--config", path], capsys)
        assert_one_error_line(status, lines, message)
        if path:
            with pytest.raises(ConfigError, match=message):
                load_train_config(path)
    for setting in ("run.out", "data.dir", "model.path"):  # '' would be the current folder
        status, lines = run_main(main, ["--config", str(TINY), f"{setting}=''"], capsys)
        assert_one_error_line(status, lines, f"{setting.partition('.')[2]} is empty", "current folder")


# -- data that cannot be used ------------------------------------------------------------------------------


def _window(video: str, start: float) -> list[dict]:
    words = [[start + 0.2, start + 0.6, "hello"], [start + 1.1, start + 1.5, "world"]]
    return [
        {
            "role": "user",
            "content": [{"type": "video", "video": video, "video_start": start, "video_end": start + 2}],
        },
        {"role": "assistant", "content": [{"type": "text_stream", "text_stream": words}]},
    ]


def test_a_run_with_no_usable_sample_stops_before_training(layout, capsys):
    root, model, data = layout
    path = data / "train_x_with_seeks.jsonl"
    path.write_text("".join(json.dumps(_window("videos/missing.mp4", 2.0 * k)) + "\n" for k in range(6)))
    write_seeks(path)
    out = root / "run"
    status, lines = run_main(
        main,
        _args(model, data, out, "data.patterns=[train_x_*]", "data.repeat={}", "run.max_steps=2"),
        capsys,
    )
    assert status == 2
    assert lines[-1].startswith("error: no usable training sample: all 4 samples this run reads were skipped")
    assert "videos/missing.mp4' not found" in lines[-1] and "check data.dir" in lines[-1]
    assert not (out / "checkpoints").exists() and not (out / "export").exists()
