"""`python -m evals vqa`: Video-MME (1 fps, no subtitles), MVBench (64 frames), LongVideoBench (1 fps).

Each question is answered with one new token restricted to the option letters (and Yes / No),
after one forward over the video (evals/vlmevalkit.py, evals/offline_qa.py). Two backends run the
same adapter on the same data, `--data` holding `<benchmark>.tsv` and its videos in VLMEvalKit's
local layout (what its download step leaves):

- `vlmevalkit` (the reference, default when `vlmeval` is importable): our model is registered in
  VLMEvalKit's `supported_VLM` and VLMEvalKit runs its own prompt building, video inference and
  exact-match scoring over that folder; its predictions and scores become this run's answers.
- `builtin`: our reader of the same TSV files (`<DATA>/Video-MME.tsv`, `MVBench.tsv`,
  `LongVideoBench.tsv`), with VLMEvalKit's prompts; resumable and shardable like every benchmark
  here. On the same data it gives VLMEvalKit's predictions and scores (tests/test_evals_vlmevalkit.py).

The published gain is +4.30 on LongVideoBench over the base model: run the base checkpoint into
another folder and pass it as `--compare`.
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.util
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from core.cli_args import number, path_arg
from core.errors import ConfigError
from core.paths import read_text_file
from evals import runner, vlmevalkit
from evals.report import bar_plot, table, write_outputs
from evals.results import ResultFile, provenance, run_meta, write_json

log = logging.getLogger(__name__)

BENCHMARKS = {"Video-MME": {"fps": 1.0}, "MVBench": {"nframe": 64}, "LongVideoBench": {"fps": 1.0}}
VIDEO_MME_PROMPT = (
    "These are the frames of a video. Select the best answer to the following multiple-choice question "
    "based on the video. Respond with only the letter (A, B, C, or D) of the correct option."
)
MVBENCH_SYSTEM = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
    "movement of objects, and the action and pose of persons. Based on your observations, select the best "
    "option that accurately addresses the question."
)


@dataclass(frozen=True)
class Item:
    key: str
    category: str
    message: list[dict]
    truth: str
    clip: tuple[float, float] | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_common_arguments(parser, judge=False)
    parser.add_argument("--benchmark", choices=list(BENCHMARKS), required=True)
    parser.add_argument("--backend", choices=["auto", "vlmevalkit", "builtin"], default="auto")
    parser.add_argument("--max-frames", type=number(1, 100_000, integer=True), default=vlmevalkit.MAX_FRAMES)
    parser.add_argument(
        "--compare", type=path_arg, help="another vqa run folder (e.g. the base model) to diff against"
    )


def load_items(benchmark: str, data: Path) -> list[Item]:
    path = data if data.is_file() else data / f"{benchmark}.tsv"
    if not path.is_file():
        raise runner.DataError(
            f"'{path}' does not exist; put VLMEvalKit's {benchmark}.tsv and its videos in --data"
        )
    root = path.parent
    text = read_text_file(path, f"{benchmark}'s TSV")
    rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t"))
    items = [_item(benchmark, row, root, f"{path} row {n}") for n, row in enumerate(rows, 2)]
    return runner.selected(items, f"{benchmark} questions", f"'{path}'", f"give VLMEvalKit's {benchmark}.tsv")


def _item(benchmark: str, row: dict, root: Path, where: str) -> Item:
    def get(name: str) -> str:
        if row.get(name) in (None, ""):
            raise runner.DataError(f"{where} lacks '{name}'")
        return row[name]

    def candidates() -> list[str]:
        try:
            value = ast.literal_eval(get("candidates"))
        except (ValueError, SyntaxError):
            raise runner.DataError(
                f"{where}: 'candidates' must be a list literal (got {row['candidates']!r})"
            ) from None
        if not isinstance(value, list) or len(value) < 2:
            raise runner.DataError(f"{where}: 'candidates' must list at least two options")
        return [str(c) for c in value]

    key = get("index")
    if benchmark == "Video-MME":
        video = root / get("video_path")
        question = f"Question: {get('question')}\n" + "\n".join(candidates()) + "\nAnswer: "
        message = [_video(video), _text(VIDEO_MME_PROMPT), _text(question)]
        return Item(key, row.get("task_type") or "all", message, get("answer").strip())
    if benchmark == "LongVideoBench":
        video = root / get("video_path")
        options = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(candidates()))
        prompt = (
            f"{get('question')}\n{options}\nAnswer with the option's letter from the given choices directly."
        )
        truth = chr(65 + int(get("correct_choice")))
        return Item(key, row.get("question_category") or "all", [_video(video), _text(prompt)], truth)
    options = candidates()
    answer = get("answer")
    if answer not in options:
        raise runner.DataError(f"{where}: the answer {answer!r} is not one of the candidates")
    lines = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(options))
    prompt = f"{MVBENCH_SYSTEM}\nQuestion: {get('question')}\nOptions:\n{lines}\nOnly give the best option."
    prefix = Path(get("prefix"))
    video = (prefix if prefix.is_absolute() else root / prefix) / get("video")
    clip = None
    if str(row.get("bound", "")).strip().lower() == "true":
        clip = (float(get("start")), float(get("end")))
    message = [_text(prompt), _video(video), _text("Best option:(")]
    return Item(key, row.get("task_type") or "all", message, chr(65 + options.index(answer)), clip)


def run(args: argparse.Namespace) -> int:
    backend = args.backend
    if backend == "auto":
        backend = "vlmevalkit" if importlib.util.find_spec("vlmeval") else "builtin"
    runner.data_folder(args.data, f"{args.benchmark} (VLMEvalKit's TSV and videos)")
    other = runner.earlier_run(args.compare, "vqa", "--compare", results=True) if args.compare else None
    if other is not None and other.get("benchmark") != args.benchmark:
        raise ConfigError(
            f"--compare '{args.compare}' is a {other.get('benchmark')} run, not {args.benchmark}; give a "
            f"{args.benchmark} run's folder"
        )
    items = load_items(args.benchmark, args.data)[: args.limit]
    shard = runner.shard_of(args)
    with runner.output_folder(args.out, "vqa", _settings(args, backend), shard):
        return _run(args, backend, items, shard, other)


def _settings(args: argparse.Namespace, backend: str) -> dict:
    """What changes an answer: the benchmark, the backend, the checkpoint and its precision, the frames
    and the pixel budget."""
    from dataclasses import asdict

    from evals.offline_qa import FrameBudget

    return {"--benchmark": args.benchmark, "--backend": backend, **runner.model_settings(args),
            "--max-frames": args.max_frames, "--max-pixels": asdict(FrameBudget.capped(args.max_pixels))}  # fmt: skip


def _run(args: argparse.Namespace, backend: str, items: list[Item], shard, other: dict | None) -> int:
    by_key = {i.key: i for i in items}
    store = ResultFile(args.out, "answers", shard)
    if backend == "vlmevalkit":
        _run_vlmevalkit(args, items, store)
    else:
        _run_builtin(args, by_key, store)
    meta = run_meta(
        "vqa", {**vars(args), "backend": backend, **BENCHMARKS[args.benchmark]}, how=_provenance(args)
    )
    results = summarize(store.load(), list(by_key), meta, args.benchmark)
    if other is not None:
        theirs = other.get("accuracy")
        delta = None
        if results["accuracy"] is not None and isinstance(theirs, (int, float)):
            delta = round(results["accuracy"] - theirs, 2)
        results["compare"] = {"run": str(args.compare), "delta": delta}
    write_outputs(args.out, results, markdown(results), lambda o: _plot(results, o))
    print(markdown(results))
    return 0


def _run_builtin(args: argparse.Namespace, by_key: dict[str, Item], store: ResultFile) -> None:
    todo = runner.pending(store, list(by_key))
    if not todo:
        return
    from core.loading import model_from_config
    from evals.offline_qa import FrameBudget

    runner.require_model(args)
    model = model_from_config(runner.engine_config(args))
    adapter = vlmevalkit.VideoQAAdapter(model, FrameBudget.capped(args.max_pixels), args.max_frames)
    rule = BENCHMARKS[args.benchmark]
    for n, key in enumerate(todo, 1):
        item = by_key[key]
        began = time.perf_counter()
        answer = adapter.generate(item.message, clip=item.clip, **rule)
        store.append({"key": key, "category": item.category, "answer": answer, "truth": item.truth,
                      "correct": answer == item.truth, "wall_s": round(time.perf_counter() - began, 3)})  # fmt: skip
        log.info("answered %d/%d: %s -> %s (truth %s)", n, len(todo), key, answer, item.truth)


def _run_vlmevalkit(args: argparse.Namespace, items: list[Item], store: ResultFile) -> None:
    """VLMEvalKit answers and scores every question; its prediction and score of each become our records."""
    if importlib.util.find_spec("vlmeval") is None:
        raise ConfigError(
            f"--backend vlmevalkit needs VLMEvalKit: {vlmevalkit.INSTALL} (or use --backend builtin)"
        )
    if args.shard:
        raise ConfigError(
            "with VLMEvalKit, shard with torchrun (it reads RANK/WORLD_SIZE itself), not --shard"
        )
    if args.limit:
        raise ConfigError("--limit is for the builtin backend; VLMEvalKit answers the whole TSV")
    if not runner.pending(store, [i.key for i in items]):
        return
    m = runner.engine_config(args).model  # the one config route: file, then flags
    load = {"device": m.device, "dtype": m.dtype, "attn": m.attn, "max_pixels": args.max_pixels,
            "max_frames": args.max_frames}  # fmt: skip
    model = runner.require_model(args)
    rating, predictions, scores = vlmevalkit.run(
        args.benchmark, args.data, model, args.out / "vlmevalkit", **load
    )
    if not predictions:  # another torchrun rank writes VLMEvalKit's results
        return
    for item in items:
        if item.key not in predictions:
            raise runner.DataError(
                f"VLMEvalKit returned no prediction for index {item.key} of {args.benchmark}"
            )
        store.append({"key": item.key, "category": item.category, "answer": predictions[item.key],
                      "truth": item.truth, "correct": scores[item.key] == 1, "vlmevalkit_score": scores[item.key]})  # fmt: skip
    write_json(args.out / "vlmevalkit_rating.json", rating)


def _provenance(args: argparse.Namespace) -> dict:
    from dataclasses import asdict

    from evals.offline_qa import FrameBudget

    rule = BENCHMARKS[args.benchmark]
    return provenance(
        "vqa",
        benchmark=args.benchmark,
        model=args.model,
        sampling="offline",  # the whole clip in one forward, as VLMEvalKit feeds a video model
        frames=rule if "nframe" in rule else {**rule, "max_frames": args.max_frames},
        pixels=asdict(FrameBudget.capped(args.max_pixels)),
        cache="none: one forward over the clip and the question",
        seed=None,  # no sampling: the answer is an argmax
    )


def summarize(records: dict[str, dict], keys: list[str], meta: dict, benchmark: str) -> dict:
    answered = [records[k] for k in keys if k in records]
    categories: dict[str, dict] = {}
    for r in answered:
        c = categories.setdefault(r["category"], {"correct": 0, "total": 0})
        c["correct"] += bool(r["correct"])
        c["total"] += 1
    for c in categories.values():
        c["accuracy"] = round(100.0 * c["correct"] / c["total"], 2)
    correct = sum(bool(r["correct"]) for r in answered)
    return {
        "meta": meta,
        "benchmark": benchmark,
        "accuracy": round(100.0 * correct / len(answered), 2) if answered else None,
        "categories": dict(sorted(categories.items())),
        "counts": {
            "questions": len(keys),
            "answered": len(answered),
            "correct": correct,
            "complete": len(answered) == len(keys),
        },  # fmt: skip
    }


def markdown(results: dict) -> str:
    c = results["counts"]
    text = (
        f"# {results['benchmark']}\n\nmodel `{results['meta']['config'].get('model')}` (git {results['meta']['git']}, "
        f"backend {results['meta']['config']['backend']})\n\n**Accuracy {results['accuracy']}%** "
        f"({c['correct']} of {c['answered']}; {c['questions']} questions{'' if c['complete'] else ', INCOMPLETE'})\n\n"
        + table(
            ["category", "correct", "total", "accuracy %"],
            [[k, v["correct"], v["total"], v["accuracy"]] for k, v in results["categories"].items()],
        )  # fmt: skip
    )
    if "compare" in results:
        delta = results["compare"]["delta"]
        shown = "-" if delta is None else f"{delta:+.2f}"
        text += f"\nDifference from `{results['compare']['run']}`: {shown} points "
        text += "(published: LongVideoBench +4.30 over the base model)\n"
    return text


def _plot(results: dict, out: Path) -> None:
    cats = results["categories"]
    bar_plot(out / "accuracy.png", list(cats), [c["accuracy"] for c in cats.values()],
             title=f"{results['benchmark']} accuracy {results['accuracy']}%", ylabel="accuracy %")  # fmt: skip


def _video(path: Path) -> dict:
    return {"type": "video", "value": str(path)}


def _text(value: str) -> dict:
    return {"type": "text", "value": value}
