"""Judges: the reward-model/gold judge and its order randomisation; the LLM judge through alpaca_eval's annotators,
with pobench's local decoder (tiny model) and with a test double standing in for the OpenAI API."""
from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path
from dataclasses import dataclass
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


def test_a_reward_model_scores_identical_outputs_as_an_exact_tie():
    """A reward model scores in length-sorted, padded batches: the same text in two batches got scores a few 1e-9
    apart (1 of 20 identical pairs here), and a policy answering as the reference does won or lost instead of tying
    (win counts, judge agreement, order agreement). Each distinct output is scored once now: exactly 0.5."""
    import random

    from pobench.eval.judges import ScorerJudge
    from pobench.rewards.classifier import SequenceClassifierScorer
    from pobench.rewards.train import load_backbone, minilm_path
    model, tokenizer = load_backbone(minilm_path(), 0)
    judge = ScorerJudge(SequenceClassifierScorer.from_model(model.eval(), tokenizer, batch_size=16, max_length=128),
                        "reward_model")
    rng = random.Random(0)
    words = "the a cat dog runs quickly over under bright dark house tree river".split()
    prompts = [[{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(3, 30)))}] for _ in range(40)]
    outputs = [" ".join(rng.choices(words, k=rng.randint(1, 60))) for _ in range(40)]
    references = [o if i % 2 == 0 else " ".join(rng.choices(words, k=rng.randint(1, 60)))
                  for i, o in enumerate(outputs)]
    rows = judge_against_reference(judge, prompts, outputs, references, seed=0)
    same = [r for r, a, b in zip(rows, outputs, references) if a == b]
    assert len(same) == 20
    assert all(r["preference"] == 0.5 and r["scores"]["policy"] == r["scores"]["reference"] for r in same)
    assert len({r["preference"] for r in rows}) > 2   # the others are judged as before


class SidePicker:
    """Test double for a pairwise LLM judge: prefers a longer answer by `skill`, and the second shown by `bias`."""

    def __init__(self, skill: float, bias: float):
        self.skill, self.bias, self.calls = skill, bias, 0

    def compare(self, prompts, first, second):
        from pobench.eval.judges import Comparison
        self.calls += 1
        return Comparison([min(1.0, max(0.0, 0.5 + self.skill * ((len(a) > len(b)) - (len(a) < len(b))) - self.bias))
                           for a, b in zip(first, second)], extra=[{"order": (a, b)} for a, b in zip(first, second)])


def test_both_orders_cancel_a_judges_position_bias():
    """eval.judge_both_orders: a judge that always picks the second answer says nothing about the policy (every
    preference 0.5, its two orders never agree); one blind to the order keeps its verdicts (they always agree).
    One order only, the biased judge's win rate is its coin's: 1 - policy_first_share, roughly."""
    from pobench.eval.runner import order_agreement
    biased = SidePicker(skill=0.0, bias=0.4)
    one = judge_against_reference(biased, PROMPTS, POLICY, REFERENCE, seed=0)
    assert {round(r["preference"], 6) for r in one} == {0.1, 0.9} and "preference_orders" not in one[0]
    both = judge_against_reference(biased, PROMPTS, POLICY, REFERENCE, seed=0, both_orders=True)
    assert biased.calls == 3 and all(r["preference"] == pytest.approx(0.5) for r in both)
    assert [r["policy_first"] for r in both] == [r["policy_first"] for r in one]     # the coin's order is kept
    for row, single in zip(both, one):
        assert row["preference_orders"][0] == single["preference"]
        assert row["preference_orders"][1] == pytest.approx(1 - single["preference"])
        assert row["judge_extra"]["other_order"]["order"] == row["judge_extra"]["coin_order"]["order"][::-1]
    assert order_agreement(both, list(range(20))) == {"order_agreement": 0.0}
    fair = judge_against_reference(SidePicker(skill=0.3, bias=0.0), PROMPTS, POLICY, REFERENCE, seed=0,
                                   both_orders=True)
    assert all(r["preference"] == pytest.approx(0.8) for r in fair)   # every policy answer is the longer one
    assert order_agreement(fair, list(range(20))) == {"order_agreement": 1.0}
    gold = build_judge("gold:test-eval-length")                        # scores: blind to the order, judged once
    rows = judge_against_reference(gold, PROMPTS, POLICY, REFERENCE, seed=0, both_orders=True)
    assert "preference_orders" not in rows[0] and order_agreement(rows, list(range(20))) == {}


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
    damaged = judge.caching_path.read_text()[:300]                     # a save cut short
    judge.caching_path.write_text(damaged)
    with pytest.raises(PobenchError, match=f"{re.escape(str(judge.caching_path))}: the judge's annotation cache "
                                           f"cannot be read"):
        judge_against_reference(judge, PROMPTS[:2], policy[:2], reference[:2], seed=0)
    assert judge.caching_path.read_text() == damaged                   # left as it was


