"""`python -m evals ovobench`: OVO-Bench accuracy, per task and as Real-Time, Backward and Forward averages.

Data: OVO-Bench's `ovo_bench_new.json` (a list of items, each with `id`, `task`, `video`) and its
source videos (`src_videos/`, or paths relative to the data folder). Each item becomes questions
asked at a query time, about the clip up to then:

- EPM, ASI, HLD (Backward) and OCR, ACR, ATR, STU, FPD, OJR (Real-Time): `question`, `options`,
  `gt` (option index) and `realtime`; clip [0, realtime]; answer a letter A-E.
- REC: `activity` and `test_info: [{realtime, count}]`; one question per entry, clip [0, realtime],
  answer the count as a digit.
- SSR: `test_info: [{realtime, step, type}]`; is the step being performed now? type 1 = Yes, 0 = No.
- CRR: `question`, `ask_time`, `test_info: [{realtime, type}]`; clip [ask_time, realtime]; can the
  question be answered yet? type 1 = Yes, 0 = No.

Frames at 2 FPS (at most 480, spread over the clip beyond that); "The answer is:" is forced after
the assistant header and the answer is the argmax over the 17 tokens No, Yes, 0-9, A-E
(evals/offline_qa.py). A group's score is the mean of its tasks' accuracies, as OVO-Bench's scorer
computes it. The published gain is +5.96 Real-Time over the base model: run the base checkpoint
into another folder and pass it as `--compare`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from core.cli_args import number
from evals import runner
from evals.report import bar_plot, table, write_outputs
from evals.results import ResultFile, run_meta

# The model side (evals/offline_qa.py: torch) and PyAV (evals/video.py) load in run (evals/registry.py).

log = logging.getLogger(__name__)

GROUPS = {
    "Real-Time": ("OCR", "ACR", "ATR", "STU", "FPD", "OJR"),
    "Backward": ("EPM", "ASI", "HLD"),
    "Forward": ("REC", "SSR", "CRR"),
}
CHOICE_TASKS = GROUPS["Real-Time"] + GROUPS["Backward"]
FPS, MAX_FRAMES = 2.0, 480


@dataclass(frozen=True)
class Question:
    key: str
    task: str
    video: Path
    start: float
    end: float  # the query time
    prompt: str
    truth: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_common_arguments(parser, judge=False)
    parser.add_argument(
        "--tasks", help=f"comma-separated subset of {', '.join(t for g in GROUPS.values() for t in g)}"
    )
    parser.add_argument("--max-frames", type=number(1, 100_000, integer=True), default=MAX_FRAMES)
    parser.add_argument(
        "--compare", type=Path, help="another ovobench run folder (e.g. the base model) to diff against"
    )


def choice_prompt(question: str, options: list[str]) -> str:
    lines = "\n".join(f"{chr(65 + i)}. {option}" for i, option in enumerate(options))
    return (
        f"Question: {question}\nOptions:\n{lines}\n"
        "Respond only with the letter of the correct option, with no other text."
    )


def rec_prompt(activity: str) -> str:
    return (
        "You are watching a video in which people may repeat one kind of action; 'they' are the people doing it. "
        f"Count how many times they {activity} in total so far, one complete motion counting as one. "
        "Answer with a single number only."
    )


def ssr_prompt(step: str) -> str:
    return (
        "You are watching a tutorial video made of sequential steps. Here is one step of the procedure:\n"
        f"{step}\nIs the person in the video performing this step right now? Answer only Yes or No."
    )


def crr_prompt(question: str) -> str:
    return (
        f"This question is about the latest frames of the video, near its end:\n{question}\n"
        "Do the frames so far, especially the latest ones, give enough information to answer it? "
        "Answer only Yes or No."
    )


def questions(items: list, root: Path, source: str = "ovo_bench_new.json") -> list[Question]:
    """Every item of ovo_bench_new.json as single questions (one per test_info entry for Forward tasks)."""
    out: list[Question] = []
    if not isinstance(items, list):
        raise runner.DataError(f"{source} must hold a JSON list of items")
    for n, item in enumerate(items):
        where = f"{source} item {n}"
        if not isinstance(item, dict):
            raise runner.DataError(f"{where} is not a JSON object")
        task = runner.field(item, "task", str, where)
        ident = runner.field(item, "id", (int, str), where)
        video = runner.resolve_video(root, runner.field(item, "video", str, where))
        where = f"{where} (id {ident}, {task})"
        if task in CHOICE_TASKS:
            options = runner.field(item, "options", list, where)
            gt = runner.field(item, "gt", int, where)
            if not 0 <= gt < len(options) or len(options) > 5:
                raise runner.DataError(
                    f"{where}: gt {gt} must index one of its {len(options)} options (at most 5)"
                )
            realtime = float(runner.field(item, "realtime", (int, float), where))
            prompt = choice_prompt(runner.field(item, "question", str, where), [str(o) for o in options])
            out.append(Question(str(ident), task, video, 0.0, realtime, prompt, chr(65 + gt)))
            continue
        if task not in GROUPS["Forward"]:
            raise runner.DataError(f"{where}: unknown task '{task}'")
        tests = runner.field(item, "test_info", list, where)
        start = float(item.get("ask_time", 0.0)) if task == "CRR" else 0.0
        for i, test in enumerate(tests):
            at = f"{where} test_info[{i}]"
            if not isinstance(test, dict):
                raise runner.DataError(f"{at} is not a JSON object")
            realtime = float(runner.field(test, "realtime", (int, float), at))
            if task == "REC":
                prompt = rec_prompt(runner.field(item, "activity", str, where))
                truth = str(runner.field(test, "count", int, at))
            else:
                kind = runner.field(test, "type", int, at)
                if kind not in (0, 1):
                    raise runner.DataError(f"{at}: type must be 0 (No) or 1 (Yes), got {kind}")
                truth = "Yes" if kind == 1 else "No"
                prompt = (
                    ssr_prompt(runner.field(test, "step", str, at))
                    if task == "SSR"
                    else crr_prompt(runner.field(item, "question", str, where))
                )
            out.append(Question(f"{ident}:{i}", task, video, start, realtime, prompt, truth))
    return out


def load_questions(data: Path) -> list[Question]:
    path = data if data.is_file() else data / "ovo_bench_new.json"
    if not path.is_file():
        raise runner.DataError(
            f"'{path}' does not exist; put OVO-Bench's ovo_bench_new.json there or fix --data"
        )
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise runner.DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return questions(items, path.parent, path.name)


def clip_frames(q: Question, max_frames: int) -> tuple[list, float]:
    """The clip's frames at 2 FPS (evenly spread when there would be more than `max_frames`) and their rate."""
    from evals.video import duration, frames_at, sample_times

    end = min(q.end, duration(q.video))
    times = sample_times(q.start, max(end, q.start + 1.0 / FPS), fps=FPS, max_frames=max_frames)
    frames = [f.rgb for f in frames_at(q.video, times)]
    return frames, len(times) / max(end - q.start, 1.0 / FPS)


