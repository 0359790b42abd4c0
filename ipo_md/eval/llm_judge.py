# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""An LLM judge over an OpenAI-compatible chat-completions HTTP API.

The paper judges its side-by-side comparisons with an LLM prompted as a
summary rater (arXiv 2403.08635 §6; docs/methods.md). Any server that
speaks `POST {base_url}/chat/completions` (OpenAI, vLLM, llama.cpp, TGI,
Ollama's /v1, ...) can play that role here. Only the Python standard library
is used (urllib), so the judge adds no dependency.

How a verdict is obtained. The template is filled with the text and the two
summaries ({text}, {summary1}, {summary2}; the default is the paper's rater
preamble) and sent as one user message, temperature 0. The reply must name
exactly one of "1" and "2" (`parse_choice`): p(a > b) is then 1.0 or 0.0.
With `logprobs=True` the request also asks for the top log-probs of the
reply's tokens; when the first "1"/"2" token of the reply lists both "1" and
"2" among its alternatives, p = P("1") / (P("1") + P("2")), a continuous
verdict (otherwise the hard choice is kept; `Verdict.source` says which).

What can go wrong, and what happens:

* Transport failures (connection refused, timeouts, HTTP 429 and 5xx) are
  retried with exponential backoff (HTTP 429 honours Retry-After); when all
  `max_attempts` fail, `JudgeUnreachableError` names the URL and the fix.
* HTTP 401/403/404/400 are not retried: `JudgeRequestError` says whether the
  key, the URL/model or an option is wrong.
* A reply that is not the expected JSON, or names neither or both choices,
  is retried too; when no attempt parses, `JudgeReplyError` shows the last
  reply and how to fix the template or the model.

Verdicts are cached in an append-only JSON-lines file (`store.AppendLog`)
keyed by the judge's key (model, template, sampling options) and the exact
texts, so a rerun sends no request; a failed call writes nothing. Requests run
on a thread pool (`concurrency`), optionally rate-limited
(`requests_per_second`, shared by all threads).
"""

import concurrent.futures
import dataclasses
import http.client
import json
import math
import re
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import numpy as np

from ipo_md.eval import judges as judges_lib
from ipo_md.eval import store

PREAMBLE = ("You are an expert summary rater. Given a piece of text and two "
            "of its possible summaries, output 1 or 2 to indicate which "
            "summary is better.")
# The paper gives the preamble; the layout of what follows is ours.
DEFAULT_TEMPLATE = (PREAMBLE + "\n\nText: {text}\n\nSummary 1: {summary1}\n\n"
                    "Summary 2: {summary2}\n\nPreferred summary (1 or 2):")
PLACEHOLDERS = ("{text}", "{summary1}", "{summary2}")
_CHOICE = re.compile(r"(?<![\w.])([12])(?![\w]|\.\d)")
_KEY_HINT = ("set --llm_api_key, or the environment variable "
             "IPO_MD_JUDGE_API_KEY (or OPENAI_API_KEY)")
_URL_HINT = ("--llm_base_url (or IPO_MD_JUDGE_BASE_URL / OPENAI_BASE_URL); "
             "OpenAI-compatible servers serve POST <base>/chat/completions, "
             "so the base usually ends in /v1")


class JudgeError(RuntimeError):
  """An LLM judge could not deliver a verdict; the message names the fix."""


class JudgeUnreachableError(JudgeError):
  """Every attempt failed in transport (refused, timed out, 429/5xx)."""


class JudgeRequestError(JudgeError):
  """The server refused the request (HTTP 4xx other than 429)."""


class JudgeReplyError(JudgeError):
  """No attempt produced a reply that names exactly one of 1 and 2."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LLMJudgeConfig:
  """Where the judge is, how it is asked, and how hard to try.

  Attributes:
    base_url: the API root, e.g. "https://api.openai.com/v1" or
      "http://localhost:8000/v1"; requests go to {base_url}/chat/completions.
    model: the model name the server knows.
    api_key: sent as "Authorization: Bearer ..." when set (never logged).
    template: the user message, with {text}, {summary1}, {summary2}.
    system_prompt: an optional system message before it.
    temperature / max_tokens: of the completion (0 and 8: a short answer).
    logprobs / top_logprobs: ask for token log-probs for a continuous p.
    timeout_s: per request (connect and read).
    max_attempts: tries per verdict, over transport errors and unparseable
      replies together.
    backoff_s / max_backoff_s: exponential backoff between tries.
    concurrency: requests in flight at once.
    requests_per_second: a shared rate limit (None: unlimited).
    cache_path: the JSON-lines verdict cache (None: in memory only).
    name: the judge's label in reports.
  """

  base_url: str
  model: str
  api_key: str | None = dataclasses.field(default=None, repr=False)
  template: str = DEFAULT_TEMPLATE
  system_prompt: str | None = None
  temperature: float = 0.0
  max_tokens: int = 8
  logprobs: bool = False
  top_logprobs: int = 5
  timeout_s: float = 60.0
  max_attempts: int = 5
  backoff_s: float = 1.0
  max_backoff_s: float = 30.0
  concurrency: int = 8
  requests_per_second: float | None = None
  cache_path: str | None = None
  name: str = "llm"

  def __post_init__(self):
    if not re.match(r"^https?://", self.base_url or ""):
      raise ValueError(
          f"LLM judge base_url={self.base_url!r} must start with http:// or "
          f"https://; set {_URL_HINT}.")
    if not self.model:
      raise ValueError("LLM judge model is empty; set --llm_model (or "
                       "IPO_MD_JUDGE_MODEL), e.g. --llm_model=gpt-4o-mini.")
    missing = [p for p in PLACEHOLDERS if p not in self.template]
    if missing:
      raise ValueError(
          f"LLM judge template lacks {missing}; a template must contain "
          f"{', '.join(PLACEHOLDERS)} (the text and the two summaries).")
    for name in ("max_tokens", "max_attempts", "concurrency",
                 "top_logprobs"):
      if getattr(self, name) < 1:
        raise ValueError(f"LLMJudgeConfig.{name}={getattr(self, name)} must "
                         "be >= 1.")
    if self.timeout_s <= 0 or self.backoff_s < 0:
      raise ValueError(f"LLMJudgeConfig timeout_s={self.timeout_s} must be "
                       f"> 0 and backoff_s={self.backoff_s} >= 0.")
    if self.requests_per_second is not None and self.requests_per_second <= 0:
      raise ValueError(f"requests_per_second={self.requests_per_second} must "
                       "be > 0 (or None for no limit).")

  @property
  def url(self) -> str:
    return self.base_url.rstrip("/") + "/chat/completions"


@dataclasses.dataclass(frozen=True)
class Verdict:
  """p(summary 1 > summary 2); choice 1 or 2; source "choice" or "logprobs";
  the raw reply text."""

  p: float
  choice: int
  source: str
  reply: str


def render(template: str, text: str, summary1: str, summary2: str) -> str:
  """Fills the three placeholders (plain replacement: braces elsewhere in the
  template or the texts are left alone)."""
  # One pass, so a placeholder inside a text is never substituted again.
  values = {"{text}": text, "{summary1}": summary1, "{summary2}": summary2}
  return re.sub(r"\{text\}|\{summary1\}|\{summary2\}",
                lambda m: values[m.group(0)], template)


def parse_choice(reply: str | None) -> int | None:
  """1 or 2 when the reply names exactly one of them, else None.

  "1", " 2.", "Summary 2", "**1**", "Preferred summary: 1" parse; "12",
  "1.5", "neither", and "1 or 2" (both named) do not.
  """
  if not isinstance(reply, str):
    return None
  found = set(_CHOICE.findall(reply))
  return int(found.pop()) if len(found) == 1 else None


def parse_logprobs(choice: dict) -> float | None:
  """P("1") / (P("1") + P("2")) at the reply's first "1"/"2" token, from an
  OpenAI-style `choices[0].logprobs.content`; None when either is absent."""
  content = ((choice.get("logprobs") or {}).get("content") or [])
  for entry in content:
    if not isinstance(entry, dict):
      return None
    if str(entry.get("token", "")).strip() not in ("1", "2"):
      continue
    mass = {"1": [], "2": []}
    alternatives = list(entry.get("top_logprobs") or [])
    seen = {(a.get("token"), a.get("logprob")) for a in alternatives
            if isinstance(a, dict)}
    if (entry.get("token"), entry.get("logprob")) not in seen:
      alternatives.append(entry)
    for alt in alternatives:
      token = str(alt.get("token", "")).strip()
      if token in mass and isinstance(alt.get("logprob"), (int, float)):
        mass[token].append(float(alt["logprob"]))
    if not mass["1"] or not mass["2"]:
      return None
    l1, l2 = (np.logaddexp.reduce(mass[k]) for k in ("1", "2"))
    return float(1.0 / (1.0 + math.exp(l2 - l1)))
  return None


class RateLimiter:
  """At most `rate` acquisitions per second over all threads (evenly
  spaced slots); None means no limit."""

  def __init__(self, rate: float | None, *,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep):
    self._interval = 0.0 if rate is None else 1.0 / rate
    self._clock, self._sleep = clock, sleep
    self._next = -math.inf
    self._lock = threading.Lock()

  def acquire(self) -> None:
    if not self._interval:
      return
    with self._lock:
      now = self._clock()
      slot = max(now, self._next)
      self._next = slot + self._interval
    if slot > now:
      self._sleep(slot - now)


class _Retry(Exception):
  """One failed attempt that may succeed on the next; kind is "transport"
  or "reply"."""

  def __init__(self, kind: str, detail: str, wait: float | None = None):
    super().__init__(detail)
    self.kind, self.detail, self.wait = kind, detail, wait


class LLMJudge:
  """A `Judge` that asks an OpenAI-compatible chat API (module docstring).

  Attributes:
    requests_made: HTTP requests sent so far (thread-safe count).
  """

  def __init__(self, config: LLMJudgeConfig, *,
               sleep: Callable[[float], None] = time.sleep):
    self.config = config
    self.name = config.name
    self.key = store.digest([
        "llm", config.model, config.template, config.system_prompt,
        config.temperature, config.max_tokens, config.logprobs,
        config.top_logprobs if config.logprobs else None])
    self.cache = store.AppendLog(config.cache_path)
    self.requests_made = 0
    self._count_lock = threading.Lock()
    self._limiter = RateLimiter(config.requests_per_second)
    self._sleep = sleep

  def verdict_key(self, text: str, summary1: str, summary2: str) -> str:
    return store.digest([self.key, text, summary1, summary2])

  def __call__(self, pairs: judges_lib.Pairs) -> np.ndarray:
    triples = list(zip(pairs.prompt_texts, pairs.a_texts, pairs.b_texts))
    keys = [self.verdict_key(*t) for t in triples]
    todo = {}
    for key, triple in zip(keys, triples):
      if self.cache.get(key) is None and key not in todo:
        todo[key] = triple
    if todo:
      self._judge_all(todo)
    return np.array([self.cache.get(k)["p"] for k in keys], np.float64)

  def _judge_all(self, todo: dict[str, tuple[str, str, str]]) -> None:
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=min(self.config.concurrency, len(todo)))
    futures = [pool.submit(self._judge_one, k, *t) for k, t in todo.items()]
    try:
      for future in concurrent.futures.as_completed(futures):
        future.result()
    except BaseException:
      pool.shutdown(wait=True, cancel_futures=True)
      raise
    pool.shutdown(wait=True)

  def _judge_one(self, key: str, text: str, summary1: str,
                 summary2: str) -> Verdict:
    verdict = self.ask(render(self.config.template, text, summary1,
                              summary2))
    self.cache.put({"key": key, "p": verdict.p, "choice": verdict.choice,
                    "source": verdict.source, "reply": verdict.reply,
                    "model": self.config.model})
    return verdict

  def ask(self, prompt: str) -> Verdict:
    """One verdict for a rendered prompt, with retries (no cache)."""
    cfg = self.config
    last = None
    for attempt in range(cfg.max_attempts):
      if attempt:
        wait = min(cfg.backoff_s * 2 ** (attempt - 1), cfg.max_backoff_s)
        self._sleep(last.wait if last.wait is not None else wait)
      try:
        return self._parse(self._post(self._payload(prompt)))
      except _Retry as e:
        last = e
    if last.kind == "transport":
      raise JudgeUnreachableError(
          f"LLM judge server {cfg.url} (model {cfg.model!r}) failed "
          f"{cfg.max_attempts} attempts; last error: {last.detail}. Check "
          f"that the server is running and reachable, {_URL_HINT}; for slow "
          "servers raise --llm_timeout or --llm_attempts.")
    raise JudgeReplyError(
        f"LLM judge {cfg.model!r} at {cfg.url} gave no parseable verdict in "
        f"{cfg.max_attempts} attempts; last reply: {last.detail}. A reply "
        "must name exactly one of 1 and 2. Fix: use a model that follows "
        "the instruction, end --llm_template with a request for '1 or 2', "
        "or raise --llm_max_tokens if replies are cut short.")

  def _payload(self, prompt: str) -> dict[str, Any]:
    cfg = self.config
    messages = [{"role": "user", "content": prompt}]
    if cfg.system_prompt:
      messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    payload = {"model": cfg.model, "messages": messages,
               "temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    if cfg.logprobs:
      payload.update(logprobs=True, top_logprobs=cfg.top_logprobs)
    return payload

  def _post(self, payload: dict) -> bytes:
    cfg = self.config
    headers = {"Content-Type": "application/json"}
    if cfg.api_key:
      headers["Authorization"] = f"Bearer {cfg.api_key}"
    request = urllib.request.Request(
        cfg.url, data=json.dumps(payload).encode("utf-8"), headers=headers,
        method="POST")
    self._limiter.acquire()
    with self._count_lock:
      self.requests_made += 1
    try:
      with urllib.request.urlopen(request, timeout=cfg.timeout_s) as reply:
        return reply.read()
    except urllib.error.HTTPError as e:
      self._raise_http(e)
    except urllib.error.URLError as e:
      raise _Retry("transport", f"cannot connect ({e.reason})") from e
    except TimeoutError as e:
      raise _Retry("transport",
                   f"no reply within timeout {cfg.timeout_s}s") from e
    except (ConnectionError, http.client.HTTPException, OSError) as e:
      raise _Retry("transport", f"{type(e).__name__}: {e}") from e

  def _raise_http(self, e: urllib.error.HTTPError):
    cfg = self.config
    body = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
    if e.code == 429 or e.code >= 500:
      retry_after = e.headers.get("Retry-After") if e.headers else None
      wait = None
      if retry_after and retry_after.strip().replace(".", "", 1).isdigit():
        wait = min(float(retry_after), cfg.max_backoff_s)
      raise _Retry("transport", f"HTTP {e.code} {body!r}", wait) from e
    if e.code in (401, 403):
      raise JudgeRequestError(
          f"LLM judge server {cfg.url} rejected the API key (HTTP {e.code}: "
          f"{body!r}); {_KEY_HINT}.") from e
    if e.code == 404:
      raise JudgeRequestError(
          f"LLM judge server answered HTTP 404 for {cfg.url} with model "
          f"{cfg.model!r} ({body!r}). Check the model name (--llm_model) and "
          f"{_URL_HINT}.") from e
    raise JudgeRequestError(
        f"LLM judge server {cfg.url} refused the request (HTTP {e.code}: "
        f"{body!r}). Check --llm_model and the options (a server without "
        "log-probs support refuses --llm_logprobs).") from e

  def _parse(self, body: bytes) -> Verdict:
    try:
      choice = json.loads(body)["choices"][0]
      reply = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
      raise _Retry("reply", f"not a chat completion: {body[:200]!r}") from e
    picked = parse_choice(reply)
    if picked is None:
      raise _Retry("reply", repr(reply if not isinstance(reply, str)
                                 else reply[:200]))
    p = parse_logprobs(choice) if self.config.logprobs else None
    if p is not None:
      return Verdict(p=p, choice=picked, source="logprobs", reply=reply)
    return Verdict(p=1.0 if picked == 1 else 0.0, choice=picked,
                   source="choice", reply=reply)
