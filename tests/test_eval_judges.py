"""Judges: the reward-model/gold judge and its order randomisation; the LLM judge through alpaca_eval's annotators,
with pobench's local decoder (tiny model) and with a test double standing in for the OpenAI API."""
from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pobench.errors import PobenchError
from pobench.eval.judges import build_judge, judge_against_reference, policy_goes_first, prompt_text
from pobench.rewards import register_gold


@register_gold("test-eval-length")
def length_reward(prompt_messages, completion):
    """Longer is better, one point per ten characters: a known reward for the judge tests."""
    return len(completion) / 10


PROMPTS = [[{"role": "user", "content": f"question {i}?"}] for i in range(20)]
POLICY = [f"answer number {i} " * (i % 4 + 1) for i in range(20)]
REFERENCE = [f"ref {i}" for i in range(20)]


def test_gold_judge_is_the_bradley_terry_probability_whatever_the_order():
    judge = build_judge("gold:test-eval-length")
    assert judge.kind == "gold" and judge.name == "gold:test-eval-length"
    rows = judge_against_reference(judge, PROMPTS, POLICY, REFERENCE, seed=0)
    firsts = [r["policy_first"] for r in rows]
    assert any(firsts) and not all(firsts)   # the order is randomised across prompts...
    assert firsts == [r["policy_first"] for r in judge_against_reference(judge, PROMPTS, POLICY, REFERENCE, seed=0)]
    for row, p, r in zip(rows, POLICY, REFERENCE):   # ...and mapped back: P(policy wins) = sigmoid(r_p - r_ref)
        want = 1 / (1 + math.exp(-(len(p) - len(r)) / 10))
        assert row["preference"] == pytest.approx(want)
        assert row["scores"] == pytest.approx({"policy": len(p) / 10, "reference": len(r) / 10})
    assert judge.describe()["held_out_accuracy"] is None


def test_judge_specs_are_checked():
    for spec in ("nope", "rm:", "gpt4", "unknown:x"):
        with pytest.raises(PobenchError, match="eval.judge"):
            build_judge(spec)
    with pytest.raises(PobenchError, match="unknown gold reward"):
        build_judge("gold:no-such-reward")


def test_order_coin_is_seeded_on_the_prompt():
    assert policy_goes_first("abc", 0) == policy_goes_first("abc", 0)
    flips = [policy_goes_first(f"prompt {i}", 0) for i in range(400)]
    assert 0.4 < sum(flips) / 400 < 0.6
    assert prompt_text([{"role": "user", "content": "hi"}]) == "hi"
    assert prompt_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                        {"role": "user", "content": "c"}]) == "User: a\n\nAssistant: b\n\nUser: c"


def test_local_llm_judge_runs_through_alpaca_eval(tmp_path, tiny_model_dir):
    """The offline LLM-judge path: alpaca_eval's PairwiseAnnotator, its weighted GPT-4-turbo prompt and its
    logprob parser, with pobench's local decoder (a tiny random model here: the verdicts mean nothing, the
    plumbing is what is checked, down to P(first) = softmax over the tokens 'm' and 'M')."""
    pytest.importorskip("alpaca_eval")
    judge = build_judge("alpaca_eval:local", cache_dir=tmp_path, judge_model=str(tiny_model_dir), device="cpu")
    assert judge.kind == "llm" and judge.name == f"alpaca_eval:local({tiny_model_dir})"
    policy, reference = POLICY[:6], REFERENCE[:5] + [POLICY[5]]   # the last pair is identical: a tie
    rows = judge_against_reference(judge, PROMPTS[:6], policy, reference, seed=0)
    for row in rows[:5]:
        raw = json.loads(row["judge_extra"]["raw_completion"])
        top = {t["token"]: t["logprob"] for t in raw["logprobs"]["content"][0]["top_logprobs"]}
        p_first = math.exp(top["m"]) / (math.exp(top["m"]) + math.exp(top["M"]))
        assert row["preference"] == pytest.approx(p_first if row["policy_first"] else 1 - p_first, abs=1e-6)
        assert row["judge_extra"]["alpaca_eval_preference"] == pytest.approx(2 - p_first, abs=1e-6)
    assert rows[5]["preference"] == 0.5
    assert judge.describe()["model"] == str(tiny_model_dir)
    assert judge.caching_path.is_file()   # annotations cached under the pobench cache, not in site-packages


