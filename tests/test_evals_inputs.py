"""What `python -m evals` does with the folders and files a user names: one output folder is one benchmark
made with one set of settings (evals/runner.py `output_folder`), and a bad path, a bad file, an empty
selection or a malformed URL is the one line `error: ...` (exit status 2), never a traceback or an
empty result that looks like a success."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from evals import runner
from evals.__main__ import main
from evals.fixtures import make_fixtures
from evals.results import Shard
from tests.clihelpers import assert_one_error_line, run_main

SMALL = ["--device", "cpu", "--dtype", "float32", "--max-pixels", str(4 * 28 * 28)]
JUDGE = ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "judge-x"]  # never reached
NOT_UTF8 = b"\xff\xfe\x00garbage\n"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="module")
def ovo_run(fixtures, tiny_dir, tmp_path_factory):
    """A finished ovobench run of one question, and the arguments that made it."""
    out = tmp_path_factory.mktemp("runs") / "ovo"
    args = ["ovobench", "--model", str(tiny_dir), "--data", str(fixtures["ovobench"]), "--out", str(out),
            "--tasks", "OCR", *SMALL]  # fmt: skip
    assert main(args) == 0
    return out, args


def _no_model(monkeypatch):
    """Fail the test if a benchmark gets as far as loading a model."""
    import core.loading

    def refuse(*args, **kwargs):
        pytest.fail("the model was loaded; the error should come before it")

    monkeypatch.setattr(core.loading, "model_from_config", refuse)
    monkeypatch.setattr(core.loading, "open_engine", refuse)


# -- one folder, one benchmark, one set of settings (findings 2 and 3) ---------------------------------


@pytest.mark.parametrize(
    "change, words",
    [
        (["--max-frames", "2"], ["--max-frames was 480, now 2"]),
        (["--model", "tiny-other"], ["--model was", '"tiny-other"']),
        (["--max-pixels", str(16 * 28 * 28)], ["--max-pixels.max_pixels was 3136, now 12544"]),
    ],
    ids=["frames", "model", "pixels"],
)
def test_a_resume_with_other_settings_is_refused_naming_the_setting(
    ovo_run, monkeypatch, capsys, change, words
):
    out, args = ovo_run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _no_model(monkeypatch)
    status, lines = run_main(main, [*args, *change], capsys)
    assert_one_error_line(status, lines, f"'{out}' holds ovobench results made with other settings", *words)
    assert "give a new --out" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing recorded
    # The same settings resume (nothing left to do: no model loaded), and so does a run that adds
    # a setting the first did not have.
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["counts"]["complete"]


def test_another_benchmark_is_refused_a_folder_with_results(ovo_run, fixtures, tmp_path, monkeypatch, capsys):
    out, _ = ovo_run
    before = (out / "results.json").read_bytes()
    _no_model(monkeypatch)
    status, lines = run_main(main, ["efficiency", "--random-weights", "tiny", "--device", "cpu", "--seconds", "2",
                                    "--policies", "streaming", "--out", str(out)], capsys)  # fmt: skip
    assert_one_error_line(
        status, lines, "already holds the results of an ovobench run", "efficiency run a new --out"
    )
    vqa = ["vqa", "--benchmark", "MVBench", "--backend", "builtin", "--model", "tiny",
           "--data", str(fixtures["vqa:MVBench"]), "--out", str(out)]  # fmt: skip
    status, lines = run_main(main, vqa, capsys)
    assert_one_error_line(status, lines, "already holds the results of an ovobench run")
    assert (out / "results.json").read_bytes() == before

    # A folder from before the record existed is known by its results.json: efficiency's has no name.
    old = tmp_path / "old-efficiency"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"meta": {}, "summary": [], "factors_vs_streaming": {}}))
    ovo = [
        "ovobench",
        "--model",
        "tiny",
        "--data",
        str(fixtures["ovobench"]),
        "--out",
        str(old),
        "--tasks",
        "OCR",
    ]
    status, lines = run_main(main, ovo, capsys)
    assert_one_error_line(status, lines, "already holds the results of an efficiency run")
    assert json.loads((old / "results.json").read_text())["factors_vs_streaming"] == {}


def test_a_second_run_of_the_same_shard_at_once_is_refused(fixtures, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _no_model(monkeypatch)
    args = ["ovobench", "--model", "tiny", "--data", str(fixtures["ovobench"]), "--out", str(out), *SMALL]
    with runner.output_folder(out, "ovobench", {}, Shard()):  # another run, writing now
        status, lines = run_main(main, args, capsys)
    assert_one_error_line(status, lines, f"another run (process {os.getpid()})", str(out), "its own --out")
    assert not list(out.glob("*.jsonl"))
    # Other shards of the same run write at the same time, by design.
    with runner.output_folder(out, "ovobench", {}, Shard(1, 2)):
        with runner.output_folder(out, "ovobench", {}, Shard(0, 2)):
            pass


def test_the_record_of_a_run_folder(tmp_path):
    """A folder with no results takes any run's record; a setting a later run adds (a judge) joins it;
    a folder from before the record existed is adopted unless its results.json names another benchmark."""
    out = tmp_path / "run"
    with runner.output_folder(out, "ovobench", {"--model": "a"}):
        pass  # failed before it answered anything
    with runner.output_folder(out, "inf-stream", {"--model": "b", "--start": 4.0}):
        (out / "generations.0of1.jsonl").write_text('{"key": "v", "items": []}\n')
    with runner.output_folder(
        out, "inf-stream", {"--start": 4, "--judge-model": "j"}
    ):  # no --model: judging only
        pass
    record = json.loads((out / "run.json").read_text())
    assert record == {
        "benchmark": "inf-stream",
        "settings": {"--model": "b", "--start": 4.0, "--judge-model": "j"},
    }
    with pytest.raises(runner.ConfigError, match='--judge-model was "j", now "k"'):
        with runner.output_folder(out, "inf-stream", {"--judge-model": "k"}):
            pass

    old = tmp_path / "old"
    old.mkdir()
    (old / "answers.0of1.jsonl").write_text('{"key": "1"}\n')
    with runner.output_folder(old, "ovobench", {"--model": "a"}):
        pass
    assert json.loads((old / "run.json").read_text())["benchmark"] == "ovobench"
    (old / "run.json").unlink()
    (old / "results.json").write_text(json.dumps({"meta": {"task": "vqa"}}))
    with pytest.raises(runner.ConfigError, match="already holds the results of a vqa run"):
        with runner.output_folder(old, "ovobench", {"--model": "a"}):
            pass


# -- output folders (findings 1 and 4) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["ovobench", "--model", "tiny", "--data", "{data}", "--out", "{out}"],
        ["efficiency", "--random-weights", "tiny", "--device", "cpu", "--seconds", "2", "--out", "{out}"],
        ["server-load", "--url", "ws://127.0.0.1:9", "--out", "{out}"],
        ["ceilings", "--device", "cpu", "--out", "{out}"],
        ["make-fixtures", "{out}"],
    ],
    ids=["ovobench", "efficiency", "server-load", "ceilings", "make-fixtures"],
)
def test_output_folders_that_are_empty_a_file_or_impossible_are_one_line(
    argv, fixtures, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    _no_model(monkeypatch)
    data = str(fixtures["ovobench"])
    status, lines = run_main(main, [a.format(data=data, out="") for a in argv], capsys)
    assert_one_error_line(status, lines, "an empty path")
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not a folder")
    status, lines = run_main(main, [a.format(data=data, out=clip) for a in argv], capsys)
    assert_one_error_line(status, lines, f"'{clip}' is a file; give a folder")
    status, lines = run_main(main, [a.format(data=data, out=clip / "sub") for a in argv], capsys)
    assert_one_error_line(status, lines, "cannot create", f"'{clip / 'sub'}'")
    assert clip.read_bytes() == b"not a folder"


# -- runs compared against (finding 5 and 6) ---------------------------------------------------------


def test_compare_and_baseline_runs_that_are_missing_or_of_another_benchmark(
    fixtures, ovo_run, tmp_path, monkeypatch, capsys
):
    _no_model(monkeypatch)
    ovo, _ = ovo_run
    missing = tmp_path / "nonexistent"
    ovobench = [
        "ovobench",
        "--model",
        "tiny",
        "--data",
        str(fixtures["ovobench"]),
        "--out",
        str(tmp_path / "o"),
    ]
    status, lines = run_main(main, [*ovobench, "--compare", str(missing)], capsys)
    assert_one_error_line(status, lines, f"--compare '{missing}' does not exist", "earlier ovobench run")
    vqa = ["vqa", "--benchmark", "MVBench", "--backend", "builtin", "--model", "tiny",
           "--data", str(fixtures["vqa:MVBench"]), "--out", str(tmp_path / "v")]  # fmt: skip
    status, lines = run_main(main, [*vqa, "--compare", str(missing)], capsys)
    assert_one_error_line(status, lines, f"--compare '{missing}' does not exist")
    status, lines = run_main(main, [*vqa, "--compare", str(ovo)], capsys)
    assert_one_error_line(status, lines, "holds the results of an ovobench run", "earlier vqa run")

    # A folder of another benchmark that also generates commentary, and one with none.
    other = tmp_path / "livesports"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"benchmark": "livesports-cc", "settings": {}}))
    (other / "generations.0of1.jsonl").write_text(json.dumps({"key": "match0.mp4", "items": []}) + "\n")
    inf = ["inf-stream", "--model", "tiny", "--data", str(fixtures["inf-stream"]), "--start", "2",
           "--out", str(tmp_path / "i"), *JUDGE]  # fmt: skip
    nothing = tmp_path / "nothing-generated"
    nothing.mkdir()
    for baseline, words in [
        (missing, "does not exist"),
        (other, "holds the results of a livesports-cc run"),
        (ovo, "holds the results of an ovobench run"),
        (nothing, "holds no generated commentary"),
    ]:
        status, lines = run_main(main, [*inf, "--baseline-run", str(baseline)], capsys)
        assert_one_error_line(status, lines, f"--baseline-run '{baseline}'", words)
    ls = ["livesports-cc", "--model", "tiny", "--data", str(fixtures["livesports-cc"]),
          "--out", str(tmp_path / "l"), *JUDGE]  # fmt: skip
    status, lines = run_main(main, [*ls, "--baseline-run", str(missing)], capsys)
    assert_one_error_line(status, lines, f"--baseline-run '{missing}' does not exist")
    assert not (tmp_path / "i").exists() and not (tmp_path / "l").exists()


def test_report_of_a_results_file_that_is_not_text(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_bytes(NOT_UTF8)
    status, lines = run_main(main, ["report", str(run)], capsys)
    assert_one_error_line(status, lines, "is not UTF-8 text")


# -- empty selections and bad data (findings 7 and 8) ------------------------------------------------


def test_empty_selections_name_what_was_empty_and_the_choices(fixtures, tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    out = ["--out", str(tmp_path / "o")]
    ovo = ["ovobench", "--model", "tiny", "--data", str(fixtures["ovobench"]), *out]
    status, lines = run_main(main, [*ovo, "--tasks", "BOGUS,OCR"], capsys)
    assert_one_error_line(status, lines, "unknown task BOGUS", "choose from OCR, ACR")
    status, lines = run_main(main, [*ovo, "--tasks", " , "], capsys)
    assert_one_error_line(status, lines, "--tasks names no task", "choose from")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    status, lines = run_main(main, ["ovobench", "--model", "tiny", "--data", str(empty), *out], capsys)
    assert_one_error_line(status, lines, f"no OVO-Bench items in '{empty}'")
    status, lines = run_main(
        main, ["efficiency", "--random-weights", "tiny", "--policies", " ", *out], capsys
    )
    assert_one_error_line(status, lines, "--policies names no policy", "stock, streaming, none, recompute")

    data = tmp_path / "inf"
    shutil.copytree(fixtures["inf-stream"], data, symlinks=True)
    (data / "eval_all_metadata.jsonl").write_text("\n")
    inf = ["inf-stream", "--model", "tiny", "--data", str(data), "--start", "2", *out]
    status, lines = run_main(main, inf, capsys)
    assert_one_error_line(status, lines, "no videos in", "eval_all_metadata.jsonl")
    tsv = tmp_path / "MVBench.tsv"
    tsv.write_text((fixtures["vqa:MVBench"] / "MVBench.tsv").read_text().splitlines()[0] + "\n")
    vqa = [
        "vqa",
        "--benchmark",
        "MVBench",
        "--backend",
        "builtin",
        "--model",
        "tiny",
        "--data",
        str(tsv),
        *out,
    ]
    status, lines = run_main(main, vqa, capsys)
    assert_one_error_line(status, lines, "no MVBench questions in")
    ls = tmp_path / "ls.jsonl"
    ls.write_text("")
    status, lines = run_main(main, ["livesports-cc", "--model", "tiny", "--data", str(ls), *out], capsys)
    assert_one_error_line(status, lines, "no events in")
    assert not (tmp_path / "o").exists()


def test_backwards_times_and_files_that_are_not_text_are_one_line(fixtures, tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    data = tmp_path / "inf"
    shutil.copytree(fixtures["inf-stream"], data, symlinks=True)
    rows = (data / "eval_all_metadata.jsonl").read_text().splitlines()
    backwards = json.dumps({"video": "match1.mp4", "content": [[1.0, 1.5, "a"], [5.0, 3.0, "b"]]})
    (data / "eval_all_metadata.jsonl").write_text(rows[0] + "\n" + backwards + "\n")
    inf = ["inf-stream", "--model", "tiny", "--data", str(data), "--start", "2", "--out", str(tmp_path / "o")]
    status, lines = run_main(main, inf, capsys)
    assert_one_error_line(
        status, lines, "eval_all_metadata.jsonl line 2", "content[1] ends at 3 s, before it starts at 5 s"
    )

    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(NOT_UTF8)
    status, lines = run_main(main, [*inf, "--metadata", str(binary)], capsys)
    assert_one_error_line(status, lines, f"'{binary}' is not UTF-8 text")
    ovo = tmp_path / "ovo.json"
    ovo.write_bytes(NOT_UTF8)
    status, lines = run_main(main, ["ovobench", "--data", str(ovo), "--out", str(tmp_path / "o")], capsys)
    assert_one_error_line(status, lines, f"'{ovo}' is not UTF-8 text")
    tsv = tmp_path / "Video-MME.tsv"
    tsv.write_bytes(NOT_UTF8)
    vqa = [
        "vqa",
        "--benchmark",
        "Video-MME",
        "--backend",
        "builtin",
        "--data",
        str(tsv),
        "--out",
        str(tmp_path / "o"),
    ]
    status, lines = run_main(main, vqa, capsys)
    assert_one_error_line(status, lines, f"'{tsv}' is not UTF-8 text")
    assert not (tmp_path / "o").exists()


def test_an_os_error_no_check_caught_is_one_line(tmp_path, capsys):
    """The backstop: a data 'folder' that is a pipe cannot be listed."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    status, lines = run_main(
        main, ["livesports-cc", "--data", str(pipe), "--out", str(tmp_path / "o")], capsys
    )
    assert_one_error_line(status, lines, f"'{pipe}'", "check the path")


# -- server-load's URL (finding 9) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, words",
    [
        ("ws://[::1", "Invalid IPv6 URL"),
        ("ws://127.0.0.1:notaport", "is not a server URL"),
        ("ws://127.0.0.1:99999", "out of range"),
        ("http://127.0.0.1:8765", "use ws://host:port"),
        ("ws://:8765", "use ws://host:port"),
    ],
)
def test_server_load_refuses_a_malformed_url_before_it_starts(url, words, tmp_path, capsys):
    out = tmp_path / "sl"
    status, lines = run_main(main, ["server-load", "--url", url, "--seconds", "1", "--out", str(out)], capsys)
    assert_one_error_line(status, lines, "argument --url", words)
    assert not out.exists()
