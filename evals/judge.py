"""LLM judges (and API models) through any OpenAI-compatible chat-completions endpoint.

`ChatClient` sends one chat request at a time through the `openai` client with deterministic
settings (temperature 0, a fixed seed), retries what may pass on a second try (timeouts, lost
connections, HTTP 429 and 5xx) with exponential backoff, fails at once with a clear message on
what will not (401/403: the key; 404: the URL or model name; 400: the request), and caches every
answer under the sha256 of the canonical JSON of the full request, so a rerun never pays twice.

`judge_pairs` runs the pairwise protocol both comparative benchmarks share: each comparison is
judged twice, once with the model as A and once as B, one JSON line per verdict. A verdict that
is not one of the allowed letters is recorded as unparseable and counts for neither side.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from core.errors import StreamVLMError
from evals.results import ResultFile, append_record, read_records

log = logging.getLogger(__name__)

MODEL, BASELINE = "model", "baseline"
ORDERS = ("model_first", "baseline_first")  # model as A, then model as B


class JudgeError(StreamVLMError):
    """The judge (or API model) endpoint could not answer."""


@dataclass(frozen=True)
class ChatSettings:
    """Where an OpenAI-compatible endpoint is and how to ask it."""

    url: str
    model: str
    key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0  # seconds per request
    retries: int = 4  # further tries after the first, for errors that may pass
    backoff: float = 2.0  # seconds before the first retry; doubles each time
    temperature: float = 0.0
    seed: int | None = 42
    max_tokens: int = 16

    def describe(self) -> dict:
        return {"url": self.url, "model": self.model, "temperature": self.temperature, "seed": self.seed}


class ChatClient:
    """Cached, retried chat completions. Thread-safe."""

    def __init__(self, settings: ChatSettings, cache_path: Path | None = None) -> None:
        import openai

        self.settings = settings
        key = os.environ.get(settings.key_env)
        if not key:
            if not _is_loopback(settings.url):
                log.warning("%s is not set; sending a dummy key to %s", settings.key_env, settings.url)
            key = "EMPTY"  # local servers ignore the key, and the client needs one
        self._client = openai.OpenAI(
            base_url=settings.url, api_key=key, timeout=settings.timeout, max_retries=0
        )
        self._openai = openai
        self._lock = threading.Lock()
        self.cache_path = cache_path
        self._cache: dict[str, dict] = read_records(cache_path) if cache_path and cache_path.exists() else {}
        self.requests_sent = 0

    def request(self, messages: list[dict], max_tokens: int | None = None) -> dict:
        s = self.settings
        body = {"model": s.model, "messages": messages, "temperature": s.temperature}
        if s.seed is not None:
            body["seed"] = s.seed
        body["max_tokens"] = max_tokens or s.max_tokens
        return body

    def complete(self, messages: list[dict], max_tokens: int | None = None) -> str:
        """The reply text for `messages` (from the cache when this exact request was answered before)."""
        body = self.request(messages, max_tokens)
        key = request_key(body)
        with self._lock:
            if key in self._cache:
                return self._cache[key]["response"]
        text = self._send(body)
        with self._lock:
            self._cache[key] = {"key": key, "response": text}
            if self.cache_path is not None:
                append_record(self.cache_path, {"key": key, "model": body["model"], "response": text})
        return text

    def _send(self, body: dict) -> str:
        s, openai = self.settings, self._openai
        for attempt in range(s.retries + 1):
            with self._lock:
                self.requests_sent += 1
            try:
                reply = self._client.chat.completions.create(**body)
                choices = getattr(reply, "choices", None) or []
                return (choices[0].message.content or "") if choices else ""
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise JudgeError(
                    f"{s.url} refused the request (HTTP {exc.status_code}: {_short(exc)}); "
                    f"set {s.key_env} to a key this endpoint accepts"
                ) from None
            except openai.NotFoundError as exc:
                raise JudgeError(
                    f"{s.url} answered HTTP 404 for model '{s.model}' ({_short(exc)}); check that the URL "
                    "ends in /v1 and that the endpoint serves this model"
                ) from None
            except openai.BadRequestError as exc:
                raise JudgeError(
                    f"{s.url} rejected the request as malformed (HTTP 400: {_short(exc)})"
                ) from None
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                what = f"HTTP {status}" if status else type(exc).__name__.removeprefix("API")
                if attempt == s.retries:
                    raise JudgeError(
                        f"{s.url} failed {s.retries + 1} times ({what}: {_short(exc)}); check that the "
                        "endpoint is up, then rerun: finished items are kept and skipped"
                    ) from None
                delay = s.backoff * 2**attempt
                log.warning("%s: %s; retrying in %.1f s", s.url, what, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")


def request_key(body: dict) -> str:
    """sha256 of the canonical JSON of a request."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_VERDICT = re.compile(
    r"^[\s\W]*(?:(?:answer|verdict|winner|choice)(?:\s+is)?\s*[:：]?\s*)?[\s*\"'(\[]*([A-Z])[\s*\"')\].!]*$",
    re.IGNORECASE,
)


def parse_verdict(text: str, letters: Sequence[str] = ("A", "B")) -> str | None:
    """The one letter a judge answered, or None when the reply is not exactly one allowed letter."""
    match = _VERDICT.match(text or "")
    if not match:
        return None
    letter = match.group(1).upper()
    return letter if letter in letters else None


# -- the pairwise protocol --------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One comparison: the model's and the baseline's text for the same span, and what to judge by."""

    key: str
    model_text: str
    baseline_text: str
    reference: str
    context: dict  # benchmark-specific fields the prompt builder uses (title, times)


PromptBuilder = Callable[[Pair, str, str], list[dict]]  # (pair, text A, text B) -> messages


def judge_pairs(
    client: ChatClient, pairs: Sequence[Pair], store: ResultFile, build: PromptBuilder, workers: int = 1
) -> int:
    """Judge each pair in both orders, skipping verdicts already in `store`; returns how many were judged.

    Each verdict is appended as soon as it arrives. On a judge error the verdicts finished so far
    are kept and the error is raised after the running requests end.
    """
    done = store.load()
    jobs = [(pair, order) for pair in pairs for order in ORDERS if f"{pair.key}|{order}" not in done]
    if not jobs:
        return 0
    lock = threading.Lock()

    def one(pair: Pair, order: str) -> None:
        first, second = (
            (pair.model_text, pair.baseline_text)
            if order == ORDERS[0]
            else (pair.baseline_text, pair.model_text)
        )
        raw = client.complete(build(pair, first, second))
        letter = parse_verdict(raw)
        winner = None if letter is None else _winner(letter, order)
        with lock:
            store.append(
                {"key": f"{pair.key}|{order}", "pair": pair.key, "order": order, "raw": raw, "verdict": letter,
                 "winner": winner}
            )  # fmt: skip

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, pair, order) for pair, order in jobs]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in finished if f.exception() is not None]
        if errors:
            for f in futures:
                f.cancel()
            raise errors[0]
    return len(jobs)


def _winner(letter: str, order: str) -> str:
    model_letter = "A" if order == ORDERS[0] else "B"
    return MODEL if letter == model_letter else BASELINE


def tally(verdicts: Sequence[dict]) -> dict:
    """Votes of a set of verdict records: model, baseline, unparseable, total."""
    model = sum(v["winner"] == MODEL for v in verdicts)
    baseline = sum(v["winner"] == BASELINE for v in verdicts)
    return {
        "model": model,
        "baseline": baseline,
        "unparseable": len(verdicts) - model - baseline,
        "total": len(verdicts),
    }


def _short(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