class FailsOnce:
    """A judge decoder whose first answer cannot be parsed (as an API error or a cut-off completion gives); the real
    decoder's otherwise."""

    def __init__(self, decoder):
        self.decoder, self.prompts = decoder, []

    def __getattr__(self, name):   # the real decoder's tokenizer, window and identity
        return getattr(self.decoder, name)

    def __call__(self, prompts, **kwargs):
        from pobench.eval.llm_judge import completions_result
        result = self.decoder(prompts, **kwargs)
        if not self.prompts:
            result = completions_result([{"text": "", "total_tokens": 0}] + result["completions_all"][1:], 0.0)
        self.prompts += prompts
        return result


def test_a_failed_verdict_is_asked_again_not_cached(tmp_path, tiny_model_dir):
    """alpaca_eval cached a verdict it could not parse: every later judging of that prompt returned None from the cache
    and the prompt dropped out of the win rate, unnoticed."""
    pytest.importorskip("alpaca_eval")
    judge = build_judge("alpaca_eval:local", cache_dir=tmp_path, judge_model=str(tiny_model_dir), device="cpu")
    judge.decoder = FailsOnce(judge.decoder)
    first = judge_against_reference(judge, PROMPTS[:3], POLICY[:3], REFERENCE[:3], seed=0)
    assert sum(r["preference"] is None for r in first) == 1
    failed = judge.decoder.prompts[0]
    again = judge_against_reference(judge, PROMPTS[:3], POLICY[:3], REFERENCE[:3], seed=0)
    assert all(r["preference"] is not None for r in again)
    assert judge.decoder.prompts[3:] == [failed]   # asked again; the two verdicts given came from the cache


class Instant:
    """A judge decoder that answers at once, P(first) = 0.8 for every prompt: the real decoder's tokenizer, window and
    identity (fit_rows reads them), no model call."""

    def __init__(self, decoder):
        self.decoder, self.prompts = decoder, 0

    def __getattr__(self, name):
        return getattr(self.decoder, name)

    def __call__(self, prompts, **_kwargs):
        from pobench.eval.llm_judge import completions_result, openai_entry
        self.prompts += len(prompts)
        return completions_result([openai_entry({"m": math.log(0.8), "M": math.log(0.2)}, 10) for _ in prompts], 0.0)


# one process judging its own rows with the local judge on a shared cache (test_judges_sharing_a_cache_...)
CACHE_WRITER = """
import sys, time, warnings
warnings.simplefilter("ignore")
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_eval_judges import Instant
from pobench.eval.judges import build_judge
tag, cache, model = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
cache.mkdir(parents=True, exist_ok=True)
judge = build_judge("alpaca_eval:local", cache_dir=cache, judge_model=model, device="cpu")
judge.decoder = Instant(judge.decoder)
judge.fit_rows = lambda rows: (rows, [0] * len(rows))   # the answers fit: no tokenizing, the saves overlap more
n = 700
prompts = [[{"role": "user", "content": f"{tag} instruction {i} " + "x" * 300}] for i in range(n)]
(cache / f"ready-{tag}").touch()   # all three start judging together
deadline = time.time() + 120
while len(list(cache.glob("ready-*"))) < 3 and time.time() < deadline:
    time.sleep(0.01)
result = judge.compare(prompts, ["a" * 400] * n, ["b" * 400] * n)
print(tag, "judged", sum(p is not None for p in result.preferences))
"""


def test_judges_sharing_a_cache_keep_every_verdict(tmp_path, tiny_model_dir):
    """Evaluations judging side by side with one LLM judge share its annotation cache, which alpaca_eval re-reads and
    rewrites whole after every 128 rows. Three processes on one cache: one crashed on the others' half-written file
    (ValueError: Expected object or value) and the cache lost rows. Now they take turns and write it atomically."""
    pytest.importorskip("alpaca_eval")
    import os
    import subprocess
    import sys

    import pandas as pd
    script = tmp_path / "writer.py"
    script.write_text(CACHE_WRITER)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), tag, str(tmp_path / "cache"), str(tiny_model_dir),
                               str(Path(__file__).parent)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for tag in "ABC"]
    outs = [p.communicate(timeout=300) for p in procs]
    for (out, err), proc in zip(outs, procs):
        assert proc.returncode == 0, err[-2000:]
    assert sorted(out.split()[-1] for out, _ in outs) == ["700"] * 3
    (cache,) = (tmp_path / "cache" / "judges").glob("alpaca_eval-*-annotations.json")
    rows = pd.read_json(cache)
    assert len(rows) == 2100 and rows["preference"].notna().all()


