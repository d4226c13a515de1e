"""`python -m evals inf-stream`: Inf-Streams-Eval, pairwise win rate of live commentary judged by an LLM.

Protocol (StreamingVLM, section 5): for each video of `eval_all_metadata.jsonl` (`{video, content:
[[s, e, word], ...]}`) the model comments from `--start` (1000 s) to the last word (or the end
of the video), seeded with the transcript words before the start as previous text and given the
long broadcaster instruction, either as one unbroken stream or restarting every `--restart-every`
seconds. Each reply is stored as `{response, start_time, end_time}`. Videos shorter than
`--start` are an error naming `--start` (short test videos, like the fixtures, need `--start 0`).

Scoring uses the score windows (`{video, title?, content: [[s, e, text], ...], preasr}`): a model's
text for a window is its replies whose end time falls in (window start, window end], cut to 8,000
characters; the judge, with no video, gets the human transcript of the window as the reference
for tone and on-screen facts and candidates A and B, judging broadcast tone and pacing first and
consistency with the visuals second, and answers one letter. Every window is judged in both
orders. Win rate of the model = its votes / all parsed votes; unparseable verdicts are counted
and reported, never given to a side.

The baseline is another run's folder (`--baseline-run`, e.g. the base Qwen2.5-VL through our
engine with `--restart-every 100`), or an API model generated here over the windows
(`--baseline-api-url/--baseline-api-model`: the GPT-4o-mini protocol of evals/api_commentator.py).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from core import cli_args
from core.config import GenerationConfig
from core.errors import ConfigError
from evals import runner
from evals.api_commentator import commentate_window
from evals.commentary import clip_span, commentate, last_time, words_before
from evals.judge import Pair, judge_pairs, tally
from evals.report import bar_plot, percent, table, write_outputs
from evals.results import ResultFile, run_meta

log = logging.getLogger(__name__)

# The published evaluation's instruction (its generate script's QUERY), kept word for word because
# the checkpoint was scored with it.
INSTRUCTION = (
    "Act as a live sports broadcaster: in short present-tense lines, call the on-screen play first, then one "
    "brief courtside insight; vary your energy with the moment and include visible score/time.\n"
    "Stay perfectly synced to the video\u2014only describe what\u2019s visible, never invent names or facts "
    "(use positions/numbers if unknown), and immediately correct yourself if the scoreboard contradicts you."
)
CANDIDATE_CHARS = 8000  # the protocol cuts each candidate to this many characters
JUDGE_SYSTEM = "You are an expert judge of live sports broadcast commentary. Answer with a single letter."


@dataclass(frozen=True)
class Video:
    key: str
    path: Path
    words: list[tuple[float, float, str]]


@dataclass(frozen=True)
class Window:
    key: str
    video: str
    start: float
    end: float
    reference: str
    title: str
    where: str  # the score-window row, named by errors about its times


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_common_arguments(parser, api_model=True)
    parser.add_argument("--metadata", type=cli_args.path_arg, help="default: DATA/eval_all_metadata.jsonl")
    parser.add_argument(
        "--windows", type=cli_args.path_arg, help="score windows (jsonl); default: DATA/windows.jsonl"
    )
    parser.add_argument(
        "--start",
        type=cli_args.number(0, 10**7),
        default=1000.0,
        help="stream seconds where commentary starts (the protocol's 1000; smaller for short videos)",
    )
    parser.add_argument(
        "--restart-every", type=cli_args.SECONDS, help="start a new session every N seconds (e.g. 100)"
    )
    parser.add_argument(
        "--baseline-run", type=cli_args.path_arg, help="a finished inf-stream run folder to compare against"
    )
    parser.add_argument(
        "--seed",
        type=cli_args.setting(GenerationConfig, "seed"),
        default=0,
        help="sampling seed of every video",
    )


def load_videos(metadata: Path, root: Path) -> list[Video]:
    videos, seen = [], set()
    for number, row in runner.read_jsonl(metadata, "Inf-Streams-Eval metadata"):
        where = f"{metadata} line {number}"
        name = runner.field(row, "video", str, where)
        words = runner.timed_triples(runner.field(row, "content", list, where), where)
        if not words:
            raise runner.DataError(f"{where}: the video's content is empty; it needs its transcript words")
        if name in seen:
            raise runner.DataError(f"{where}: video '{name}' appears twice")
        seen.add(name)
        videos.append(Video(name, runner.resolve_video(root, name), words))
    return runner.selected(
        videos, "videos", f"'{metadata}'", "give Inf-Streams-Eval's eval_all_metadata.jsonl"
    )


def blame(video: Video, start: float) -> dict[str, str]:
    """What set the span of `video` (--start to its last transcript word), for errors about it."""
    return {
        "origin": f"--start {start:g} (video '{video.key}', transcript to {last_time(video.words):g} s)",
        "hint": "pass a smaller --start (the protocol's 1000 s needs videos longer than that)",
    }


def load_windows(path: Path) -> list[Window]:
    windows, count = [], {}
    for number, row in runner.read_jsonl(path, "Inf-Streams-Eval score windows"):
        where = f"{path} line {number}"
        video = runner.field(row, "video", str, where)
        content = runner.timed_triples(runner.field(row, "content", list, where), where)
        if not content:
            raise runner.DataError(f"{where}: the window's content is empty")
        i = count[video] = count.get(video, -1) + 1
        windows.append(
            Window(
                key=f"{video}#{i}",
                video=video,
                start=min(s for s, _, _ in content),
                end=max(e for _, e, _ in content),
                reference=" ".join(t.strip() for _, _, t in content if t.strip()),
                title=str(row.get("title") or ""),
                where=where,
            )
        )
    return runner.selected(windows, "score windows", f"'{path}'", "give Inf-Streams-Eval's windows.jsonl")


def window_text(items: list[dict], start: float, end: float) -> str:
    """The replies whose end time falls in (start, end], joined, cut to the protocol's 8,000 characters."""
    text = " ".join(i["response"] for i in items if start < i["end_time"] <= end and i["response"])
    return text[:CANDIDATE_CHARS]