def run(args: argparse.Namespace) -> int:
    runner.data_folder(args.data, "OVO-Bench (ovo_bench_new.json and its videos)")
    qs = load_questions(args.data)
    from evals.offline_qa import OVO_ANSWERS, OVO_PREFIX, FrameBudget, OfflineQA

    if args.tasks:
        wanted = {t.strip() for t in args.tasks.split(",")}
        qs = [q for q in qs if q.task in wanted]
    qs = qs[: args.limit]
    shard = runner.shard_of(args)
    store = ResultFile(args.out, "answers", shard)
    by_key = {q.key: q for q in qs}
    todo = runner.pending(store, list(by_key))
    if todo:
        from core.loading import model_from_config

        runner.require_model(args)
        model = model_from_config(runner.engine_config(args))
        qa = OfflineQA(model, FrameBudget.capped(args.max_pixels))
        for n, key in enumerate(todo, 1):
            q = by_key[key]
            began = time.perf_counter()
            frames, fps = clip_frames(q, args.max_frames)
            result = qa.answer(frames, fps, q.prompt, OVO_ANSWERS, OVO_PREFIX)
            store.append(
                {"key": key, "task": q.task, "answer": result.answer, "truth": q.truth,
                 "correct": result.answer == q.truth, "frames": len(frames), "scores": result.scores,
                 "wall_s": round(time.perf_counter() - began, 3)}
            )  # fmt: skip
            log.info(
                "answered %d/%d: %s %s -> %s (truth %s)", n, len(todo), q.task, key, result.answer, q.truth
            )
    meta = run_meta("ovobench", {**vars(args), "fps": FPS, "answers": OVO_ANSWERS, "prefix": OVO_PREFIX})
    results = summarize(store.load(), list(by_key), meta)
    if args.compare:
        other = json.loads((args.compare / "results.json").read_text())
        results["compare"] = {"run": str(args.compare), "delta": _delta(results, other)}
    write_outputs(args.out, results, markdown(results), lambda o: _plot(results, o))
    print(markdown(results))
    return 0