def test_a_save_cut_short_leaves_the_previous_cache(tmp_path, tiny_model_dir, monkeypatch):
    """A kill while alpaca_eval wrote the annotation cache in place left a truncated file, which the judge then refused
    (and every verdict in it, paid ones too, was lost). The save now writes a temporary file and renames it: a kill
    before the rename leaves the previous cache whole."""
    pytest.importorskip("alpaca_eval")
    import os

    import pandas as pd
    judge = build_judge("alpaca_eval:local", cache_dir=tmp_path, judge_model=str(tiny_model_dir), device="cpu")
    judge.decoder = Instant(judge.decoder)
    judge.compare(PROMPTS[:3], POLICY[:3], REFERENCE[:3])
    before = judge.caching_path.read_text()
    assert len(pd.read_json(judge.caching_path)) == 3

    class Killed(BaseException):
        """The process dying mid-write (nothing catches it, as nothing survives a SIGKILL)."""

    to_json = pd.DataFrame.to_json

    def half_written(frame, path_or_buf=None, *args, **kwargs):   # a write into the file itself stops half-way
        text = to_json(frame, None, *args, **kwargs)
        if path_or_buf is None:
            return text
        Path(path_or_buf).write_text(text[:len(text) // 2])
        raise Killed()

    def no_rename(*_args):   # a write to a temporary file is killed before its rename
        raise Killed()
    with monkeypatch.context() as m:
        m.setattr(pd.DataFrame, "to_json", half_written)
        m.setattr(os, "replace", no_rename)
        with pytest.raises(Killed):
            judge.compare(PROMPTS[3:6], POLICY[3:6], REFERENCE[3:6])
    assert judge.caching_path.read_text() == before
    asked = judge.decoder.prompts
    assert all(p == pytest.approx(0.8) for p in judge.compare(PROMPTS[:3], POLICY[:3], REFERENCE[:3]).preferences)
    assert judge.decoder.prompts == asked   # its verdicts still come from the cache


def test_local_judge_verdicts_do_not_depend_on_the_batch(tmp_path, smollm2_dir):
    """Prompts are left-padded to a batch: without position ids counted from each prompt's first token, a judge with
    absolute position embeddings (GPT-2) read a padded prompt at shifted positions and gave another verdict."""
    pytest.importorskip("alpaca_eval")
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from pobench.eval.llm_judge import LocalJudgeDecoder
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=4,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
                    ).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    decoder = LocalJudgeDecoder(str(tmp_path / "gpt2"), device="cpu", batch_size=3)
    prompts = [f"<|im_start|>user\n{text}\n<|im_end|>" for text in
               ("Which is better?", "Which of these two answers to the question about the weather is better? " * 3,
                "m or M " * 9)]

    def choices(result):
        return [{t["token"]: t["logprob"] for t in e["logprobs"]["content"][0]["top_logprobs"]}
                for e in result["completions_all"]]
    batched = choices(decoder(prompts))
    alone = [choices(decoder([p]))[0] for p in prompts]
    for b, a in zip(batched, alone):
        assert b == pytest.approx(a, abs=1e-4)


def test_a_long_judge_prompt_shortens_both_answers_alike(tmp_path, tiny_model_dir):
    """A prompt over the local judge's window kept its last tokens: the instruction and the start of the answer shown
    first were cut, never the second answer, unrecorded. Both answers lose the same number of tokens now, and the
    instruction, both answers' beginnings and the task after them reach the judge."""
    pytest.importorskip("alpaca_eval")
    judge = build_judge("alpaca_eval:local", cache_dir=tmp_path, judge_model=str(tiny_model_dir), device="cpu")
    decoder = judge.decoder
    decoder.max_length = 500   # the prompt around the answers takes about 300 tokens
    seen = []
    encode = decoder.encode
    decoder.encode = lambda prompt: seen.append(encode(prompt)) or seen[-1]
    first, second = "FIRST ANSWER" + " alpha" * 400, "SECOND ANSWER" + " beta" * 250
    prompts = [[{"role": "user", "content": "THE INSTRUCTION: which is better?"}]] * 2
    result = judge.compare(prompts, [first, "short"], [second, "answers"])
    assert len(seen) == 2 and all(len(ids) <= 500 for ids in seen)
    text = decoder.tokenizer.decode(max(seen, key=len))
    for kept in ("THE INSTRUCTION", "FIRST ANSWER", "SECOND ANSWER", "Best Model Identifier"):
        assert kept in text
    cut = result.extra[0]["answer_tokens_cut"]   # a word is a token here: each answer lost as many words
    assert cut > 0 and 400 - text.count("alpha") == 250 - text.count("beta") == cut
    assert result.extra[1]["answer_tokens_cut"] == 0
    assert judge.describe()["truncated_prompts"] == 1 and judge.describe()["max_prompt_tokens"] == 500


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
    FakeOpenAIHandler.port = server.server_port
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
    info = judge.describe()
    assert info["kind"] == "llm"
    # what answered: the model asked for and the server it was sent to (a local test double, not OpenAI), never the key
    base_url = f"http://127.0.0.1:{fake_openai.port}/v1"
    assert info["identity"]["models"] == ["gpt-4-1106-preview"] and info["identity"]["endpoints"] == [base_url]
    assert "test-double-key" not in json.dumps(info)


def test_an_openai_judge_names_the_server_it_calls(tmp_path, monkeypatch):
    """describe()'s identity follows alpaca_eval's choice of client config: the model's own entries (with the
    default's where it lists "default"), else the default's; without a client config, OPENAI_API_BASE or OpenAI's
    API. An edited config or template changes its content digest; an API key is in none of it."""
    pytest.importorskip("alpaca_eval")
    import alpaca_eval.constants as AC
    for name in ("OPENAI_CLIENT_CONFIG_PATH", "OPENAI_API_BASE", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(AC, "OPENAI_CLIENT_CONFIG_PATH", tmp_path / "none.yaml")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-key")
    identity = build_judge("alpaca_eval:weighted_alpaca_eval_gpt4_turbo", cache_dir=tmp_path).describe()["identity"]
    assert identity["endpoints"] == ["https://api.openai.com/v1"] and identity["models"] == ["gpt-4-1106-preview"]
    monkeypatch.setenv("OPENAI_API_BASE", "http://old-style:1/v1")
    info = build_judge("alpaca_eval:weighted_alpaca_eval_gpt4_turbo", cache_dir=tmp_path).describe()
    assert info["identity"]["endpoints"] == ["http://old-style:1/v1"] and "sk-secret" not in json.dumps(info)
    client = tmp_path / "client.yaml"
    client.write_text("default:\n  - api_key: sk-secret-1\n    base_url: http://default:1/v1\n"
                      "gpt-4-1106-preview:\n  - default\n  - api_key: sk-secret-2\n    base_url: http://local:2/v1\n"
                      "    client_class: openai.OpenAI\n")
    monkeypatch.setenv("OPENAI_CLIENT_CONFIG_PATH", str(client))
    info = build_judge("alpaca_eval:weighted_alpaca_eval_gpt4_turbo", cache_dir=tmp_path).describe()
    assert info["identity"]["endpoints"] == ["http://default:1/v1", "http://local:2/v1 (client_class openai.OpenAI)"]
    assert "sk-secret" not in json.dumps(info) and info["identity"]["config"] == identity["config"]
    client.write_text("gpt-4o:\n  - api_key: x\n    base_url: http://other:3/v1\ndefault:\n  - api_key: y\n")
    info = build_judge("alpaca_eval:weighted_alpaca_eval_gpt4_turbo", cache_dir=tmp_path).describe()
    assert info["identity"]["endpoints"] == ["https://api.openai.com/v1"]   # not its model's entry: the default's


def test_local_judges_name_their_engine_and_dtype(tmp_path, tiny_model_dir):
    pytest.importorskip("alpaca_eval")
    judge = build_judge("alpaca_eval:local", cache_dir=tmp_path, judge_model=str(tiny_model_dir), device="cpu")
    assert judge.describe()["identity"] == {"decoder": "transformers", "dtype": "float32"}


RM_INFO = {"backbone": "minilm", "steps": 5, "seed": 1, "suite": "myuf", "eval_source": "mydata/uf.jsonl (last 8 "
           "records)", "eval_pairs": 8, "eval_accuracy_after": 1.0, "train_time_s": 2.5,
           "train_loss_curve": [0.69, 0.65]}


def test_an_rm_judge_is_named_by_what_stands_behind_its_folder(tmp_path):
    """rm_uf retrained in place (other steps and seed) between two seeds' evaluations was reported as one judge:
    eval.json held another rm_info, but the report compared judges by name. An rm: judge now records an identity
    (its rm_info.json's digest; a folder without one, its files'), which the report names with it, and an eval.json
    written before the identity was recorded is identified by the rm_info it holds, alike."""
    from conftest import build_tiny_reward_model
    from pobench.report.collect import judge_label

    first = build_tiny_reward_model(tmp_path / "rm_uf", seed=1, rm_info=RM_INFO)
    judge = build_judge(f"rm:{first}")
    info = judge.describe()
    assert set(info["identity"]) == {"rm_info"} and judge_label(info) == f"rm:{first} [rm_info {info['identity']['rm_info']}]"
    # where its rm_info.json accuracy was measured: another suite's pairs, here
    assert info["held_out_accuracy"] == 1.0 and info["held_out_accuracy_on"] == {
        "suite": "myuf", "source": "mydata/uf.jsonl (last 8 records)", "pairs": 8, "measured_by": "rm_info.json"}
    old_form = {k: v for k, v in info.items() if k not in ("identity", "held_out_accuracy_on")}
    assert judge_label(json.loads(json.dumps(old_form))) == judge_label(info)   # as eval.json held it, read back
    # retrained into the same folder with other steps and seed: another judge under the same name
    import shutil
    shutil.rmtree(first)
    build_tiny_reward_model(first, seed=2, rm_info={**RM_INFO, "steps": 8, "seed": 2, "train_time_s": 3.1})
    again = build_judge(f"rm:{first}").describe()
    assert again["name"] == info["name"] and judge_label(again) != judge_label(info)
    # a reward model pobench did not train (no rm_info.json): its files' content, wherever the folder lives
    plain = build_tiny_reward_model(tmp_path / "plain", seed=3)
    copy = shutil.copytree(plain, tmp_path / "elsewhere" / "plain")
    weights = build_judge(f"rm:{plain}").describe()["identity"]
    assert set(weights) == {"weights"} and build_judge(f"rm:{copy}").describe()["identity"] == weights
    build_tiny_reward_model(copy, seed=4)   # other weights saved over the copy
    assert build_judge(f"rm:{copy}").describe()["identity"] != weights
    # the auto judge is named by the records it trains on: no identity (its labels stay those of earlier results)
    from pobench.eval.judges import rm_judge
    assert "identity" not in rm_judge(str(first), {"spec": "auto"}).describe()


def test_llm_judge_annotations_are_cached_per_config_content(tmp_path, monkeypatch):
    """An edited configs.yaml or prompt template, or another OpenAI client config (another model behind the same
    name), gets its own annotation cache: annotations made under the old one are never reused."""
    pytest.importorskip("alpaca_eval")
    import shutil
    import alpaca_eval.constants as AC
    from pobench.eval.llm_judge import config_identity
    configs = tmp_path / "evaluators_configs"   # a copy of alpaca_eval's layout: config folder, templates beside it
    for name in ("weighted_alpaca_eval_gpt4_turbo", "alpaca_eval_clf_gpt4_turbo"):
        shutil.copytree(Path(AC.EVALUATORS_CONFIG_DIR) / name, configs / name)
    own = configs / "weighted_alpaca_eval_gpt4_turbo"
    first = build_judge(f"alpaca_eval:{own}", cache_dir=tmp_path).caching_path
    assert build_judge(f"alpaca_eval:{own}", cache_dir=tmp_path).caching_path == first   # same content, same cache
    prompt = configs / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt"
    prompt.write_text(prompt.read_text() + "\nBe strict.")
    edited = build_judge(f"alpaca_eval:{own}", cache_dir=tmp_path).caching_path
    assert edited != first
    (own / "configs.yaml").write_text((own / "configs.yaml").read_text().replace("gpt-4-1106-preview", "gpt-4o"))
    assert build_judge(f"alpaca_eval:{own}", cache_dir=tmp_path).caching_path not in (first, edited)
    client = tmp_path / "client.yaml"
    client.write_text("default:\n  - api_key: x\n    base_url: http://127.0.0.1:1/v1\n")
    monkeypatch.setenv("OPENAI_CLIENT_CONFIG_PATH", str(client))
    before = config_identity("weighted_alpaca_eval_gpt4_turbo")
    client.write_text("default:\n  - api_key: x\n    base_url: http://127.0.0.1:2/v1\n")
    assert config_identity("weighted_alpaca_eval_gpt4_turbo") != before


def test_an_llm_judge_cache_key_holds_no_api_key(tmp_path, monkeypatch):
    """config_identity hashed the whole OPENAI_CLIENT_CONFIG_PATH file, api_key included: a rotated key re-keyed the
    annotation cache (verdicts bought again) and a digest of the key went into eval.json. Only where requests go
    counts now; without a client config the key is the one caches have had."""
    pytest.importorskip("alpaca_eval")
    import hashlib
    from pobench.eval.llm_judge import config_files, config_identity, files_digest
    name = "weighted_alpaca_eval_gpt4_turbo"
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    assert config_identity(name) == files_digest(hashlib.sha1(name.encode()), config_files(name))   # as it was
    client = tmp_path / "client.yaml"
    client.write_text("default:\n  - api_key: sk-old\n    base_url: http://127.0.0.1:1/v1\n")
    monkeypatch.setenv("OPENAI_CLIENT_CONFIG_PATH", str(client))
    before = config_identity(name)
    client.write_text("default:\n  - api_key: sk-rotated\n    base_url: http://127.0.0.1:1/v1\n")
    assert config_identity(name) == before
    judge = build_judge(f"alpaca_eval:{name}", cache_dir=tmp_path)
    assert judge.describe()["config_identity"] == before and before in judge.caching_path.name
    client.write_text("default:\n  - api_key: sk-rotated\n    base_url: http://127.0.0.1:2/v1\n")
    assert config_identity(name) != before   # another server: another cache


def test_local_judge_annotations_are_cached_per_prompt_template(tmp_path, tiny_model_dir, monkeypatch):
    """alpaca_eval:local keyed its cache on the judge model alone: an edited prompt template (or another alpaca_eval
    version's) reused verdicts given to the old prompt. The template as alpaca-eval 0.6.6 ships it keeps the key that
    caches made before had."""
    pytest.importorskip("alpaca_eval")
    import hashlib
    import shutil

    import alpaca_eval.constants as AC
    judge = build_judge("alpaca_eval:local", cache_dir=tmp_path, judge_model=str(tiny_model_dir), device="cpu")
    shipped = judge.caching_path
    before = hashlib.sha1(judge.decoder.cache_key.encode()).hexdigest()[:10]   # the key's formula until now
    assert shipped.name == f"alpaca_eval-{before}-annotations.json"
    configs = tmp_path / "evaluators_configs"
    name = "alpaca_eval_clf_gpt4_turbo"
    shutil.copytree(Path(AC.EVALUATORS_CONFIG_DIR) / name, configs / name)
    monkeypatch.setattr(AC, "EVALUATORS_CONFIG_DIR", configs)
    assert build_judge("alpaca_eval:local", cache_dir=tmp_path, judge_model=str(tiny_model_dir),
                       device="cpu").caching_path == shipped   # the same content elsewhere: the same cache
    template = configs / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt"
    template.write_text(template.read_text() + "\nBe strict.")
    edited = build_judge("alpaca_eval:local", cache_dir=tmp_path, judge_model=str(tiny_model_dir), device="cpu")
    assert edited.caching_path != shipped
    assert str(template) in (edited.annotators_config.read_text())   # and that template is the one it judges with


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


# ---- alpaca_eval:local on vLLM (pobench/eval/vllm_judge.py), without vLLM: test doubles shaped like its outputs ----

@dataclass
class FakeLogprob:
    """Test double of vllm.logprobs.Logprob."""
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FakeCompletionOutput:
    """Test double of vllm.outputs.CompletionOutput (the fields vLLM fills for one generated token)."""
    index: int
    text: str
    token_ids: list
    logprobs: list | None            # per generated position: {token id: FakeLogprob}, top-k plus the sampled token
    finish_reason: str = "length"


@dataclass
class FakeRequestOutput:
    """Test double of vllm.outputs.RequestOutput."""
    prompt_token_ids: list
    outputs: list
    prompt_logprobs: list | None = None   # [None, {token id: FakeLogprob}, ...]: the first prompt token has no context


def fake_vllm_output(prompt_ids, position=None, prompt_logprobs=None):
    """One FakeRequestOutput: `position` {token id: log-prob} of the generated token, `prompt_logprobs` a list."""
    position = {t: FakeLogprob(lp, rank) for rank, (t, lp) in enumerate((position or {}).items(), 1)}
    sampled = next(iter(position), 0)
    return FakeRequestOutput(list(prompt_ids), [FakeCompletionOutput(0, "", [sampled], [position])],
                             None if prompt_logprobs is None else [None] + [
                                 {t: FakeLogprob(lp)} for t, lp in prompt_logprobs])


class FakeVLLMEngine:
    """Test double of `LLM.generate` for the judge, backed by a transformers model on the CPU: one greedy token
    with the top-k log-probabilities of its position plus the sampled token's, and with prompt_logprobs=0 each
    prompt token's own log-probability, as vLLM builds them. It enforces vLLM's limit on logprobs (max_logprobs,
    20 by default) and records every call."""

    def __init__(self, model, max_logprobs: int = 20):
        self.model, self.max_logprobs, self.calls = model, max_logprobs, []

    def __call__(self, prompts, kw):
        import torch
        self.calls.append((prompts, dict(kw)))
        assert kw["max_tokens"] == 1 and kw["temperature"] == 0.0 and kw.get("n", 1) == 1
        k = kw.get("logprobs")
        assert k is None or 0 <= k <= self.max_logprobs, "vLLM raises: logprobs above max_logprobs"
        outputs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
            greedy = int(lp[-1].argmax())
            top = {}
            if k is not None:
                values, indices = torch.topk(lp[-1], k)
                top = dict(zip(indices.tolist(), values.tolist()))
                top.setdefault(greedy, float(lp[-1, greedy]))
            prompt_lps = None
            if kw.get("prompt_logprobs") is not None:
                prompt_lps = [(ids[j + 1], float(lp[j, ids[j + 1]])) for j in range(len(ids) - 1)]
            outputs.append(fake_vllm_output(ids, top, prompt_lps))
        return outputs


def test_vllm_judge_requests_and_the_reading_of_vllm_outputs():
    from pobench.eval.vllm_judge import (build_fallback_requests, build_judge_requests, choice_logprobs,
                                         read_choice_logprobs, read_fallback_logprobs)
    choice = {"m": 10, "M": 20}
    rows = [[1, 2], [3], [4, 5, 6]]
    prompts, kw = build_judge_requests(rows, top_logprobs=5)
    assert prompts == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}, {"prompt_token_ids": [4, 5, 6]}]
    assert kw == dict(n=1, max_tokens=1, temperature=0.0, logprobs=5)
    # prompt 0: both choice tokens in the top k; prompt 1: only 'M'; prompt 2: neither
    first = [fake_vllm_output(rows[0], {10: -0.5, 20: -1.5, 7: -2.0}),
             fake_vllm_output(rows[1], {7: -0.1, 20: -3.0}),
             fake_vllm_output(rows[2], {7: -0.01})]
    found, missing = read_choice_logprobs(first, choice)
    assert found == [{"m": -0.5, "M": -1.5}, {"M": -3.0}, {}]
    assert missing == [(1, "m"), (2, "m"), (2, "M")]
    prompts2, kw2 = build_fallback_requests(rows, missing, choice)
    assert prompts2 == [{"prompt_token_ids": [3, 10]}, {"prompt_token_ids": [4, 5, 6, 10]},
                        {"prompt_token_ids": [4, 5, 6, 20]}]
    assert kw2 == dict(n=1, max_tokens=1, temperature=0.0, prompt_logprobs=0)
    second = [fake_vllm_output([3, 10], prompt_logprobs=[(10, -6.0)]),
              fake_vllm_output([4, 5, 6, 10], prompt_logprobs=[(5, -1.0), (6, -1.0), (10, -7.0)]),
              fake_vllm_output([4, 5, 6, 20], prompt_logprobs=[(5, -1.0), (6, -1.0), (20, -8.0)])]
    assert read_fallback_logprobs(second, missing, choice) == {(1, "m"): -6.0, (2, "m"): -7.0, (2, "M"): -8.0}

    def generate(prompts, kw):   # the two passes, answered from the outputs above
        return second if "prompt_logprobs" in kw else first
    logprobs, n_second = choice_logprobs(generate, rows, choice, top_logprobs=5)
    assert logprobs == [{"m": -0.5, "M": -1.5}, {"m": -6.0, "M": -3.0}, {"m": -7.0, "M": -8.0}]
    assert [list(lp) for lp in logprobs] == [["m", "M"]] * 3 and n_second == 3
    assert choice_logprobs(generate, [], choice) == ([], 0)
    with pytest.raises(RuntimeError, match="no prompt log-probability for the choice token 'm'"):
        read_fallback_logprobs([fake_vllm_output([3, 10], prompt_logprobs=[(99, -1.0)])], [(1, "m")], choice)


