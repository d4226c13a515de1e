"""The judge client against a real loopback HTTP server, the pairwise protocol and the scoring arithmetic."""

from __future__ import annotations

import json

import pytest

from evals.fixtures import ScriptedChatServer
from evals.inf_stream import Window, window_text
from evals.inf_stream import summarize as inf_summarize
from evals.judge import (
    ChatClient,
    ChatSettings,
    JudgeError,
    Pair,
    judge_pairs,
    parse_verdict,
    request_key,
    tally,
)
from evals.livesports import summarize as ls_summarize
from evals.results import ResultFile, Shard, parse_shard

MESSAGES = [{"role": "user", "content": "A or B?"}]


def settings(url: str, **kw) -> ChatSettings:
    return ChatSettings(url=url, model="judge-x", **{"retries": 0, "backoff": 0.01, "timeout": 5.0, **kw})


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("A", "A"),
        ("B", "B"),
        (" b.", "B"),
        ("**A**", "A"),
        ("Answer: B", "B"),
        ('"A"', "A"),
        ("(B)", "B"),
        ("C", None),  # a letter the judge was not offered
        ("A or B", None),
        ("A is better", None),
        ("I prefer candidate A", None),
        ("", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_client_sends_deterministic_settings_and_caches_by_request(tmp_path):
    with ScriptedChatServer(lambda body: "A") as server:
        client = ChatClient(settings(server.url), cache_path=tmp_path / "cache.jsonl")
        assert client.complete(MESSAGES) == "A"
        assert client.complete(MESSAGES) == "A"  # the same request: answered from the cache
        assert len(server.requests) == 1
        body = server.requests[0]
        assert (body["temperature"], body["seed"], body["model"]) == (0.0, 42, "judge-x")
        # A new client reads the cache file: a rerun never pays twice.
        again = ChatClient(settings(server.url), cache_path=tmp_path / "cache.jsonl")
        assert again.complete(MESSAGES) == "A"
        assert len(server.requests) == 1
        line = json.loads((tmp_path / "cache.jsonl").read_text().splitlines()[0])
        assert line["key"] == request_key(client.request(MESSAGES))


def test_refused_key_fails_at_once_with_what_to_do(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "wrong")
    with ScriptedChatServer(lambda body: (401, "Incorrect API key provided")) as server:
        client = ChatClient(settings(server.url, key_env="MY_JUDGE_KEY", retries=3))
        with pytest.raises(JudgeError, match=r"HTTP 401.*set MY_JUDGE_KEY"):
            client.complete(MESSAGES)
        assert len(server.requests) == 1  # not retried: it cannot pass


def test_server_errors_are_retried_then_reported():
    replies = iter([(500, "overloaded"), (503, "still overloaded"), "B"])
    with ScriptedChatServer(lambda body: next(replies)) as server:
        assert ChatClient(settings(server.url, retries=2)).complete(MESSAGES) == "B"
        assert len(server.requests) == 3
    with ScriptedChatServer(lambda body: (500, "boom")) as server:
        with pytest.raises(JudgeError, match=r"failed 2 times \(HTTP 500.*rerun: finished items are kept"):
            ChatClient(settings(server.url, retries=1)).complete(MESSAGES)


def test_timeout_is_reported():
    with ScriptedChatServer(lambda body: (0, "")) as server:  # never answers
        with pytest.raises(JudgeError, match="failed 1 times .*Timeout"):
            ChatClient(settings(server.url, timeout=0.3)).complete(MESSAGES)


def _pairs(n: int) -> list[Pair]:
    return [Pair(f"w{i}", f"model text {i}", f"baseline text {i}", "reference", {}) for i in range(n)]


def _build(pair: Pair, a: str, b: str) -> list[dict]:
    return [{"role": "user", "content": f"{pair.key}\nA: {a}\nB: {b}"}]


def test_both_orders_and_unparseable_verdicts(tmp_path):
    # w0: model wins both orders; w1: "A" both times, a split (tie) of one vote each;
    # w2: one unparseable verdict, the other for the baseline.
    def script(body):
        text = body["messages"][0]["content"]
        model_is_a = "A: model" in text
        if text.startswith("w0"):
            return "A" if model_is_a else "B"
        if text.startswith("w1"):
            return "A"
        return "no idea" if model_is_a else "A"

    store = ResultFile(tmp_path, "judgments", Shard())
    with ScriptedChatServer(script) as server:
        client = ChatClient(settings(server.url))
        assert judge_pairs(client, _pairs(3), store, _build) == 6
    verdicts = store.load()
    assert verdicts["w2|model_first"]["verdict"] is None and verdicts["w2|model_first"]["raw"] == "no idea"
    assert tally(list(verdicts.values())) == {"model": 3, "baseline": 2, "unparseable": 1, "total": 6}


def test_judge_failing_after_k_calls_keeps_them_and_a_rerun_does_the_rest(tmp_path):
    calls = {"n": 0}

    def failing(body):
        calls["n"] += 1
        return "A" if calls["n"] <= 3 else (500, "down")

    store = ResultFile(tmp_path, "judgments", Shard())
    with ScriptedChatServer(failing) as server:
        with pytest.raises(JudgeError):
            judge_pairs(ChatClient(settings(server.url)), _pairs(4), store, _build)
    assert len(store.load()) == 3
    with ScriptedChatServer(lambda body: "B") as server:
        assert judge_pairs(ChatClient(settings(server.url)), _pairs(4), store, _build) == 5
        assert len(server.requests) == 5
    assert len(store.load()) == 8


def test_window_membership_is_by_end_time():
    items = [
        {
            "response": "a",
            "start_time": 9.0,
            "end_time": 10.0,
        },  # ends at the window's start: the window before
        {"response": "b", "start_time": 10.0, "end_time": 11.0},
        {"response": "", "start_time": 11.0, "end_time": 12.0},  # silent second
        {"response": "c", "start_time": 19.0, "end_time": 20.0},  # ends at the window's end: inside
        {"response": "d", "start_time": 20.0, "end_time": 21.0},
    ]
    assert window_text(items, 10.0, 20.0) == "b c"
    assert window_text(items, 0.0, 10.0) == "a"
    long = [{"response": "x" * 5000, "start_time": 0, "end_time": t} for t in (1.0, 2.0)]
    assert len(window_text(long, 0.0, 2.0)) == 8000  # the protocol's cut


def _verdict(pair: str, order: str, winner: str | None) -> dict:
    return {"key": f"{pair}|{order}", "pair": pair, "order": order, "winner": winner, "verdict": None}


def test_inf_stream_win_rate_excludes_unparseable_from_the_votes():
    windows = [Window(f"v{i}#0", f"v{i}", 0, 10, "ref", "", where="") for i in range(3)]
    records = [
        _verdict("v0#0", "model_first", "model"),
        _verdict("v0#0", "baseline_first", "model"),
        _verdict("v1#0", "model_first", "model"),  # a split window: one vote each
        _verdict("v1#0", "baseline_first", "baseline"),
        _verdict("v2#0", "model_first", None),  # unparseable: nobody's vote
        _verdict("v2#0", "baseline_first", "baseline"),
    ]
    results = inf_summarize({r["key"]: r for r in records}, windows, 5, {}, "base")
    assert results["votes"] == {"model": 3, "baseline": 2, "unparseable": 1, "total": 6}
    assert results["win_rate"] == 60.0  # 3 / (3 + 2)
    assert results["per_video"]["v1"]["win_rate"] == 50.0
    assert results["counts"] == {
        "windows": 5,
        "windows_with_both_generations": 3,
        "windows_judged": 3,
        "complete": True,
    }


def test_livesports_win_rate_is_wins_over_twice_the_events():
    records = [
        _verdict("e0", "model_first", "model"),
        _verdict("e0", "baseline_first", "model"),
        _verdict("e1", "model_first", None),
        _verdict("e1", "baseline_first", "baseline"),
    ]
    results = ls_summarize({r["key"]: r for r in records}, ["e0", "e1"], 2, {}, "base")
    assert results["win_rate"] == 50.0  # 2 wins / (2 x 2 events): the unparseable verdict is no win
    assert results["votes"]["unparseable"] == 1


def test_shards_split_items_round_robin(monkeypatch):
    keys = [f"k{i}" for i in range(5)]
    assert Shard(1, 2).select(keys) == ["k1", "k3"]
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard(None) == Shard(2, 3)
    assert parse_shard("0/4") == Shard(0, 4)


def test_a_line_torn_by_a_kill_is_dropped_and_the_file_stays_appendable(tmp_path):
    store = ResultFile(tmp_path, "answers", Shard())
    store.append({"key": "a", "x": 1})
    with open(store.path, "a") as f:
        f.write('{"key": "b", "x"')  # the writer died mid-line
    store.append({"key": "c", "x": 3})
    assert sorted(store.load()) == ["a", "c"]
