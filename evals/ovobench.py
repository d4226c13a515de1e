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

`--recent-frames N` (N = 4 when given bare) adds the recent-frames baseline (SimpleStream, arXiv
2604.02317): `--baseline-model` (default `--model`; for StreamingVLM give the base model) answers
every question again from only the last N of the frames the full run samples (the last N/2 s at
2 FPS), in the same layout, stored as `baseline.<shard>.jsonl` and reported beside the model's
numbers. Off-the-shelf Qwen2.5-VL-7B scores 78.4 Real-Time that way, so a Real-Time score says little
about long memory without it.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from core.cli_args import number, path_arg
from core.errors import ConfigError
from evals import runner
from evals.report import bar_plot, table, write_outputs
from evals.results import ResultFile, provenance, run_meta

# The model side (evals/offline_qa.py: torch) and PyAV (evals/video.py) load in run (evals/registry.py).

log = logging.getLogger(__name__)

GROUPS = {
    "Real-Time": ("OCR", "ACR", "ATR", "STU", "FPD", "OJR"),
    "Backward": ("EPM", "ASI", "HLD"),
    "Forward": ("REC", "SSR", "CRR"),
}
CHOICE_TASKS = GROUPS["Real-Time"] + GROUPS["Backward"]
FPS, MAX_FRAMES = 2.0, 480
RECENT_FRAMES = 4  # SimpleStream's setting


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
        "--compare", type=path_arg, help="another ovobench run folder (e.g. the base model) to diff against"
    )
    parser.add_argument(
        "--recent-frames",
        type=number(1, 100_000, integer=True),
        nargs="?",
        const=RECENT_FRAMES,
        metavar="N",
        help=f"also answer every question from only its last N frames (default {RECENT_FRAMES}): the "
        "recent-frames baseline, reported beside the model's numbers",
    )
    parser.add_argument(
        "--baseline-model",
        help="checkpoint answering the recent-frames baseline (default: --model; for StreamingVLM give "
        "the base model, e.g. Qwen/Qwen2.5-VL-7B-Instruct)",
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
    items = runner.read_json(path, "OVO-Bench's ovo_bench_new.json")
    return runner.selected(
        questions(items, path.parent, path.name), "OVO-Bench items", f"'{path}'", "give OVO-Bench's file"
    )


ALL_TASKS = tuple(t for names in GROUPS.values() for t in names)


def wanted_tasks(text: str | None) -> set[str] | None:
    """`--tasks`: the task names asked for (None: all); an unknown or missing name is a ConfigError."""
    if text is None:
        return None
    names = {t.strip() for t in text.split(",") if t.strip()}
    unknown = sorted(names - set(ALL_TASKS))
    if unknown or not names:
        what = f"unknown task {', '.join(unknown)}" if unknown else "no task"
        raise ConfigError(f"--tasks names {what}; choose from {', '.join(ALL_TASKS)}")
    return names


def clip_frames(q: Question, max_frames: int, recent: int | None = None) -> tuple[list, float]:
    """The clip's frames at 2 FPS (evenly spread when there would be more than `max_frames`) and their
    rate; with `recent`, only the last `recent` of those frames (the recent-frames baseline)."""
    from evals.video import duration, frames_at, sample_times

    end = min(q.end, duration(q.video))
    times = sample_times(q.start, max(end, q.start + 1.0 / FPS), fps=FPS, max_frames=max_frames)
    rate = len(times) / max(end - q.start, 1.0 / FPS)  # the sampling rate, whichever frames are kept
    if recent:
        times = times[-recent:]
    return [f.rgb for f in frames_at(q.video, times)], rate


def run(args: argparse.Namespace) -> int:
    runner.data_folder(args.data, "OVO-Bench (ovo_bench_new.json and its videos)")
    if args.baseline_model and not args.recent_frames:
        raise ConfigError("--baseline-model answers the recent-frames baseline; add --recent-frames N")
    wanted = wanted_tasks(args.tasks)
    other = runner.earlier_run(args.compare, "ovobench", "--compare", results=True) if args.compare else None
    qs = load_questions(args.data)
    from evals.offline_qa import FrameBudget

    if wanted is not None:
        present = sorted({q.task for q in qs})
        qs = runner.selected(
            [q for q in qs if q.task in wanted],
            f"questions of the tasks {', '.join(sorted(wanted))}",
            f"'{args.data}'",
            f"it has {', '.join(present)}",
        )
    qs = qs[: args.limit]
    shard = runner.shard_of(args)
    by_key = {q.key: q for q in qs}
    budget = FrameBudget.capped(args.max_pixels)
    with runner.output_folder(args.out, "ovobench", _settings(args, budget), shard):
        return _run(args, by_key, budget, shard, other)


def _settings(args: argparse.Namespace, budget) -> dict:
    """What changes an answer: the checkpoint and its precision, the frames, the pixel budget; with the
    recent-frames baseline, its frames and checkpoint."""
    from dataclasses import asdict

    settings = {
        **runner.model_settings(args),
        "--max-frames": args.max_frames,
        "--max-pixels": asdict(budget),
    }
    if args.recent_frames:
        settings["--recent-frames"] = args.recent_frames
        if args.baseline_model or args.model:
            settings["--baseline-model"] = args.baseline_model or args.model
    return settings


def _run(args: argparse.Namespace, by_key: dict, budget, shard, other: dict | None) -> int:
    from evals.offline_qa import OVO_ANSWERS, OVO_PREFIX

    store = ResultFile(args.out, "answers", shard)
    stages = [(store, args.model, None)]
    if args.recent_frames:
        baseline_model = args.baseline_model or args.model
        stages.append((ResultFile(args.out, "baseline", shard), baseline_model, args.recent_frames))
    loaded: dict[str, object] = {}  # one load per checkpoint, kept for the next stage
    for stage, checkpoint, recent in stages:
        todo = runner.pending(stage, list(by_key))
        if todo:
            qa = _offline_qa(args, checkpoint, budget, loaded)
            _answer(qa, stage, [by_key[k] for k in todo], args.max_frames, recent)
    meta = run_meta(
        "ovobench",
        {**vars(args), "fps": FPS, "answers": OVO_ANSWERS, "prefix": OVO_PREFIX},
        how=_provenance(args, budget),
    )
    results = summarize(store.load(), list(by_key), meta)
    if args.recent_frames:
        base = summarize(stages[1][0].load(), list(by_key), {})
        base.pop("meta")
        results["baseline"] = {**meta["provenance"]["baseline"], **base}
    if other is not None:
        results["compare"] = {"run": str(args.compare), "delta": _delta(results, other)}
    write_outputs(args.out, results, markdown(results), lambda o: _plot(results, o))
    print(markdown(results))
    return 0


def _offline_qa(args: argparse.Namespace, checkpoint: str | None, budget, loaded: dict):
    from dataclasses import replace

    from core.loading import model_from_config
    from evals.offline_qa import OfflineQA

    if not checkpoint:
        runner.require_model(args)
    if checkpoint not in loaded:
        loaded.clear()  # one model in memory at a time
        config = runner.engine_config(args)
        loaded[checkpoint] = model_from_config(replace(config, model=replace(config.model, path=checkpoint)))
    return OfflineQA(loaded[checkpoint], budget)


def _answer(qa, store: ResultFile, todo: list[Question], max_frames: int, recent: int | None) -> None:
    from evals.offline_qa import OVO_ANSWERS, OVO_PREFIX

    for n, q in enumerate(todo, 1):
        began = time.perf_counter()
        frames, fps = clip_frames(q, max_frames, recent)
        result = qa.answer(frames, fps, q.prompt, OVO_ANSWERS, OVO_PREFIX)
        store.append(
            {"key": q.key, "task": q.task, "answer": result.answer, "truth": q.truth,
             "correct": result.answer == q.truth, "frames": len(frames), "scores": result.scores,
             "wall_s": round(time.perf_counter() - began, 3)}
        )  # fmt: skip
        log.info(
            "%s %d/%d: %s %s -> %s (truth %s)",
            store.stage,
            n,
            len(todo),
            q.task,
            q.key,
            result.answer,
            q.truth,
        )


def _provenance(args: argparse.Namespace, budget) -> dict:
    from dataclasses import asdict

    baseline = None
    if args.recent_frames:
        baseline = {"kind": f"recent-frames {args.recent_frames}", "model": args.baseline_model or args.model,
                    "source": "answered in this run (baseline.*.jsonl)"}  # fmt: skip
    return provenance(
        "ovobench",
        model=args.model,
        sampling="offline",
        frames={"fps": FPS, "max_frames": args.max_frames},
        pixels=asdict(budget),
        cache="none: one forward over the clip and the question",
        baseline=baseline,
        seed=None,  # no sampling: the answer is an argmax
    )


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
        if mine["groups"].get(g) is not None
        and isinstance(other.get("groups"), dict)
        and isinstance(other["groups"].get(g), (int, float))
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
    if "baseline" in results:
        b = results["baseline"]
        text += (
            f"\nBeside the {b['kind']} baseline (`{b['model']}` answering from only its last frames; "
            f"{b['counts']['answered']} of {b['counts']['questions']} answered):\n\n"
        )
        rows = [[k, v, b["groups"].get(k), _minus(v, b["groups"].get(k))] for k, v in g.items()]
        rows.append(
            [
                "Overall (mean of tasks)",
                results["overall"],
                b["overall"],
                _minus(results["overall"], b["overall"]),
            ]
        )
        text += table(["group", "model %", f"{b['kind']} %", "model - baseline"], rows)
    if "compare" in results:
        text += f"\nDifference from `{results['compare']['run']}` (published: Real-Time +5.96 over the base model):\n\n"
        text += table(["group", "delta (points)"], [[k, v] for k, v in results["compare"]["delta"].items()])
    return text


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def _plot(results: dict, out: Path) -> None:
    tasks = results["tasks"]
    bar_plot(out / "accuracy.png", list(tasks), [t["accuracy"] for t in tasks.values()],
             title="OVO-Bench accuracy per task", ylabel="accuracy %")  # fmt: skip