def test_vllm_judge_decoder_on_a_fake_engine_matches_the_transformers_decoder(tiny_model_dir):
    """VLLMJudgeDecoder's whole call (the shared encoding, both passes, the OpenAI-shaped answers) with
    FakeVLLMEngine in place of vLLM, against LocalJudgeDecoder on the same tiny model: the same token ids and the
    same choice log-probabilities, whether a choice token came from the top k or from the second pass."""
    pytest.importorskip("alpaca_eval")
    from alpaca_eval.completion_parsers import logprob_parser

    from pobench.eval.llm_judge import LocalJudgeDecoder
    from pobench.eval.vllm_judge import VLLMJudgeDecoder
    local = LocalJudgeDecoder(str(tiny_model_dir), device="cpu")
    prompts = [f"<|im_start|>system\nYou compare answers.\n<|im_end|>\n<|im_start|>user\nQuestion {i}: which is "
               f"better, m or M?\n<|im_end|>" for i in range(3)]
    want = local(prompts)
    vocab = local.model.config.vocab_size
    for k in (1, vocab):   # top-1: the choice tokens come from pass 2 (a random model); the whole vocabulary: pass 1
        engine = FakeVLLMEngine(local.model, max_logprobs=max(20, k))
        decoder = VLLMJudgeDecoder(str(tiny_model_dir), top_logprobs=k, engine=engine)
        got = decoder(prompts)
        assert got["completions"] == want["completions"] and len(got["time_per_example"]) == 3
        for a, b in zip(got["completions_all"], want["completions_all"]):
            assert a["total_tokens"] == b["total_tokens"]
            top_a = {t["token"]: t["logprob"] for t in a["logprobs"]["content"][0]["top_logprobs"]}
            top_b = {t["token"]: t["logprob"] for t in b["logprobs"]["content"][0]["top_logprobs"]}
            assert list(top_a) == ["m", "M"] and top_a == pytest.approx(top_b, abs=1e-4)
            assert logprob_parser(a, numerator_token="m", denominator_tokens=["m", "M"], is_binarize=False) == \
                pytest.approx(logprob_parser(b, numerator_token="m", denominator_tokens=["m", "M"], is_binarize=False))
        first = engine.calls[0]
        assert [p["prompt_token_ids"] for p in first[0]] == [local.encode(p) for p in prompts]
        assert first[1]["logprobs"] == k
        assert decoder.second_pass == sum(len(c[0]) for c in engine.calls[1:])
        assert all("prompt_logprobs" in c[1] for c in engine.calls[1:])
        assert decoder.second_pass == (6 if k == 1 else 0)
    info = decoder.describe()
    assert info["judge_decoder"] == "vllm" and info["model_fingerprint"] == local.fingerprint
    assert info["model"] == str(tiny_model_dir) and info["top_logprobs"] == vocab
    assert local.describe()["judge_decoder"] == "transformers"
    assert decoder.cache_key != local.cache_key   # annotations of the two decoders are cached apart