def summarize(records: dict[str, dict], keys: list[str], meta: dict) -> dict:
    """Accuracy per task, per group (mean of its tasks) and overall (mean of all tasks), in percent."""
    answered = [records[k] for k in keys if k in records]
    tasks: dict[str, dict] = {}
    for r in answered:
        t = tasks.setdefault(r["task"], {"correct": 0, "total": 0})
        t["correct"] += bool(r["correct"])
        t["total"] += 1
    for t in tasks.values():
        t["accuracy"] = round(100.0 * t["correct"] / t["total"], 2)
    groups = {}
    for group, names in GROUPS.items():
        accs = [tasks[n]["accuracy"] for n in names if n in tasks]
        groups[group] = round(sum(accs) / len(accs), 2) if accs else None
    all_accs = [t["accuracy"] for t in tasks.values()]
    return {
        "meta": meta,
        "tasks": dict(sorted(tasks.items())),
        "groups": groups,
        "overall": round(sum(all_accs) / len(all_accs), 2) if all_accs else None,
        "counts": {"questions": len(keys), "answered": len(answered), "complete": len(answered) == len(keys)},
    }


def _delta(mine: dict, other: dict) -> dict:
    return {
        g: round(mine["groups"][g] - other["groups"][g], 2)
        for g in GROUPS
        if mine["groups"].get(g) is not None and other.get("groups", {}).get(g) is not None
    }


def markdown(results: dict) -> str:
    g, c = results["groups"], results["counts"]
    text = (
        f"# OVO-Bench\n\nmodel `{results['meta']['config'].get('model')}` (git {results['meta']['git']}); "
        f"{c['answered']} of {c['questions']} questions answered{'' if c['complete'] else ' (INCOMPLETE)'}\n\n"
        + table(["group", "accuracy %"], [[k, v] for k, v in g.items()] + [["Overall (mean of tasks)", results["overall"]]])
        + "\n"
        + table(["task", "correct", "total", "accuracy %"], [[k, v["correct"], v["total"], v["accuracy"]] for k, v in results["tasks"].items()])
    )  # fmt: skip
    if "compare" in results:
        text += f"\nDifference from `{results['compare']['run']}` (published: Real-Time +5.96 over the base model):\n\n"
        text += table(["group", "delta (points)"], [[k, v] for k, v in results["compare"]["delta"].items()])
    return text


def _plot(results: dict, out: Path) -> None:
    tasks = results["tasks"]
    bar_plot(out / "accuracy.png", list(tasks), [t["accuracy"] for t in tasks.values()],
             title="OVO-Bench accuracy per task", ylabel="accuracy %")  # fmt: skip
