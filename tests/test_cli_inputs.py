"""Inputs a newcomer's probe of the CLIs found unhandled: folders that are not ours, damaged model files,
text files that are not text, URLs that are not URLs, empty names, flags that would be ignored, outputs
that are pipes. Each gets one line (or, for a pipe, just works) and nothing the user had is lost."""

from __future__ import annotations

import gc
import shutil
import sys

import pytest

from clihelpers import CLIP, assert_one_error_line, run_main
from core.__main__ import main as core_main
from core.errors import os_error_line
from core.paths import make_output_folder, read_text_file


def digest(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_build_tiny_refuses_a_folder_of_someone_elses_files_and_leaves_them(tmp_path, capsys):
    checkpoint = tmp_path / "my-checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (checkpoint / "model.safetensors").write_bytes(b"weights I trained for a week")
    before = digest(checkpoint)
    status, lines = run_main(core_main, ["build-tiny", str(checkpoint)], capsys)
    assert_one_error_line(status, lines, str(checkpoint), "not a tiny model", "nothing was written")
    assert digest(checkpoint) == before


def test_build_tiny_writes_a_new_folder_and_rewrites_its_own(tmp_path, capsys):
    folder = tmp_path / "tiny"
    for _ in range(2):  # the second time over its own build
        status, lines = run_main(core_main, ["build-tiny", str(folder)], capsys)
        assert status == 0, lines
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_build_tiny_into_a_folder_it_cannot_make_is_one_line(tmp_path, capsys, where):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    target = blocker if where == "a file" else blocker / "tiny"
    status, lines = run_main(core_main, ["build-tiny", str(target)], capsys)
    assert_one_error_line(status, lines, str(target))
    assert blocker.read_text() == "mine"


def test_the_tiny_model_cut_short_while_building_leaves_nothing_that_looks_whole(tmp_path, monkeypatch):
    from core import builders

    monkeypatch.setenv("STREAMVLM_CACHE", str(tmp_path / "cache"))
    real = builders.build_tiny_model

    def cut_short(path, **kwargs):
        (path / "config.json").write_text("{}")  # what a killed build had written so far
        raise KeyboardInterrupt

    monkeypatch.setattr(builders, "build_tiny_model", cut_short)
    with pytest.raises(KeyboardInterrupt):
        builders.tiny_model_dir()
    assert list((tmp_path / "cache").iterdir()) == []  # no tiny-model-v1 with a config.json and no weights
    monkeypatch.setattr(builders, "build_tiny_model", real)
    built = builders.tiny_model_dir()
    assert (built / "model.safetensors").is_file() and built.name == "tiny-model-v1"


@pytest.mark.parametrize("cache", ["a file", "under a file"])
def test_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path, capsys, monkeypatch, cache):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("STREAMVLM_CACHE", str(blocker if cache == "a file" else blocker / "cache"))
    status, lines = run_main(
        core_main, ["run", "--source", str(CLIP), "--model", "tiny", "--device", "cpu"], capsys
    )
    assert_one_error_line(status, lines, "STREAMVLM_CACHE")