def stand_in_vllm_package(llm_class):
    """A module to put in sys.modules["vllm"]: the given `LLM` test double, and a `SamplingParams` that keeps its
    keyword arguments."""
    import types
    module = types.ModuleType("vllm")
    module.__version__ = "0.0+test-double"

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    module.LLM, module.SamplingParams = llm_class, SamplingParams
    return module


def fake_vllm_module(model):
    """Test double of the `vllm` package for VLLMJudgeDecoder's constructor: `LLM` records its arguments and answers
    `generate` through FakeVLLMEngine."""
    class LLM:
        instances = []

        def __init__(self, **kwargs):
            self.kwargs, self.engine = kwargs, FakeVLLMEngine(model, kwargs.get("max_logprobs", 20))
            LLM.instances.append(self)

        def generate(self, prompts, params, use_tqdm=True):
            assert type(params).__name__ == "SamplingParams" and use_tqdm is False
            return self.engine(prompts, params.kwargs)

    return stand_in_vllm_package(LLM)


def test_vllm_judge_decoder_loads_vllm_as_configured(tmp_path, tiny_model_dir, monkeypatch):
    """The constructor's vLLM path, with a stand-in `vllm` package (vLLM itself is CUDA-only): the engine gets the
    model folder, dtype, memory share, a max_model_len that leaves room for pass 2, and prefix caching; the judge
    built by build_judge(judge_decoder="vllm") answers through it, and its identity says vllm."""
    pytest.importorskip("alpaca_eval")
    import sys

    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    fake = fake_vllm_module(model)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    judge = build_judge("alpaca_eval:local", cache_dir=tmp_path, judge_model=str(tiny_model_dir), judge_decoder="vllm",
                        vllm_options={"dtype": "float32", "gpu_memory_utilization": 0.3})
    (llm,) = fake.LLM.instances
    assert llm.kwargs == dict(model=str(tiny_model_dir), dtype="float32", gpu_memory_utilization=0.3,
                              max_model_len=1024, enable_prefix_caching=True)   # the tiny model has 1024 positions
    assert judge.decoder.max_length == 1022
    rows = judge_against_reference(judge, PROMPTS[:3], POLICY[:3], REFERENCE[:3], seed=0)
    assert all(0 < r["preference"] < 1 for r in rows) and judge.decoder.second_pass == 6
    info = judge.describe()
    assert info["judge_decoder"] == "vllm" and info["decoder"] == "pobench VLLMJudgeDecoder (vllm 0.0+test-double)"
    assert info["dtype"] == "float32" and info["model"] == str(tiny_model_dir)
    assert info["identity"] == {"decoder": "vllm", "dtype": "float32"}


