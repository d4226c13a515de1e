"""`python -m evals livesports-cc`: LiveSports-3K CC, pairwise win rate against a baseline's commentary.

Protocol (LiveCC's CC track, as StreamingVLM reports it): each event of the `LiveSports_3K_CC` test
split (`video, video_id, event_id, begin, end, event_title, preasr_text, event_asr_text`) is
streamed from `begin` to `end` with the pre-event transcript as previous text and the event title
in the instruction; the prediction is the replies joined. A judge (gpt-4o-mini, temperature 0,
seed 42) sees the human commentary (`event_asr_text`) and predictions A and B and picks the one
that matches it better, meaning first and style second; each event is judged in both orders and
win rate = the model's wins / (2 x events judged), so an unparseable verdict counts for neither
side (and is reported).

Data: a local export of the split (.jsonl, .json or .parquet; the parquet reader needs pandas),
or a folder holding one, with the videos beside it (or in `--video-dir`).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from core.cli_args import path_arg, setting
from core.config import GenerationConfig
from core.errors import ConfigError
from evals import runner
from evals.api_commentator import commentate_window
from evals.commentary import check_span, clip_span, commentate
from evals.judge import Pair, judge_pairs, tally
from evals.report import bar_plot, percent, table, write_outputs
from evals.results import ResultFile, run_meta

log = logging.getLogger(__name__)

FIELDS = {"video": str, "video_id": str, "event_id": (str, int), "begin": (int, float), "end": (int, float),
          "event_title": str, "preasr_text": str, "event_asr_text": str}  # fmt: skip
JUDGE_SYSTEM = "You are an expert judge of sports video commentary. Answer with a single letter."


@dataclass(frozen=True)
class Event:
    key: str
    path: Path
    begin: float
    end: float
    title: str
    preasr: str
    reference: str
    where: str  # the data row, named by errors about its times

    def blame(self) -> dict[str, str]:
        """What set the event's span (its row's begin and end), for errors about it."""
        return {
            "origin": f"{self.where} ('begin' {self.begin:g}, 'end' {self.end:g})",
            "hint": "fix the row's begin and end, or the video it names (--video-dir)",
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_common_arguments(parser, api_model=True)
    parser.add_argument(
        "--video-dir", type=path_arg, help="where the videos are (default: beside the data file)"
    )
    parser.add_argument(
        "--baseline-run", type=path_arg, help="a finished livesports-cc run folder to compare against"
    )
    parser.add_argument("--seed", type=setting(GenerationConfig, "seed"), default=0)


def instruction(title: str) -> str:
    return f"{title.strip()}\nCommentate on this match" if title.strip() else "Commentate on this match"


def load_events(data: Path, video_dir: Path | None) -> list[Event]:
    path = _data_file(data)
    rows = _rows(path)
    root = video_dir or path.parent
    events, seen = [], set()
    for number, row in rows:
        where = f"{path} row {number}"
        for name, kind in FIELDS.items():
            runner.field(row, name, kind, where)
        key = f"{row['video_id']}/{row['event_id']}"
        if key in seen:
            raise runner.DataError(f"{where}: event {key} appears twice")
        seen.add(key)
        event = Event(key, runner.resolve_video(root, row["video"]), float(row["begin"]), float(row["end"]),
                      row["event_title"], row["preasr_text"], row["event_asr_text"], where)  # fmt: skip
        check_span(event.begin, event.end, **event.blame())
        events.append(event)
    return runner.selected(events, "events", f"'{path}'", "give the LiveSports_3K_CC test split")


def judge_messages(pair: Pair, text_a: str, text_b: str) -> list[dict]:
    prompt = (
        f"A sports event ({pair.context['title']}) was commented on by a human commentator and by two systems.\n\n"
        f"[Human commentary]\n{pair.reference}\n\n[Prediction A]\n{text_a}\n\n[Prediction B]\n{text_b}\n\n"
        "Which prediction matches the human commentary better? Compare meaning first (the events, facts and "
        "people described) and style second (a live commentator's voice). Answer with exactly one letter: A or B."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]


def run(args: argparse.Namespace) -> int:
    runner.data_folder(args.data, "LiveSports-3K (config LiveSports_3K_CC, split test)")
    out: Path = args.out
    shard = runner.shard_of(args)
    events = load_events(args.data, args.video_dir)[: args.limit]
    judge = runner.endpoint(args, "judge")
    api = runner.endpoint(args, "baseline-api", max_tokens=400, temperature=0.0)
    if args.baseline_run and api:
        raise ConfigError("give --baseline-run or --baseline-api-*, not both")
    baseline_run = None
    if judge and args.baseline_run:  # checked before anything is generated
        baseline_run = runner.baseline_generations(args.baseline_run, "livesports-cc")
    elif args.baseline_run:
        runner.earlier_run(args.baseline_run, "livesports-cc", "--baseline-run")
    settings = {**runner.model_settings(args, streaming=True), "--seed": args.seed} if args.model else {}
    settings.update(runner.judging_settings(judge, api, args.baseline_run))
    with runner.output_folder(out, "livesports-cc", settings, shard):
        return _run(args, events, judge, api, baseline_run)


def _run(args: argparse.Namespace, events: list[Event], judge, api, baseline_run) -> int:
    out: Path = args.out
    shard = runner.shard_of(args)
    meta = run_meta("livesports-cc", {**vars(args), "engine": runner.engine_settings(args)},
                    judge.describe() if judge else None)  # fmt: skip
    by_key = {e.key: e for e in events}

    generations = ResultFile(out, "generations", shard)
    todo = runner.pending(generations, list(by_key))
    if todo and not args.model and generations.load():
        log.warning("%d events have no prediction yet; give --model to generate them", len(todo))
        todo = []
    if todo:
        for key in todo:  # every span is checked against its video before the model loads
            clip_span(by_key[key].path, by_key[key].begin, by_key[key].end, **by_key[key].blame())
        engine = runner.load_engine(args)
        for n, key in enumerate(todo, 1):
            e = by_key[key]
            began = time.perf_counter()
            items = commentate(engine, e.path, e.begin, e.end, **e.blame(), instruction=instruction(e.title),
                               previous_text=e.preasr, seed=args.seed)  # fmt: skip
            prediction = " ".join(i["response"] for i in items)
            generations.append({"key": key, "prediction": prediction, "items": items,
                                "wall_s": round(time.perf_counter() - began, 2)})  # fmt: skip
            log.info("generated %d/%d: %s", n, len(todo), key)

    if not (judge and (args.baseline_run or api)):
        log.info("no judge or no baseline given: generation only (%s)", out)
        return 0
    if api:
        store = ResultFile(out, "baseline", shard)
        client = runner.chat_client(api, out, "baseline_api")
        pending = runner.pending(store, list(by_key))
        for key in pending:
            clip_span(by_key[key].path, by_key[key].begin, by_key[key].end, **by_key[key].blame())
        for key in pending:
            e = by_key[key]
            item = commentate_window(client, e.path, e.begin, e.end, e.title)
            store.append({"key": key, "prediction": item["response"]})
        baseline, baseline_name = store.load(), f"api:{api.model}"
    else:
        baseline, baseline_name = baseline_run, str(args.baseline_run)

    model = generations.load()
    ready = [e for e in events if e.key in model and e.key in baseline]
    if not ready:
        missing = "this run" if not any(e.key in model for e in events) else f"the baseline {baseline_name}"
        raise runner.DataError(
            f"none of the {len(events)} events can be judged: {missing} has no commentary of them; "
            "generate it (--model) or give another baseline"
        )
    pairs = [
        Pair(
            e.key, model[e.key]["prediction"], baseline[e.key]["prediction"], e.reference, {"title": e.title}
        )
        for e in ready
    ]
    judgments = ResultFile(out, "judgments", shard)
    mine = set(shard.select([p.key for p in pairs]))
    client = runner.chat_client(judge, out, "judge")
    judge_pairs(client, [p for p in pairs if p.key in mine], judgments, judge_messages, args.judge_workers)

    results = summarize(judgments.load(), [e.key for e in ready], len(events), meta, baseline_name)
    write_outputs(out, results, markdown(results), lambda o: _plot(results, o))
    print(markdown(results))
    return 0


def summarize(verdicts: dict[str, dict], keys: list[str], all_events: int, meta: dict, baseline: str) -> dict:
    wanted = set(keys)
    records = [v for v in verdicts.values() if v["pair"] in wanted]
    votes = tally(records)
    judged = len({v["pair"] for v in records})
    return {
        "meta": meta,
        "baseline": baseline,
        "win_rate": percent(votes["model"], 2 * judged),  # the published wins / (2N)
        "votes": votes,
        "counts": {
            "events": all_events,
            "events_with_both": len(keys),
            "events_judged": judged,
            "complete": votes["total"] == 2 * len(keys),
        },  # fmt: skip
    }


def markdown(results: dict) -> str:
    judge = results["meta"]["judge"] or {}
    v, c = results["votes"], results["counts"]
    return (
        f"# LiveSports-3K CC\n\nmodel `{results['meta']['config'].get('model')}` vs baseline `{results['baseline']}`, "
        f"judge `{judge.get('model')}` at {judge.get('url')} (git {results['meta']['git']})\n\n"
        f"**Win rate {results['win_rate']}%** = {v['model']} wins / (2 x {c['events_judged']} events)"
        f"{'' if c['complete'] else ' (INCOMPLETE)'}. Logged reference: LiveCC-7B-Instruct 47.24% vs GPT-4o.\n\n"
        + table(
            ["model wins", "baseline wins", "unparseable", "verdicts"],
            [[v["model"], v["baseline"], v["unparseable"], v["total"]]],
        )  # fmt: skip
    )


def _plot(results: dict, out: Path) -> None:
    v = results["votes"]
    bar_plot(out / "votes.png", ["model", "baseline", "unparseable"], [v["model"], v["baseline"], v["unparseable"]],
             title=f"LiveSports-3K CC win rate {results['win_rate']}%", ylabel="verdicts")  # fmt: skip


def _data_file(data: Path) -> Path:
    if data.is_file():
        return data
    found = sorted(p for p in data.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
    if len(found) != 1:
        raise runner.DataError(
            f"'{data}' holds {len(found)} .jsonl/.json/.parquet files; pass the LiveSports_3K_CC test file itself"
        )
    return found[0]


def _rows(path: Path) -> list[tuple[int, dict]]:
    if path.suffix == ".jsonl":
        return runner.read_jsonl(path, "LiveSports-3K CC")
    if path.suffix == ".json":
        rows = runner.read_json(path, "LiveSports-3K CC")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise runner.DataError(f"{path} must hold a JSON list of objects, one per event")
        return list(enumerate(rows, 1))
    if path.suffix == ".parquet":
        try:
            import pandas as pd
        except ImportError:
            raise ConfigError(
                "reading .parquet needs pandas and pyarrow (pip install pandas pyarrow)"
            ) from None
        return list(enumerate(pd.read_parquet(path).to_dict(orient="records"), 1))
    raise runner.DataError(f"{path}: use a .jsonl, .json or .parquet export of LiveSports_3K_CC")