def judge_messages(pair: Pair, text_a: str, text_b: str) -> list[dict]:
    title = f" ({pair.context['title']})" if pair.context.get("title") else ""
    prompt = (
        f"Below is the human commentator's transcript of {pair.context['start']:.0f}-{pair.context['end']:.0f} s "
        f"of a sports broadcast{title}, and two candidate commentaries of the same span. You do not see the video: "
        "use the transcript as the reference for the tone of a live broadcast and for the facts on screen (score, "
        "clock, players, plays); the candidates need not repeat its words.\n\n"
        f"[Reference transcript]\n{pair.reference}\n\n[Candidate A]\n{text_a}\n\n[Candidate B]\n{text_b}\n\n"
        "Which candidate is the better live commentary? Judge broadcast tone and pacing first (short, timely, "
        "natural live calls), then consistency with what is visible as the reference describes it. Answer with "
        "exactly one letter: A or B."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]


def run(args: argparse.Namespace) -> int:
    data = runner.data_folder(args.data, "Inf-Streams-Eval")
    out: Path = args.out
    shard = runner.shard_of(args)
    videos = load_videos(args.metadata or data / "eval_all_metadata.jsonl", data)[: args.limit]
    judge = runner.endpoint(args, "judge")
    api = runner.endpoint(args, "baseline-api", max_tokens=400, temperature=0.0)
    if args.baseline_run and api:
        raise ConfigError("give --baseline-run or --baseline-api-*, not both")
    baseline_run = None
    if judge and args.baseline_run:  # checked before anything is generated
        baseline_run = runner.baseline_generations(args.baseline_run, "inf-stream")
    elif args.baseline_run:
        runner.earlier_run(args.baseline_run, "inf-stream", "--baseline-run")
    settings = runner.model_settings(args, streaming=True) if args.model else {}
    if args.model:
        settings.update({"--start": args.start, "--restart-every": args.restart_every, "--seed": args.seed})
    settings.update(runner.judging_settings(judge, api, args.baseline_run))
    with runner.output_folder(out, "inf-stream", settings, shard):
        return _run(args, data, videos, judge, api, baseline_run)


