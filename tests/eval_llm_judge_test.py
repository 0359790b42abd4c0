"""The LLM judge against a local OpenAI-compatible server started by the tests.

Nothing here touches the internet: `FakeServer` is an `http.server` in a
thread whose replies each test scripts (good verdicts, malformed JSON,
unparseable text, delays past the timeout, HTTP errors, log-probs).
"""

import json
import math
import pathlib
import socket
import tempfile
import threading
import time
from http import server as http_server

from absl.testing import absltest
import numpy as np

from ipo_md.eval import judges
from ipo_md.eval import llm_judge


def _completion(content, logprobs=None):
  choice = {"index": 0, "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"}
  if logprobs is not None:
    choice["logprobs"] = {"content": logprobs}
  return {"id": "x", "object": "chat.completion", "choices": [choice]}


def _summaries(prompt):
  """(summary1, summary2) out of a prompt rendered with DEFAULT_TEMPLATE."""
  if "Summary 1: " not in prompt:  # Another template: no preference.
    return "", ""
  s1 = prompt.split("Summary 1: ", 1)[1].split("\n\nSummary 2: ", 1)
  return s1[0], s1[1].split("\n\nPreferred summary", 1)[0]


def prefer_longer(request, n):
  """A content-based rater: the longer summary wins (ties: summary 1)."""
  del n
  s1, s2 = _summaries(request["messages"][-1]["content"])
  return 200, {}, _completion("1" if len(s1) >= len(s2) else "2"), 0.0


class FakeServer:
  """A threaded local HTTP server; `respond(request_json, n)` returns
  (status, headers, body: dict | bytes, delay_s) for the n-th request."""

  def __init__(self, respond):
    self.respond = respond
    self.requests = []
    self.in_flight = self.max_in_flight = 0
    self._lock = threading.Lock()
    owner = self

    class Handler(http_server.BaseHTTPRequestHandler):

      def log_message(self, *args):
        del args

      def do_POST(self):  # pylint: disable=invalid-name
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        with owner._lock:
          n = len(owner.requests)
          owner.requests.append((self.path, dict(self.headers), body))
          owner.in_flight += 1
          owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
          status, headers, reply, delay = owner.respond(body, n)
          if delay:
            time.sleep(delay)
          data = reply if isinstance(reply, bytes) else json.dumps(
              reply).encode()
          self.send_response(status)
          for k, v in headers.items():
            self.send_header(k, v)
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass  # The client gave up (a timeout test).
        finally:
          with owner._lock:
            owner.in_flight -= 1

    self.httpd = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
    self._thread = threading.Thread(
        target=lambda: self.httpd.serve_forever(poll_interval=0.02),
        daemon=True)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


def _pairs(texts, a, b):
  m = len(texts)
  ids = np.zeros((m, 4), np.int32)
  return judges.Pairs(ids, ids, ids, texts, a, b)


PAIRS = _pairs(["doc one", "doc two", "doc three"],
               ["short", "a much longer one", "mid size"],
               ["a longer summary", "tiny", "mid size"])


class LLMJudgeTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(tempfile.mkdtemp())
    self.sleeps = []

  def _judge(self, server, **kwargs):
    kwargs.setdefault("cache_path", str(self.dir / "cache.jsonl"))
    kwargs.setdefault("backoff_s", 0.5)
    config = llm_judge.LLMJudgeConfig(base_url=server.base_url,
                                      model="judge-model", **kwargs)
    return llm_judge.LLMJudge(config, sleep=self.sleeps.append)

  def test_request_and_verdicts(self):
    with FakeServer(prefer_longer) as server:
      judge = self._judge(server, api_key="sk-test", concurrency=1)
      p = judge(PAIRS)
    np.testing.assert_array_equal(p, [0.0, 1.0, 1.0])
    self.assertLen(server.requests, 3)
    path, headers, body = server.requests[0]
    self.assertEqual(path, "/v1/chat/completions")
    self.assertEqual(headers["Authorization"], "Bearer sk-test")
    self.assertEqual(headers["Content-Type"], "application/json")
    self.assertEqual(body["model"], "judge-model")
    self.assertEqual(body["temperature"], 0.0)
    self.assertEqual(body["max_tokens"], 8)
    self.assertNotIn("logprobs", body)
    self.assertEqual(body["messages"], [{"role": "user", "content": (
        "You are an expert summary rater. Given a piece of text and two of "
        "its possible summaries, output 1 or 2 to indicate which summary is "
        "better.\n\nText: doc one\n\nSummary 1: short\n\nSummary 2: a longer"
        " summary\n\nPreferred summary (1 or 2):")}])
    self.assertNotIn("sk-test", repr(judge.config))

  def test_custom_template_and_system_prompt(self):
    template = "T={text} A={summary1} B={summary2} {json: braces}"
    with FakeServer(lambda r, n: (200, {}, _completion("2"), 0)) as server:
      judge = self._judge(server, template=template, system_prompt="Be fair.")
      p = judge(_pairs(["x {summary1}"], ["a"], ["b"]))
    self.assertEqual(p.tolist(), [0.0])
    messages = server.requests[0][2]["messages"]
    self.assertEqual(messages[0], {"role": "system", "content": "Be fair."})
    self.assertEqual(messages[1]["content"],
                     "T=x {summary1} A=a B=b {json: braces}")

  def test_parse_choice(self):
    for reply, expected in [("1", 1), (" 2.", 2), ("Summary 2", 2),
                            ("**1**", 1), ("Preferred summary: 1", 1),
                            ("2\n", 2), ("12", None), ("1.5", None),
                            ("neither", None), ("1 or 2", None), ("", None),
                            (None, None), ("Summary 1 beats summary 2", None)]:
      self.assertEqual(llm_judge.parse_choice(reply), expected, reply)

  def test_logprobs_give_continuous_p(self):
    top = [{"token": "1", "logprob": math.log(0.6)},
           {"token": "2", "logprob": math.log(0.3)},
           {"token": " 1", "logprob": math.log(0.1)}]
    lp = [{"token": "1", "logprob": math.log(0.6), "top_logprobs": top}]
    with FakeServer(lambda r, n: (200, {}, _completion("1", lp), 0)) as server:
      p = self._judge(server, logprobs=True, top_logprobs=3)(
          _pairs(["d"], ["a"], ["b"]))
    self.assertAlmostEqual(p[0], 0.7 / 1.0)
    body = server.requests[0][2]
    self.assertTrue(body["logprobs"])
    self.assertEqual(body["top_logprobs"], 3)

  def test_logprobs_without_both_tokens_keep_the_choice(self):
    lp = [{"token": "2", "logprob": -0.01,
           "top_logprobs": [{"token": "2", "logprob": -0.01}]}]
    with FakeServer(lambda r, n: (200, {}, _completion("2", lp), 0)) as server:
      judge = self._judge(server, logprobs=True)
      self.assertEqual(judge(_pairs(["d"], ["a"], ["b"])).tolist(), [0.0])
    record = next(iter(judge.cache._records.values()))
    self.assertEqual(record["source"], "choice")

  def test_malformed_replies_are_retried(self):
    replies = [b"<html>oops</html>", {"choices": []},
               _completion("I cannot decide."), _completion("2")]
    with FakeServer(lambda r, n: (200, {}, replies[n], 0)) as server:
      judge = self._judge(server)
      p = judge(_pairs(["d"], ["a"], ["b"]))
    self.assertEqual(p.tolist(), [0.0])
    self.assertEqual(judge.requests_made, 4)
    self.assertEqual(self.sleeps, [0.5, 1.0, 2.0])  # Exponential backoff.

  def test_reply_that_never_parses_is_a_clear_error(self):
    with FakeServer(lambda r, n: (200, {}, _completion("maybe?"), 0)) as s:
      judge = self._judge(s, max_attempts=3)
      with self.assertRaisesRegex(
          llm_judge.JudgeReplyError,
          r"'judge-model' .* no parseable verdict in 3 attempts; last reply: "
          r"'maybe\?'.*exactly one of 1 and 2.*--llm_template"):
        judge(_pairs(["d"], ["a"], ["b"]))
    self.assertLen(s.requests, 3)
    self.assertFalse((self.dir / "cache.jsonl").exists())

  def test_timeout_is_retried(self):
    # A generous timeout, so that a loaded machine never times out the
    # prompt reply; only the first, 2.5 s late, one times out.
    with FakeServer(lambda r, n: (200, {}, _completion("1"),
                                  2.5 if n == 0 else 0)) as server:
      judge = self._judge(server, timeout_s=1.0)
      self.assertEqual(judge(_pairs(["d"], ["a"], ["b"])).tolist(), [1.0])
    self.assertEqual(judge.requests_made, 2)

  def test_timeouts_exhaust_attempts(self):
    with FakeServer(lambda r, n: (200, {}, _completion("1"), 0.5)) as server:
      judge = self._judge(server, timeout_s=0.15, max_attempts=2)
      with self.assertRaisesRegex(
          llm_judge.JudgeUnreachableError,
          r"failed 2 attempts; last error: no reply within timeout 0.15s.*"
          r"--llm_timeout"):
        judge(_pairs(["d"], ["a"], ["b"]))

  def test_server_errors_and_rate_limits_are_retried(self):
    script = [(500, {}, b"boom"), (429, {"Retry-After": "0"}, b"slow down"),
              (200, {}, _completion("1"))]
    with FakeServer(lambda r, n: (*script[n], 0)) as server:
      judge = self._judge(server)
      self.assertEqual(judge(_pairs(["d"], ["a"], ["b"])).tolist(), [1.0])
    # 500: backoff 0.5 s; 429: its Retry-After of 0 s.
    self.assertEqual(self.sleeps, [0.5, 0.0])

  def test_bad_key_is_not_retried(self):
    with FakeServer(lambda r, n: (401, {}, b'{"error": "bad key"}', 0)) as s:
      judge = self._judge(s)
      with self.assertRaisesRegex(llm_judge.JudgeRequestError,
                                  r"rejected the API key \(HTTP 401.*"
                                  r"IPO_MD_JUDGE_API_KEY"):
        judge(_pairs(["d"], ["a"], ["b"]))
    self.assertLen(s.requests, 1)

  def test_unknown_model_names_the_model(self):
    with FakeServer(lambda r, n: (404, {}, b"no such model", 0)) as s:
      with self.assertRaisesRegex(llm_judge.JudgeRequestError,
                                  r"404.*'judge-model'.*--llm_model"):
        self._judge(s)(_pairs(["d"], ["a"], ["b"]))

  def test_unreachable_server(self):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # Nothing listens on `port` now.
    config = llm_judge.LLMJudgeConfig(
        base_url=f"http://127.0.0.1:{port}/v1", model="m", max_attempts=2,
        backoff_s=0)
    judge = llm_judge.LLMJudge(config, sleep=self.sleeps.append)
    with self.assertRaisesRegex(
        llm_judge.JudgeUnreachableError,
        rf"127.0.0.1:{port}/v1/chat/completions .*failed 2 attempts; last "
        r"error: cannot connect.*server is running.*--llm_base_url"):
      judge(_pairs(["d"], ["a"], ["b"]))

  def test_cache_makes_reruns_free(self):
    with FakeServer(prefer_longer) as server:
      first = judges.judge_both_orders(self._judge(server), PAIRS)
      self.assertLen(server.requests, 5)  # The tie pair repeats one prompt.
      again = self._judge(server)
      second = judges.judge_both_orders(again, PAIRS)
      self.assertLen(server.requests, 5)
      self.assertEqual(again.requests_made, 0)
      np.testing.assert_array_equal(first.forward, second.forward)
      # A new template is a new judge: its verdicts are asked again.
      other = self._judge(server, template="{text}|{summary1}|{summary2}?")
      judges.judge_both_orders(other, PAIRS)
      self.assertEqual(other.requests_made, 5)

  def test_failed_call_never_corrupts_the_cache(self):
    def respond(request, n):
      del n
      if "doc two" in request["messages"][-1]["content"]:
        return 200, {}, _completion("no idea"), 0
      return prefer_longer(request, 0)

    cache = self.dir / "cache.jsonl"
    with FakeServer(respond) as server:
      with self.assertRaises(llm_judge.JudgeReplyError):
        self._judge(server, max_attempts=2, concurrency=1)(PAIRS)
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    self.assertLen(rows, 2)  # doc one and doc three; nothing for doc two.
    self.assertTrue(all(r["p"] in (0.0, 1.0) for r in rows))
    # A crash mid-write leaves a torn line; it is skipped, and the next
    # record starts on its own line.
    with open(cache, "a") as f:
      f.write('{"key": "torn", "p"')
    with FakeServer(prefer_longer) as server:
      judge = self._judge(server)
      self.assertEqual(judge.cache.skipped_lines, 1)
      np.testing.assert_array_equal(judge(PAIRS), [0.0, 1.0, 1.0])
      self.assertLen(server.requests, 1)  # Only doc two is asked again.
    lines = cache.read_text().splitlines()
    self.assertLen(lines, 4)
    json.loads(lines[-1])

  def test_requests_run_concurrently(self):
    slow = lambda r, n: (*prefer_longer(r, n)[:3], 0.15)
    many = _pairs([f"doc {i}" for i in range(8)], ["a"] * 8, ["bb"] * 8)
    with FakeServer(slow) as server:
      self._judge(server, concurrency=4, cache_path=None)(many)
    self.assertGreaterEqual(server.max_in_flight, 2)
    with FakeServer(slow) as server:
      self._judge(server, concurrency=1, cache_path=None)(
          _pairs(["a", "b", "c"], ["x"] * 3, ["y"] * 3))
    self.assertEqual(server.max_in_flight, 1)

  def test_rate_limiter_spaces_requests(self):
    now, sleeps = [0.0], []
    limiter = llm_judge.RateLimiter(10.0, clock=lambda: now[0],
                                    sleep=sleeps.append)
    for _ in range(3):
      limiter.acquire()
    np.testing.assert_allclose(sleeps, [0.1, 0.2])
    now[0] = 5.0  # After a pause, no wait.
    limiter.acquire()
    self.assertLen(sleeps, 2)

  def test_swapping_removes_a_pure_position_bias(self):
    always_first = lambda r, n: (200, {}, _completion("1"), 0)
    with FakeServer(always_first) as server:
      both = judges.judge_both_orders(self._judge(server), PAIRS)
    np.testing.assert_array_equal(both.forward, 1.0)
    np.testing.assert_array_equal(both.symmetric, 0.5)
    self.assertEqual(both.position_bias, 0.5)

  def test_config_errors(self):
    with self.assertRaisesRegex(ValueError, r"lacks \['\{summary2\}'\]"):
      llm_judge.LLMJudgeConfig(base_url="http://x/v1", model="m",
                               template="{text} {summary1}")
    with self.assertRaisesRegex(ValueError, r"must start with http.*"
                                r"--llm_base_url"):
      llm_judge.LLMJudgeConfig(base_url="localhost:8000", model="m")
    with self.assertRaisesRegex(ValueError, "--llm_model"):
      llm_judge.LLMJudgeConfig(base_url="http://x/v1", model="")


if __name__ == "__main__":
  absltest.main()