@pytest.mark.parametrize("damage", ["cut weights", "tokenizer not JSON"])
def test_a_model_folder_with_a_damaged_file_says_so_not_the_network(tiny_dir, tmp_path, capsys, damage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    if damage == "cut weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (folder / "tokenizer.json").write_text("{not json")
    status, lines = run_main(
        core_main, ["run", "--source", str(CLIP), "--model", str(folder), "--device", "cpu"], capsys
    )
    assert_one_error_line(status, lines, str(folder), "damaged")
    assert "network" not in lines[0]


@pytest.mark.parametrize(
    "url, words",
    [
        ("ws://127.0.0.1:notaport", "Port could not be cast"),
        ("ws://127.0.0.1:99999", "out of range"),
        ("ws://[::1", "Invalid IPv6"),
        ("http://127.0.0.1:8765", "use ws://host:port"),
        ("ws://", "use ws://host:port"),
    ],
)
def test_a_server_url_that_is_not_one_is_refused_by_the_parser(capsys, url, words):
    status, lines = run_main(core_main, ["run", "--source", str(CLIP), "--server", url], capsys)
    assert status == 2 and lines[-1].startswith("error: argument --server") and words in lines[-1], lines
    assert "Traceback" not in "\n".join(lines)


@pytest.mark.parametrize("flag", ["--model", "--source"])
def test_an_empty_model_or_source_is_refused(capsys, flag):
    argv = {
        "--model": ["--source", str(CLIP), "--model", ""],
        "--source": ["--source", " ", "--model", "tiny"],
    }
    status, lines = run_main(core_main, ["run", *argv[flag]], capsys)
    assert status == 2 and f"argument {flag}: an empty value" in lines[-1], lines


def test_an_empty_output_path_is_refused_not_read_as_the_current_folder(capsys):
    status, lines = run_main(core_main, ["build-tiny", ""], capsys)
    assert status == 2 and "an empty path" in lines[-1], lines


@pytest.mark.parametrize(
    "argv, named",
    [
        (
            ["--max-new-tokens", "1", "--weights", "fp8", "--device", "cpu"],
            "--device, --weights, --max-new-tokens",
        ),
        (["--temperature", "0.5"], "--temperature"),
        (["--no-compile"], "--no-compile"),
    ],
)
def test_engine_flags_with_a_server_are_refused_not_ignored(capsys, argv, named):
    status, lines = run_main(
        core_main, ["run", "--source", str(CLIP), "--server", "ws://127.0.0.1:9", *argv], capsys
    )
    assert_one_error_line(status, lines, named, "the server's")


def test_a_token_without_a_server_is_refused(capsys):
    status, lines = run_main(
        core_main, ["run", "--source", str(CLIP), "--model", "tiny", "--token", "s3cret"], capsys
    )
    assert_one_error_line(status, lines, "--token", "--server")


@pytest.mark.parametrize("kind", ["binary", "folder", "device"])
def test_a_config_that_is_not_a_text_file_is_one_line(tmp_path, capsys, kind):
    if kind == "binary":
        config = tmp_path / "settings.toml"
        config.write_bytes(CLIP.read_bytes()[:4096])  # a video given as the config
    else:
        config = tmp_path if kind == "folder" else "/dev/null"
    status, lines = run_main(
        core_main, ["run", "--source", str(CLIP), "--model", "tiny", "--config", str(config)], capsys
    )
    words = {"binary": "not UTF-8 text", "folder": "is a folder", "device": "not a regular file"}[kind]
    assert_one_error_line(status, lines, str(config), words)


def test_a_token_file_that_is_not_text_is_one_line(tmp_path, capsys):
    status, lines = run_main(
        core_main, ["serve", "--model", "tiny", "--port", "0", "--token-file", str(CLIP)], capsys
    )
    assert_one_error_line(status, lines, "the token file", "not UTF-8 text")


def test_read_text_file_takes_a_byte_order_mark_and_refuses_the_too_large(tmp_path, monkeypatch):
    text = tmp_path / "a.toml"
    text.write_bytes(b"\xef\xbb\xbf[stream]\n")
    assert read_text_file(text, "config file") == "[stream]\n"
    monkeypatch.setattr("core.paths.TEXT_FILE_LIMIT", 4)
    with pytest.raises(Exception, match="too large"):
        read_text_file(text, "config file")


def test_make_output_folder_makes_parents_and_refuses_a_file(tmp_path):
    assert make_output_folder(tmp_path / "a" / "b", "the output folder").is_dir()
    (tmp_path / "f").write_text("")
    with pytest.raises(Exception, match="is a file"):
        make_output_folder(tmp_path / "f", "the output folder")


def test_an_os_error_is_one_line_with_its_path():
    try:
        open("/nonexistent-folder/x")  # noqa: SIM115
    except OSError as exc:
        line = os_error_line(exc)
    assert line.startswith("'/nonexistent-folder/x': No such file or directory; check the path")
    assert "\n" not in line


@pytest.mark.parametrize("target", ["/dev/null", "a pipe"])
def test_subtitles_to_a_pipe_or_dev_null_are_written_not_stopped(tmp_path, target):
    import os

    from core.media.subtitles import SrtWriter
    from core.types import Commentary

    if target == "a pipe":
        read_end, write_end = os.pipe()
        path = f"/dev/fd/{write_end}"
    else:
        path = target
    writer = SrtWriter(path)
    writer.write(Commentary(0.0, 1.0, "kick-off"))
    assert writer.stopped is None
    writer.close()
    if target == "a pipe":
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            assert "kick-off" in pipe.read()


def test_speech_wav_in_a_missing_folder_is_one_error_and_nothing_after(tmp_path, monkeypatch):
    from core.errors import StreamVLMError
    from core.speech.wav import SpeechWav

    leftovers = []
    monkeypatch.setattr(sys, "unraisablehook", leftovers.append)
    with pytest.raises(StreamVLMError, match="cannot write the speech"):
        SpeechWav(tmp_path / "missing" / "speech.wav", 16000)
    gc.collect()
    assert leftovers == []  # wave's half-made writer printed "Exception ignored ... AttributeError"


def test_a_yaml_config_with_a_syntax_error_is_one_line_with_its_place(tmp_path, capsys):
    config = tmp_path / "settings.yaml"
    config.write_text("stream:\n  fps: 2\n bad: [\n")
    status, lines = run_main(
        core_main, ["run", "--source", str(CLIP), "--model", "tiny", "--config", str(config)], capsys
    )
    assert_one_error_line(status, lines, "not valid YAML", "line 3, column 2")


def test_a_camera_that_does_not_open_is_one_line_without_opencvs_warnings(capfd):
    pytest.importorskip("cv2")
    status, lines = run_main(core_main, ["run", "--source", "camera:97", "--model", "tiny"], capfd)
    assert_one_error_line(status, lines, "camera 97")


def test_a_flag_is_only_its_whole_name(capsys):
    """`serve --token T` was read as `--token-file T` (argparse's prefix matching)."""
    status, lines = run_main(core_main, ["serve", "--model", "tiny", "--token", "s3cret"], capsys)
    assert status == 2 and "unrecognized arguments: --token s3cret" in lines[-1], lines


def test_a_config_of_another_format_says_which_formats_are_read(tmp_path, capsys):
    config = tmp_path / "settings.ini"
    config.write_text("[stream]\nfps = 2\n")
    status, lines = run_main(
        core_main, ["run", "--source", str(CLIP), "--model", "tiny", "--config", str(config)], capsys
    )
    assert_one_error_line(status, lines, "neither TOML (.toml) nor YAML")


def test_the_apps_error_summary_keeps_urls_and_paths_as_written():
    from app.run_state import ErrorReport

    assert ErrorReport.from_text("ws://[::1 is not a server URL").summary == "ws://[::1 is not a server URL."
    assert ErrorReport.from_text("model 'my  model' is missing").summary == "Model 'my  model' is missing."