def _run(args: argparse.Namespace, data: Path, videos: list[Video], judge, api, baseline_run) -> int:
    out: Path = args.out
    shard = runner.shard_of(args)
    meta = run_meta(
        "inf-stream",
        {**vars(args), "engine": runner.engine_settings(args), "instruction": INSTRUCTION},
        judge.describe() if judge else None,
    )

    generations = ResultFile(out, "generations", shard)
    todo = runner.pending(generations, [v.key for v in videos])
    if todo and not args.model and generations.load():
        log.warning("%d videos have no commentary yet; give --model to generate them", len(todo))
        todo = []
    if todo:
        by_key = {v.key: v for v in videos}
        for key in todo:  # every span is checked before the model loads
            video = by_key[key]
            clip_span(video.path, args.start, last_time(video.words), **blame(video, args.start))
        engine = runner.load_engine(args)
        for n, key in enumerate(todo, 1):
            video = by_key[key]
            began = time.perf_counter()
            items = commentate(
                engine,
                video.path,
                args.start,
                last_time(video.words),
                **blame(video, args.start),
                instruction=INSTRUCTION,
                previous_text=words_before(video.words, args.start),
                restart_every=args.restart_every,
                seed=args.seed,
            )
            generations.append({"key": key, "items": items, "wall_s": round(time.perf_counter() - began, 2)})
            log.info("generated %d/%d: %s (%d replies)", n, len(todo), key, len(items))

    if not (judge and (args.baseline_run or api)):
        log.info("no judge or no baseline given: generation only (%s)", out)
        return 0
    windows = [w for w in load_windows(args.windows or data / "windows.jsonl") if w.end > args.start]
    wanted = {v.key for v in videos}
    windows = runner.selected(
        [w for w in windows if w.video in wanted],
        f"score windows ending after --start {args.start:g} s",
        f"'{args.windows or data / 'windows.jsonl'}' for these {len(videos)} videos",
        "give a smaller --start or the windows of these videos",
    )

    if api:
        baseline_store = ResultFile(out, "baseline", shard)
        pending = runner.pending(baseline_store, [w.key for w in windows])
        client = runner.chat_client(api, out, "baseline_api")
        by_key = {w.key: w for w in windows}
        for key in pending:  # the API model sees each window's frames: check every span first
            w = by_key[key]
            clip_span(runner.resolve_video(data, w.video), w.start, w.end, origin=f"{w.where} (window "
                      f"{w.start:g}-{w.end:g} s)", hint="fix the window's content times")  # fmt: skip
        for key in pending:
            w = by_key[key]
            item = commentate_window(client, runner.resolve_video(data, w.video), w.start, w.end, w.title)
            baseline_store.append({"key": key, "video": w.video, "items": [item]})
        baseline = _items_by_video(baseline_store.load(), video_of=lambda r: r["video"])
        baseline_name = f"api:{api.model}"
    else:
        baseline = _items_by_video(baseline_run)
        baseline_name = str(args.baseline_run)

    model = _items_by_video(generations.load())
    ready = [w for w in windows if w.video in model and w.video in baseline]
    if not ready:
        missing = (
            "this run" if not any(w.video in model for w in windows) else f"the baseline {baseline_name}"
        )
        raise runner.DataError(
            f"none of the {len(windows)} score windows after --start {args.start:g} s can be judged: "
            f"{missing} has no commentary of their videos; generate it (--model) or give another baseline"
        )
    pairs = [
        Pair(
            key=w.key,
            model_text=window_text(model[w.video], w.start, w.end),
            baseline_text=window_text(baseline[w.video], w.start, w.end),
            reference=w.reference,
            context={"title": w.title, "start": w.start, "end": w.end},
        )
        for w in ready
    ]
    judgments = ResultFile(out, "judgments", shard)
    mine = set(shard.select([p.key for p in pairs]))
    client = runner.chat_client(judge, out, "judge")
    judge_pairs(client, [p for p in pairs if p.key in mine], judgments, judge_messages, args.judge_workers)

    results = summarize(judgments.load(), ready, len(windows), meta, baseline_name)
    results["counts"]["videos"], results["counts"]["videos_generated"] = len(videos), len(model)
    write_outputs(out, results, markdown(results), lambda o: _plot(results, o))
    print(markdown(results))
    return 0


def summarize(
    verdicts: dict[str, dict], windows: list[Window], all_windows: int, meta: dict, baseline: str
) -> dict:
    by_window = {w.key: w for w in windows}
    records = [v for v in verdicts.values() if v["pair"] in by_window]
    votes = tally(records)
    per_video: dict[str, list[dict]] = {}
    for v in records:
        per_video.setdefault(by_window[v["pair"]].video, []).append(v)
    parsed = votes["model"] + votes["baseline"]
    return {
        "meta": meta,
        "baseline": baseline,
        "win_rate": percent(votes["model"], parsed),
        "votes": votes,
        "counts": {
            "windows": all_windows,
            "windows_with_both_generations": len(windows),
            "windows_judged": len({v["pair"] for v in records}),
            "complete": votes["total"] == 2 * len(windows),
        },
        "per_video": {
            video: {
                **tally(vs),
                "win_rate": percent(tally(vs)["model"], tally(vs)["model"] + tally(vs)["baseline"]),
            }
            for video, vs in sorted(per_video.items())
        },
    }


def markdown(results: dict) -> str:
    judge = results["meta"]["judge"] or {}
    votes, counts = results["votes"], results["counts"]
    head = (
        f"# Inf-Streams-Eval\n\nmodel `{results['meta']['config'].get('model')}` vs baseline `{results['baseline']}`, "
        f"judge `{judge.get('model')}` at {judge.get('url')} (git {results['meta']['git']})\n\n"
        f"**Win rate {results['win_rate']}%** ({votes['model']} of {votes['model'] + votes['baseline']} parsed votes; "
        f"{votes['unparseable']} unparseable; {counts['windows_judged']} of {counts['windows']} windows judged"
        f"{'' if counts['complete'] else ', INCOMPLETE'}). Published: StreamingVLM 66.18% vs GPT-4o mini.\n\n"
    )
    rows = [
        [v, r["model"], r["baseline"], r["unparseable"], r["win_rate"]]
        for v, r in results["per_video"].items()
    ]
    return head + table(["video", "model votes", "baseline votes", "unparseable", "win rate %"], rows)


def _plot(results: dict, out: Path) -> None:
    per = results["per_video"]
    bar_plot(
        out / "win_rate.png",
        list(per),
        [r["win_rate"] or 0.0 for r in per.values()],
        title=f"Inf-Streams-Eval win rate {results['win_rate']}%",
        ylabel="win rate %",
        line=50.0,
    )


def _items_by_video(records: dict[str, dict], video_of=lambda r: r["key"]) -> dict[str, list[dict]]:
    items: dict[str, list[dict]] = {}
    for record in records.values():
        items.setdefault(video_of(record), []).extend(record["items"])
    return items