class FakeOpenAIHandler(BaseHTTPRequestHandler):
    """Test double of the OpenAI chat-completions API (the real one is unreachable offline): answers every
    request with the token 'm' and top log-probs m = log 0.8, M = log 0.2, and records what it was sent."""
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        top = [{"token": "m", "bytes": [109], "logprob": math.log(0.8)},
               {"token": "M", "bytes": [77], "logprob": math.log(0.2)}]
        reply = {"id": "chatcmpl-test-double", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "length",
                              "message": {"role": "assistant", "content": "m"},
                              "logprobs": {"content": [{"token": "m", "bytes": [109], "logprob": math.log(0.8),
                                                        "top_logprobs": top}]}}],
                 "usage": {"prompt_tokens": 300, "completion_tokens": 1, "total_tokens": 301}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_openai(tmp_path, monkeypatch):
    FakeOpenAIHandler.requests = []
    server = HTTPServer(("127.0.0.1", 0), FakeOpenAIHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "openai_configs.yaml"
    config.write_text(f"default:\n  - api_key: test-double-key\n    base_url: http://127.0.0.1:{server.server_port}/v1\n")
    monkeypatch.setenv("OPENAI_CLIENT_CONFIG_PATH", str(config))
    yield FakeOpenAIHandler
    server.shutdown()


def test_gpt4_turbo_judge_config_runs_to_the_api_call(tmp_path, fake_openai):
    """alpaca_eval's own `weighted_alpaca_eval_gpt4_turbo` config, its OpenAI decoder and client, up to the HTTP
    request, which a local test double answers: P(first) = 0.8 must come back as the policy's 0.8 or 0.2."""
    pytest.importorskip("alpaca_eval")
    judge = build_judge("alpaca_eval:weighted_alpaca_eval_gpt4_turbo", cache_dir=tmp_path)
    rows = judge_against_reference(judge, PROMPTS[:4], POLICY[:4], REFERENCE[:4], seed=0)
    assert [r["preference"] for r in rows] == pytest.approx([0.8 if r["policy_first"] else 0.2 for r in rows])
    assert len(fake_openai.requests) == 4
    sent = fake_openai.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer test-double-key"
    assert sent["body"]["model"] == "gpt-4-1106-preview" and sent["body"]["max_tokens"] == 1
    assert sent["body"]["logprobs"] is True and sent["body"]["top_logprobs"] == 5
    text = json.dumps([r["body"]["messages"] for r in fake_openai.requests])
    for prompt, p, r in zip(PROMPTS[:4], POLICY[:4], REFERENCE[:4]):
        assert prompt[0]["content"] in text and p.strip() in text and r in text
    assert judge.describe()["kind"] == "llm"


def test_unknown_alpaca_eval_config_is_a_user_error(tmp_path):
    pytest.importorskip("alpaca_eval")
    with pytest.raises(PobenchError, match="alpaca_eval:no_such_config"):
        build_judge("alpaca_eval:no_such_config", cache_dir=tmp_path)


@pytest.mark.slow
def test_local_judge_on_the_default_model_runs_offline(tmp_path):
    """The local judge with its default decoder, SmolLM2-135M-Instruct: it runs offline end to end, but it is a
    weak judge (measured: it mostly prefers whichever output is shown second), so only the plumbing is checked."""
    pytest.importorskip("alpaca_eval")
    judge = build_judge("alpaca_eval:local", cache_dir=tmp_path, device="cpu")
    prompts = [[{"role": "user", "content": q}] for q in ("What is the capital of France?", "What is 2+2?")]
    rows = judge_against_reference(judge, prompts, ["The capital of France is Paris.", "2+2 equals 4."],
                                   ["I like turtles.", "2+2 equals 5."])
    assert all(0 < r["preference"] < 1 for r in rows)
    assert judge.describe()["model"] == "smollm2-135m-instruct"