def test_judge_decoder_selection(monkeypatch):
    import torch

    from pobench import config
    from pobench.eval import llm_judge
    assert llm_judge.pick_judge_decoder("transformers") == "transformers"
    assert llm_judge.pick_judge_decoder("vllm") == "vllm"
    monkeypatch.setattr(llm_judge, "vllm_importable", lambda: False)
    assert llm_judge.pick_judge_decoder("auto") == "transformers"
    monkeypatch.setattr(llm_judge, "vllm_importable", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert llm_judge.pick_judge_decoder("auto") == "vllm"
    assert llm_judge.pick_judge_decoder("auto", "cuda") == "vllm"
    assert llm_judge.pick_judge_decoder("auto", "cpu") == "transformers"   # a CPU device keeps the CPU decoder
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert llm_judge.pick_judge_decoder("auto") == "transformers"
    with pytest.raises(PobenchError, match="config key 'eval.judge_decoder': 'vlm' is not one of auto, transformers, "
                                           "vllm"):
        llm_judge.pick_judge_decoder("vlm")
    assert config.EvalConfig().judge_decoder == "auto"
    with pytest.raises(PobenchError, match="config key 'eval.judge_decoder': 'vlm' is not one of") as err:
        config._build(config.EvalConfig, {"judge_decoder": "vlm"}, "eval.")
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_vllm_judge_decoder_without_vllm_is_a_clear_error(tmp_path, tiny_model_dir):
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    pytest.importorskip("alpaca_eval")
    with pytest.raises(PobenchError, match=r"^eval.judge_decoder vllm: vllm is not installed: "
                                           r"pip install 'pobench\[vllm\]' \(CUDA only\)"):
        build_judge("alpaca_eval:local", cache_dir=tmp_path, judge_model=str(tiny_model_dir), judge_decoder="vllm")


def test_vllm_judge_decoder_on_a_gpu_agrees_with_transformers(tmp_path):
    """The real thing (a CUDA GPU with vLLM): the local judge through alpaca_eval on SmolLM2-135M-Instruct, decoded
    by vLLM in float32, gives the transformers decoder's verdicts; and its log-probabilities of 'm' and 'M' match
    whether they come from vLLM's top-k (pass 1) or, with top_logprobs=1, from prompt_logprobs (pass 2)."""
    pytest.importorskip("vllm", reason="vLLM is an optional CUDA-only extra: pip install 'pobench[vllm]'")
    import torch
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    pytest.importorskip("alpaca_eval")
    from pobench.eval.vllm_judge import choice_logprobs
    hf = build_judge("alpaca_eval:local", cache_dir=tmp_path / "hf", judge_decoder="transformers", device="cuda")
    vl = build_judge("alpaca_eval:local", cache_dir=tmp_path / "vllm", judge_decoder="vllm",
                     vllm_options={"dtype": "float32", "gpu_memory_utilization": 0.3})
    info = vl.describe()
    assert info["judge_decoder"] == "vllm" and info["decoder"].startswith("pobench VLLMJudgeDecoder (vllm ")
    assert info["model_fingerprint"] == hf.describe()["model_fingerprint"] and vl.caching_path != hf.caching_path
    prompts = [[{"role": "user", "content": q}] for q in ("What is the capital of France?", "What is 2+2?")]
    good, bad = ["The capital of France is Paris.", "2+2 equals 4."], ["I like turtles.", "2+2 equals 5."]
    want = judge_against_reference(hf, prompts, good, bad)
    got = judge_against_reference(vl, prompts, good, bad)
    assert [r["preference"] for r in got] == pytest.approx([r["preference"] for r in want], abs=1e-3)
    texts = [f"<|im_start|>system\nYou compare answers.\n<|im_end|>\n<|im_start|>user\nQuestion {i}: is the "
             f"first answer better? Reply m or M.\n<|im_end|>" for i in range(3)]
    reference = [{t["token"]: t["logprob"] for t in e["logprobs"]["content"][0]["top_logprobs"]}
                 for e in hf.decoder(texts)["completions_all"]]
    ids = [vl.decoder.encode(t) for t in texts]
    assert ids == [hf.decoder.encode(t) for t in texts]
    for k in (20, 1):   # top-1 holds one choice token at most: the other comes from pass 2
        got_lp, second = choice_logprobs(vl.decoder.generate, ids, vl.decoder.choice_ids, top_logprobs=k)
        assert second >= (3 if k == 1 else 0)
        for a, b in zip(got_lp, reference):
            assert a == pytest.approx(b, abs=2e-3)
