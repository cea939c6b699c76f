"""The training engine on a tiny random model: log-probs, accumulation, determinism, resume, LoRA, plugins."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pobench import config as C
from pobench.data import load_suite_data
from pobench.data.tokenize import ChatFormatter, TokenizedPair
from pobench.engine import trainer as T
from pobench.engine.logps import SequenceLogps, collate_pairs, reference_logps_naive
from pobench.registry import algorithm_defaults, get_algorithm, load_suite

TIME_KEYS = {"time_s", "step_time_s", "tokens_per_s", "pairs_per_s", "peak_mem_gb"}


def make_cfg(model_dir, algo="dpo", algorithm=None, data_path="sample", pool=None, model=None, **train):
    overrides = {"model": {"name_or_path": str(model_dir), **(model or {})}, "algorithm": algorithm or {},
                 "pool": pool or {},
                 "data": {"path": data_path, "max_train_records": 48, "eval_size": 8,
                          "schema": "hh" if data_path == "sample" else "auto"},
                 "train": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "lr": 1e-3,
                           "max_prompt_length": 48, "max_completion_length": 24, **train}}
    algorithm = get_algorithm(algo)
    return C.resolve(load_suite("hh-rlhf"), algo, algorithm_defaults(algorithm), {}, overrides, [algo]), algorithm


def run_train(tmp: Path, model_dir, algo="dpo", resume=False, cache=None, algorithm=None, data_path="sample",
              pool=None, model=None, **train):
    cfg, algorithm = make_cfg(model_dir, algo, algorithm, data_path, pool, model, **train)
    data = load_suite_data(cfg.data, cfg.seed)
    tmp.mkdir(parents=True, exist_ok=True)
    return T.train(cfg, algorithm, data, tmp, cache or tmp / "cache", resume=resume), cfg


def metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(l).items() if k not in TIME_KEYS}
            for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sequence_logps_match_full_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    pairs = [TokenizedPair(torch.randint(5, 1000, (n,), generator=g).tolist(),
                           torch.randint(5, 1000, (c,), generator=g).tolist(),
                           torch.randint(5, 1000, (r,), generator=g).tolist())
             for n, c, r in [(7, 5, 9), (3, 11, 2), (12, 1, 4)]]
    batch = collate_pairs(pairs, pad_id=0)
    want, want_counts = reference_logps_naive(model, batch)
    for chunk in (1024, 3):  # chunking must not change the result
        got, counts = SequenceLogps(model, chunk)(**batch)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        assert counts.tolist() == want_counts.tolist() == [5, 11, 1, 9, 2, 4]


def _tiny_causal_lm(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.for_model(model_type, vocab_size=1000, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                  **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():   # logits of tens, as trained models have, so that a cap or scale left out shows
        model.get_output_embeddings().weight.mul_(40)
    return model


@pytest.mark.parametrize("model_type, extra", [("gemma2", {"final_logit_softcapping": 30.0}),
                                               ("cohere", {"logit_scale": 0.0625}),
                                               ("granite", {"logits_scaling": 8.0})])
def test_sequence_logps_apply_the_models_own_logit_transform(model_type, extra):
    """Gemma 2 soft-caps its logits, Cohere and Granite scale them: pobench, computing the output layer itself,
    applies the same transform, or DPO would train the model on a distribution it never samples from."""
    from pobench.engine.logps import LogitTransform, check_logps_match_the_forward
    model = _tiny_causal_lm(model_type, **extra)
    pairs = [TokenizedPair([5, 9, 14, 3], [7, 8, 400], [12, 900, 31, 2]), TokenizedPair([4, 4], [6], [88, 77])]
    batch = collate_pairs(pairs, pad_id=0)
    want, _ = reference_logps_naive(model, batch)
    got, _ = SequenceLogps(model)(**batch)
    plain = SequenceLogps(model)
    plain.transform = LogitTransform()
    assert (plain(**batch)[0] - want).abs().max() > 1        # (left out, the transform would matter here)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    check_logps_match_the_forward(model, model_type)


def test_a_model_whose_forward_transforms_logits_unknowingly_is_refused():
    """A transform pobench does not know (here: a scale the forward ignores, so the two paths part) is found when
    the model is loaded, not after a run trained on the wrong log-probs."""
    from pobench.engine.logps import check_logps_match_the_forward
    from pobench.errors import PobenchError
    model = _tiny_causal_lm("llama")
    check_logps_match_the_forward(model, "tiny-llama")
    model.config.logit_scale = 0.5     # read by pobench's LogitTransform, ignored by Llama's forward
    with pytest.raises(PobenchError, match="tiny-llama: its forward transforms the output layer's logits"):
        check_logps_match_the_forward(model, "tiny-llama")


def test_lora_on_the_output_layer_is_refused(tiny_model_dir):
    import types
    from pobench.errors import PobenchError
    from pobench.models import add_lora, load_causal_lm
    lora = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    add_lora(load_causal_lm(str(tiny_model_dir), torch.float32, "sdpa"),
             types.SimpleNamespace(lora_target_modules="q_proj,v_proj", **lora))
    with pytest.raises(PobenchError, match="'q_proj,lm_head' puts an adapter on the output layer"):
        add_lora(load_causal_lm(str(tiny_model_dir), torch.float32, "sdpa"),
                 types.SimpleNamespace(lora_target_modules="q_proj,lm_head", **lora))


def test_pure_bf16_training_warns_of_lost_updates():
    """What the warning claims, measured: one AdamW step at a suite's learning rate leaves most bf16 weights as they
    were, and changes every fp32 weight."""
    from pobench.models import training_dtype_warning
    assert "rounded away" in training_dtype_warning("bfloat16") and training_dtype_warning("auto") is None
    changed = {}
    for dtype in (torch.float32, torch.bfloat16):
        weights = torch.nn.Parameter(torch.randn(4096, generator=torch.Generator().manual_seed(0)).to(dtype))
        before = weights.detach().clone()
        weights.grad = torch.randn(4096, generator=torch.Generator().manual_seed(1)).to(dtype)
        torch.optim.AdamW([weights], lr=5e-6).step()
        changed[dtype] = (weights.detach() != before).float().mean().item()
    assert changed[torch.float32] == 1.0 and changed[torch.bfloat16] < 0.1, changed


def test_output_layer_gradient_is_the_same_every_time():
    """Two `pobench run`s of one seed on the 2-core CPU parted in the last bits of the (tied) output layer's gradient
    from step 1: indexing the layer's rows by the target tokens adds repeated targets with threaded atomics in its
    backward. Many repeated targets, as in a real batch, and enough work that torch splits it over threads."""
    from pobench.engine.logps import token_logps
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        head = torch.nn.Linear(64, 50, bias=True)
        hidden = torch.randn(4096, 64, generator=g, requires_grad=True)
        targets = torch.randint(0, 50, (4096,), generator=g)
        grads = set()
        for _ in range(8):
            head.zero_grad()
            token_logps(hidden, targets, head, chunk=1024).sum().backward()
            grads.add((head.weight.grad.numpy().tobytes(), head.bias.grad.numpy().tobytes()))
        assert len(grads) == 1
    finally:
        torch.set_num_threads(threads)


def test_token_logps_under_bf16_autocast_are_the_rounded_logits_own():
    """On CUDA the policy trains under bf16 autocast (model.dtype auto), where the output layer's logits come out
    in bf16. The target's logit was computed apart, in fp32, so each token's log-prob carried the rounding error of
    its own logit: up to ~0.06 nats at logits of ~20, half of the log-probs above 0, and noise in every log-ratio
    that does not cancel once training moves a logit across a rounding step. Now: log_softmax of those logits."""
    from pobench.engine.logps import token_logps
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(256, 4000, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, 1, generator=g)
    hidden = torch.randn(512, 256, generator=g) * 0.3
    targets = head(hidden).argmax(-1)         # confident tokens: log-probs near 0, logits near 20
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(hidden)
        assert logits.dtype == torch.bfloat16
        want = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
        got = token_logps(hidden, targets, head, chunk=100)
    assert (got <= 0).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_completion_mask_covers_completion_only(tiny_model_dir):
    from transformers import AutoTokenizer
    formatter = ChatFormatter(AutoTokenizer.from_pretrained(tiny_model_dir))
    prompt = formatter.prompt_text([{"role": "user", "content": "hello"}])
    completion = formatter.completion_text([{"role": "user", "content": "hello"}], prompt, "hi there")
    assert completion.startswith("hi there") and completion.rstrip().endswith("<|im_end|>")
    pair = TokenizedPair(formatter.encode(prompt), formatter.encode(completion), formatter.encode("no"))
    batch = collate_pairs([pair], pad_id=0)
    assert batch["completion_mask"][0].sum() == len(pair.chosen)
    assert not batch["completion_mask"][0, :len(pair.prompt)].any()


def test_data_order_is_seeded_and_shared():
    a, b = T.data_order(10, 1, 5, 4), T.data_order(10, 1, 5, 4)
    assert a == b and len(a) == 20 and sorted(a[:10]) == list(range(10))
    assert T.data_order(10, 2, 5, 4) != a


def test_dpo_starts_at_log2_and_learns(tmp_path, tiny_model_dir):
    summary, _ = run_train(tmp_path / "run", tiny_model_dir, max_steps=6)
    rows = metrics(tmp_path / "run")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)   # policy == reference at step 1
    assert rows[-1]["loss"] < rows[0]["loss"]
    for key in ("step", "pairs_seen", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "logps/chosen", "logps/rejected", "eval/rewards/accuracies"):
        assert key in rows[-1]
    assert [r["pairs_seen"] for r in rows] == [4 * (i + 1) for i in range(6)]
    assert summary["held_out_final"]["eval/rewards/margins"] != 0
    # before training the policy is the reference: every held-out reward is 0, every pair a tie counted half
    initial = summary["held_out_initial"]
    assert initial["eval/rewards/margins"] == 0 and initial["eval/rewards/chosen"] == 0
    assert initial["eval/rewards/accuracies"] == 0.5 and initial["eval/loss"] == pytest.approx(math.log(2), abs=1e-7)


def test_held_out_metrics_that_are_not_finite_are_written_as_metrics_jsonl_writes_them(tmp_path, tiny_model_dir,
                                                                                         monkeypatch, capsys):
    """No training step checks the held-out evaluation: a loss that is infinite there (a plugin's) was written into
    train_summary.json as `Infinity` (and NaN as `NaN`), which pobench report refuses as a damaged file, so `pobench
    run` would have ended in that error after training. It is written as metrics.jsonl writes it."""
    from pobench.algorithm import LossOutput
    from pobench.report.collect import read_summary
    cfg, algorithm = make_cfg(tiny_model_dir, max_steps=2)
    real = algorithm.loss

    def loss(policy, reference, params):
        out = real(policy, reference, params)
        if torch.is_grad_enabled():   # a training step: finite
            return out
        return LossOutput(out.losses + math.inf, out.chosen_rewards * math.nan, out.rejected_rewards)
    monkeypatch.setattr(algorithm, "loss", loss)
    T.train(cfg, algorithm, load_suite_data(cfg.data, cfg.seed), tmp_path / "run", tmp_path / "cache")
    # ... and said, since the report reads it as not measured: a seed would leave the held-out rows without a reason
    assert "the held-out loss is inf at step 0 (the report reads it as not measured)" in capsys.readouterr().out

    def strict(constant):
        raise AssertionError(f"train_summary.json holds {constant}, which is not JSON")
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text(), parse_constant=strict)
    final = summary["held_out_final"]
    assert final["eval/loss"] == 1e308 and final["eval/rewards/chosen"] is None
    assert final == {k: v for k, v in metrics(tmp_path / "run")[-1].items() if k.startswith("eval/")}
    read_summary(tmp_path / "run" / "train_summary.json")   # what pobench report and pobench eval read
    # the per-pair margins (NaN here: chosen rewards x NaN) were written as bare NaN too: null, which the report reads
    from pobench.report.versus import read_held_out_pairs
    pairs = json.loads((tmp_path / "run" / "held_out_pairs.json").read_text(), parse_constant=strict)
    assert pairs["margins"] and all(m is None for m in pairs["margins"])
    assert set(read_held_out_pairs(tmp_path / "run").values()) == {None}


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file
    cache = tmp_path / "cache"
    run_train(tmp_path / "a1", tiny_model_dir, cache=cache, grad_accum=1, max_steps=3)
    run_train(tmp_path / "a4", tiny_model_dir, cache=cache, grad_accum=4, max_steps=3)
    w1 = load_file(str(tmp_path / "a1" / "checkpoints" / "latest" / "trainable.safetensors"))
    w4 = load_file(str(tmp_path / "a4" / "checkpoints" / "latest" / "trainable.safetensors"))
    for name in w1:   # fp32 sums in another order: Adam's normalised steps keep a few 1e-6 apart
        torch.testing.assert_close(w4[name], w1[name], rtol=1e-4, atol=3e-6)
    for r1, r4 in zip(metrics(tmp_path / "a1"), metrics(tmp_path / "a4")):
        assert r4["loss"] == pytest.approx(r1["loss"], abs=1e-5)


def test_same_seed_same_metrics(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    run_train(tmp_path / "x", tiny_model_dir, cache=cache)
    run_train(tmp_path / "y", tiny_model_dir, cache=cache)
    assert metrics(tmp_path / "x") == metrics(tmp_path / "y")


def test_resume_after_crash_reproduces_the_run(tmp_path, tiny_model_dir, monkeypatch):
    cache = tmp_path / "cache"
    run_train(tmp_path / "full", tiny_model_dir, cache=cache, max_steps=6, save_every=2)
    calls = {"n": 0}
    real = T.collate_pairs_shared

    def crash_on_fifth_step(pairs, pad_id):
        calls["n"] += 1
        if calls["n"] == 5:  # one call per training step (scoring without gradient collates separately)
            raise RuntimeError("simulated crash")
        return real(pairs, pad_id)

    monkeypatch.setattr(T, "collate_pairs_shared", crash_on_fifth_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(tmp_path / "crash", tiny_model_dir, cache=cache, max_steps=6, save_every=2, eval_every=0)
    monkeypatch.setattr(T, "collate_pairs_shared", real)
    assert json.loads((tmp_path / "crash" / "checkpoints" / "latest" / "state.json").read_text())["step"] == 4
    # as if the crash had hit between the swap's two renames: the complete checkpoint is `.old`, and resume uses it
    (tmp_path / "crash" / "checkpoints" / "latest").rename(tmp_path / "crash" / "checkpoints" / ".old")
    run_train(tmp_path / "crash", tiny_model_dir, cache=cache, max_steps=6, save_every=2, eval_every=0, resume=True)
    full = {r["step"]: r["loss"] for r in metrics(tmp_path / "full")}
    resumed = {r["step"]: r["loss"] for r in metrics(tmp_path / "crash")}
    assert sorted(resumed) == list(range(1, 7))
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], abs=1e-5)


def test_lora_reference_is_the_adapter_disabled_policy(tmp_path, tiny_model_dir):
    from pobench.engine.refcache import ReferenceCache
    summary, cfg = run_train(tmp_path / "lora", tiny_model_dir, max_steps=2)
    plain_cache = list((tmp_path / "lora" / "cache" / "reflogps").glob("*.pt"))
    cfg_lora, _ = make_cfg(tiny_model_dir)
    cfg_lora.model.lora_r = 4
    data = load_suite_data(cfg_lora.data, 1)
    algorithm = get_algorithm("dpo")
    T.train(cfg_lora, algorithm, data, tmp_path / "lora2", tmp_path / "lora2" / "cache")
    lora_cache = list((tmp_path / "lora2" / "cache" / "reflogps").glob("*.pt"))
    a, b = ReferenceCache(plain_cache[0]).entries, ReferenceCache(lora_cache[0]).entries
    assert a.keys() <= b.keys()  # the LoRA run (4 steps) touches more pairs than the 2-step run
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-3)
    rows = metrics(tmp_path / "lora2")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_a_reference_cache_without_seconds_serves_its_log_probs_and_leaves_reference_s_not_measured(tmp_path,
                                                                                                     tiny_model_dir):
    """A cache file written before entries kept what scoring them took holds two columns (log-prob, token count):
    its log-probs still serve, and a run on it has no reference time to be charged, so its reference_s is not
    measured (None), never 0, and its time is the steps' own. A file of today keeps the seconds across a save."""
    from pobench.engine.refcache import ReferenceCache
    cache = tmp_path / "cache"
    first, _ = run_train(tmp_path / "a", tiny_model_dir, cache=cache, max_steps=1)
    path = next((cache / "reflogps").glob("*.pt"))
    data = torch.load(path, weights_only=True)
    assert data["values"].shape[1] == 3 and first["reference_s"] > 0
    today = ReferenceCache(path)
    assert len(today.spent) == len(today.entries) and all(s > 0 for s in today.spent.values())
    torch.save({"keys": data["keys"], "values": data["values"][:, :2]}, path)
    old = ReferenceCache(path)
    assert old.entries == today.entries and not old.spent
    second, _ = run_train(tmp_path / "b", tiny_model_dir, cache=cache, max_steps=1)
    assert second["reference_s"] is None and second["train_time_s"] > 0
    assert metrics(tmp_path / "b") == metrics(tmp_path / "a")


def test_simpo_needs_no_reference(tmp_path, tiny_model_dir):
    summary, cfg = run_train(tmp_path / "s", tiny_model_dir, algo="simpo", max_steps=2)
    assert not (tmp_path / "s" / "cache" / "reflogps").exists()
    assert summary["reference_s"] == 0 and summary["reference_load_s"] is None   # measured: none spent
    rows = metrics(tmp_path / "s")
    assert len(rows) == 2
    # logps/* as TRL's CPOTrainer logs them for loss_type="simpo": per-token means, so that the reward (beta times
    # the per-token mean, TRL's rewards/* too) is beta times them, in training and held-out rows alike
    beta = cfg.algorithm["beta"]
    for row in rows + [summary["held_out_initial"]]:
        for prefix in ("", "eval/"):
            for side in ("chosen", "rejected"):
                if f"{prefix}logps/{side}" in row:
                    assert beta * row[f"{prefix}logps/{side}"] == pytest.approx(row[f"{prefix}rewards/{side}"], rel=1e-5)
    assert "eval/logps/chosen" in rows[-1] and -20 < rows[-1]["logps/chosen"] < 0   # a mean, not a sum


def test_only_simpo_logs_per_token_logps():
    """pair_metrics sums logps/* unless the algorithm says `logps_per_token` (SimPO); every other shipped algorithm
    logs sums, as TRL's DPOTrainer does."""
    import types

    from pobench.algorithm import SeqLogps
    from pobench.registry import ALGORITHMS, discover
    discover()
    shipped = {n for n, c in ALGORITHMS.items() if c.__module__.startswith("pobench.algorithms.")}
    assert {n for n in shipped if getattr(ALGORITHMS[n], "logps_per_token", False)} == {"simpo"}
    out = types.SimpleNamespace(losses=torch.tensor([1.0, 2.0]), chosen_rewards=torch.tensor([0.1, 0.2]),
                                rejected_rewards=torch.tensor([0.0, 0.1]))
    policy = SeqLogps(torch.tensor([-10.0, -6.0]), torch.tensor([-8.0, -9.0]), torch.tensor([5, 2]), torch.tensor([4, 3]))
    summed, mean = T.pair_metrics(out, policy), T.pair_metrics(out, policy, per_token=True)
    assert (summed["logps/chosen"], summed["logps/rejected"]) == (pytest.approx(-8.0), pytest.approx(-8.5))
    assert (mean["logps/chosen"], mean["logps/rejected"]) == (pytest.approx(-2.5), pytest.approx(-2.5))
    assert {k: v for k, v in mean.items() if not k.startswith("logps/")} == \
        {k: v for k, v in summed.items() if not k.startswith("logps/")}
    weighted = T.pair_metrics(out, policy, weights=[1.0, 0.5], per_token=True)
    assert weighted["logps/chosen"] == pytest.approx((-2.0 - 3.0 * 0.5) / 1.5)


PLUGIN = '''
"""A user's algorithm kept outside the package: DPO with a doubled margin."""
from pobench.algorithm import LossOutput
from pobench.losses import dpo_loss
from pobench.registry import register_algorithm


@register_algorithm("double_dpo")
class DoubleDPO:
    sampler = "dataset_pair"
    needs_reference = True
    defaults = """
beta: 0.1
"""

    def loss(self, policy, reference, cfg):
        losses, chosen, rejected = dpo_loss(2 * policy.chosen, 2 * policy.rejected,
                                            2 * reference.chosen, 2 * reference.rejected, cfg.beta)
        return LossOutput(losses, chosen, rejected)
'''


def test_cli_run_with_a_plugin_algorithm_writes_the_contract(tmp_path, tiny_model_dir):
    plugin = tmp_path / "elsewhere" / "my_algo.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN)
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "pobench.cli", "run", "--algo", "double_dpo,dpo", "--plugin", str(plugin),
           "--model", str(tiny_model_dir), "--data", "sample", "--max-steps", "2", "--out", str(out),
           "--set", "data.max_train_records=16", "--set", "data.eval_size=4", "--set", "double_dpo.beta=0.2",
           "--set", "eval.num_prompts=2", "--set", "eval.max_new_tokens=4", "--set", "eval.judge_rm_steps=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for algo in ("double_dpo", "dpo"):
        run = out / "hh-rlhf" / algo / "seed1"
        for name in ("config.yaml", "metrics.jsonl", "env.json", "eval.json", "train_summary.json", "data.json"):
            assert (run / name).is_file(), name
        assert (run / "checkpoints" / "latest" / "state.json").is_file()
        env = json.loads((run / "env.json").read_text())
        assert "torch" in env["packages"]
    # the plugin's file and its hash are on record, with the sampler's; data.json names the records it read
    code = json.loads((out / "hh-rlhf" / "double_dpo" / "seed1" / "train_summary.json").read_text())["code"]
    assert code["algorithm"]["file"] == str(plugin.resolve()) and len(code["algorithm"]["sha1"]) == 12
    assert code["sampler"]["name"] == "dataset_pair" and code["sampler"]["module"] == "pobench.sampling"
    data = json.loads((out / "hh-rlhf" / "dpo" / "seed1" / "data.json").read_text())
    assert data["train_records"] == 16 and data["eval_records"] == 4 and set(data["records_digest"]) == {"train", "eval"}
    import yaml
    cfg = yaml.safe_load((out / "hh-rlhf" / "double_dpo" / "seed1" / "config.yaml").read_text())
    assert cfg["algorithm"] == {"beta": 0.2} and cfg["train"]["max_steps"] == 2
    assert yaml.safe_load((out / "hh-rlhf" / "dpo" / "seed1" / "config.yaml").read_text())["algorithm"]["beta"] == 0.1
    # the two algorithms trained on the same pairs in the same order: identical first-step log-probs
    first = [json.loads((out / "hh-rlhf" / a / "seed1" / "metrics.jsonl").read_text().splitlines()[0])
             for a in ("double_dpo", "dpo")]
    assert first[0]["logps/chosen"] == pytest.approx(first[1]["logps/chosen"], abs=1e-5)
    # rerun with --resume skips finished runs and changes nothing
    before = (out / "hh-rlhf" / "dpo" / "seed1" / "metrics.jsonl").read_text()
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0 and "skipped" in proc.stderr
    assert (out / "hh-rlhf" / "dpo" / "seed1" / "metrics.jsonl").read_text() == before


def test_readme_example_algorithm_loads_and_reduces_to_dpo():
    from pobench.losses import dpo_loss
    from pobench.registry import load_plugin
    from pobench.algorithm import SeqLogps
    import types
    example = Path(__file__).resolve().parent.parent / "examples" / "rdpo.py"
    assert example.read_text() in (example.parent.parent / "README.md").read_text()  # the README shows this file
    load_plugin(example)
    algo = get_algorithm("rdpo")
    policy = SeqLogps(torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0]), torch.tensor([3, 5]), torch.tensor([4, 2]))
    reference = SeqLogps(torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5]), torch.tensor([3, 5]), torch.tensor([4, 2]))
    out = algo.loss(policy, reference, types.SimpleNamespace(beta=0.1, eps=0.0))
    want, _, _ = dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected, 0.1)
    torch.testing.assert_close(out.losses, want)
    noisy = algo.loss(policy, reference, types.SimpleNamespace(beta=0.1, eps=0.2))
    # Chowdhury et al.'s loss worked out by hand: h = 0.1 x (margin - reference margin) = +0.15 and -0.15, and
    # L = ((1 - eps) softplus(-h) - eps softplus(h)) / (1 - 2 eps): unbiased, unlike cDPO's smoothing
    def by_hand(h, eps=0.2):
        return ((1 - eps) * math.log1p(math.exp(-h)) - eps * math.log1p(math.exp(h))) / (1 - 2 * eps)
    torch.testing.assert_close(noisy.losses, torch.tensor([by_hand(0.15), by_hand(-0.15)]))


def test_gradient_checkpointing_gives_the_same_run(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    run_train(tmp_path / "plain", tiny_model_dir, cache=cache, max_steps=2)
    cfg, algorithm = make_cfg(tiny_model_dir, max_steps=2)
    cfg.model.gradient_checkpointing = True
    T.train(cfg, algorithm, load_suite_data(cfg.data, 1), tmp_path / "ckpt", cache)
    for a, b in zip(metrics(tmp_path / "plain"), metrics(tmp_path / "ckpt")):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    # and it is on: a checkpointed layer runs again during the backward (a pre-hook inside it: the recompute stops
    # once it has what the backward needs, before the layer's own forward hooks would fire)
    from pobench.models import load_policy
    for enabled, forwards in ((False, 1), (True, 2)):
        cfg.model.gradient_checkpointing = enabled
        model, _, _ = load_policy(cfg.model, torch.device("cpu"))
        calls = []
        model.model.layers[0].self_attn.register_forward_pre_hook(lambda *_: calls.append(1))
        model.train()
        model(torch.tensor([[5, 6, 7, 8]])).logits.sum().backward()
        assert len(calls) == forwards, enabled


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_rows_give_the_same_logps_and_gradients(attn):
    """prompt | chosen | rejected in one row under the block mask == two separate (prompt + completion) rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pobench.engine.logps import collate_pairs_shared, collate_sequences, collate_sequences_shared
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                         attn_implementation=attn))
    g = torch.Generator().manual_seed(1)

    def r(n):
        return torch.randint(3, 300, (n,), generator=g).tolist()
    pairs = [TokenizedPair(r(5), r(7), r(3)), TokenizedPair(r(9), r(2), r(6)), TokenizedPair(r(1), r(4), r(4))]
    scorer = SequenceLogps(model, chunk=4)
    grads = []
    for collate in (collate_pairs, collate_pairs_shared):
        model.zero_grad()
        sums, counts = scorer(**collate(pairs, 0))
        sums.sum().backward()
        grads.append((sums.detach(), counts, [p.grad.clone() for p in model.parameters()]))
    (a, ca, ga), (b, cb, gb) = grads
    assert ca.tolist() == cb.tolist() == [7, 2, 4, 3, 6, 4]
    assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga, gb))
    # sequences sharing a prompt (an MC-PO pool) wherever they are in the list, output order kept
    seqs = [(pairs[0].prompt, r(4)), (pairs[1].prompt, r(5)), (pairs[0].prompt, r(6)), (pairs[0].prompt, r(2))]
    packed = collate_sequences_shared(seqs, 0)
    assert packed["input_ids"].shape[0] == 2
    with torch.no_grad():
        assert torch.allclose(scorer(**collate_sequences(seqs, 0))[0], scorer(**packed)[0], atol=1e-5)


def test_truncated_records_are_counted_and_reported(tmp_path, tiny_model_dir, capsys):
    """Prompts over the limit keep their end, completions their start (documented); the run counts both, prints a
    one-line warning and records the counts in train_summary.json."""
    from transformers import AutoTokenizer

    from pobench.data.records import PreferenceRecord
    from pobench.data.tokenize import ChatFormatter, tokenize_record, truncation_counts
    f = ChatFormatter(AutoTokenizer.from_pretrained(tiny_model_dir))
    rec = PreferenceRecord(id="r", prompt=[{"role": "user", "content": "word " * 40}], chosen="ok", rejected="no " * 30)
    pair = tokenize_record(rec, f, max_prompt=16, max_completion=8)
    assert pair.truncated == (True, True) and len(pair.prompt) == 16 and len(pair.rejected) == 8
    whole = tokenize_record(rec, f, max_prompt=1000, max_completion=1000)
    assert whole.truncated == (False, False) and pair.prompt == whole.prompt[-16:] and pair.chosen == whole.chosen
    assert truncation_counts([pair, whole]) == {"prompts": 1, "completions": 1}
    summary, cfg = run_train(tmp_path / "t", tiny_model_dir, max_steps=1, max_prompt_length=24, max_completion_length=8)
    assert summary["truncated"]["prompts"] > 0 and summary["truncated"]["completions"] > 0
    assert "had prompts over train.max_prompt_length=24" in capsys.readouterr().out
    # the runs of one command (algorithms, grid points, seeds) share the tokenized records: one warning, not one each
    data, tokenized = load_suite_data(cfg.data, cfg.seed), {}
    for run in ("a", "b"):
        summary = T.train(cfg, get_algorithm("dpo"), data, tmp_path / run, tmp_path / "cache", tokenized=tokenized)
        assert summary["truncated"]["prompts"] > 0                  # still counted
    # ... nor one per tokenization of the same records: `pobench run --algo dpo,mcpo` said it once per algorithm, as
    # MC-PO's sampler tokenizes them apart (with its pools; here: the records read again, another cache key)
    again = T.train(cfg, get_algorithm("dpo"), load_suite_data(cfg.data, cfg.seed), tmp_path / "c", tmp_path / "cache",
                    tokenized=tokenized)
    assert again["truncated"] == summary["truncated"]   # tokenized apart (another cache key), counted again
    assert len([key for key in tokenized if isinstance(key, tuple)]) == 2
    assert capsys.readouterr().out.count("had prompts over") == 1



def test_reference_log_probs_use_the_training_precision(tmp_path, tiny_model_dir):
    """Under mixed precision (CUDA's default: fp32 weights, bf16 autocast) the cached reference log-probs are
    computed in the precision of the policy's forward, so the implicit rewards start at 0 (the policy is the
    reference) and not at the bf16-minus-fp32 rounding gap; and an fp32
    cache of the same model is never reused for them. The CPU runs bf16 autocast here in CUDA's place."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForCausalLM

    cfg, _ = make_cfg(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    scorer = SequenceLogps(model, cfg.train.logps_chunk)
    g = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(5, 1000, (6,), generator=g).tolist(), torch.randint(5, 1000, (n,), generator=g).tolist())
            for n in (3, 9, 5, 7)]
    bs = max(2, 2 * cfg.train.batch_size)
    assert len(seqs) <= bs   # one batch: the cache's own computation, repeated below
    with torch.no_grad():
        fp32, _ = T.score_sequences(scorer, seqs, 0, torch.device("cpu"), bs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = T.score_sequences(scorer, seqs, 0, torch.device("cpu"), bs)
    assert (bf16 - fp32).abs().max() > 1e-3   # the gap the cache must not carry into the rewards

    def cached(mixed_precision: str) -> list[float]:
        # accelerate keeps one process-wide state, and the first Accelerator's precision would stick: reset it on
        # both sides, so neither this test nor the next ones run under another's precision
        AcceleratorState._reset_state()
        try:
            cache = T.build_reference_cache(cfg, tmp_path, str(tiny_model_dir), model, scorer, seqs, 0,
                                            torch.device("cpu"), fresh_policy=True,
                                            accelerator=Accelerator(cpu=True, mixed_precision=mixed_precision))
            return cache.lookup_sequences(seqs)[0].tolist()
        finally:
            AcceleratorState._reset_state()

    assert cached("bf16") == bf16.tolist()
    assert cached("no") == pytest.approx(fp32.tolist(), abs=1e-6)
    assert sorted(p.stem.split("-", 1)[1] for p in (tmp_path / "reflogps").glob("*.pt")) == ["auto-bf16-lp2", "auto-lp2"]


def test_resume_under_another_process_count_is_refused(tmp_path, tiny_model_dir):
    """A checkpoint records the processes its run trained under: resuming under another count would change the
    global batch and the data each process takes, so it is refused, naming the count to resume with."""
    from pobench.errors import PobenchError
    run_train(tmp_path / "r", tiny_model_dir, max_steps=2, save_every=1)
    state_file = tmp_path / "r" / "checkpoints" / "latest" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["num_processes"] == 1
    state_file.write_text(json.dumps({**state, "num_processes": 2}))   # as a 2-process launch would have saved it
    with pytest.raises(PobenchError, match="started under 2; resume it with --num-processes 2"):
        run_train(tmp_path / "r", tiny_model_dir, max_steps=2, save_every=1, resume=True)


def test_two_plugin_files_of_one_name_both_register(tmp_path):
    """--plugin a/my_algo.py --plugin b/my_algo.py: two files, two modules, two algorithms (the second was skipped
    silently, its module name taken by the first)."""
    from pobench.registry import ALGORITHMS, load_plugin
    for folder, name in (("a", "same_name_a"), ("b", "same_name_b")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "my_algo.py").write_text(
            "from pobench.registry import register_algorithm\n"
            f"@register_algorithm('{name}')\nclass A:\n    sampler = 'dataset_pair'\n    needs_reference = True\n"
            "    defaults = 'beta: 0.1\\n'\n    def loss(self, policy, reference, cfg):\n        raise NotImplementedError\n")
    try:
        load_plugin(tmp_path / "a" / "my_algo.py")
        load_plugin(tmp_path / "b" / "my_algo.py")
        load_plugin(tmp_path / "a" / ".." / "a" / "my_algo.py")   # the same file again, by another spelling: once
        assert {"same_name_a", "same_name_b"} <= set(ALGORITHMS)
    finally:
        ALGORITHMS.pop("same_name_a", None)
        ALGORITHMS.pop("same_name_b", None)


def test_an_unfinished_completion_is_left_open(tiny_model_dir):
    """finished=False (a sample cut by its token limit): the text as the template renders it, up to the answer's
    end, without <|im_end|>; the plain format leaves out its EOS."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "hello"}]
    for mode, closing in (("auto", "<|im_end|>"), ("plain", tokenizer.eos_token)):
        formatter = ChatFormatter(tokenizer, mode)
        prompt = formatter.prompt_text(messages)
        closed = formatter.completion_text(messages, prompt, "hi there ", finished=True)
        left_open = formatter.completion_text(messages, prompt, "hi there ", finished=False)
        assert closing in closed and closing not in left_open
        assert closed.startswith(left_open) and left_open.rstrip().endswith("hi there")


def test_a_cut_sample_with_empty_text_is_scored_as_the_empty_answer(tiny_model_dir):
    """A sample cut at its token limit whose text decodes to "" (all special tokens) had no token left open: the
    shared-prompt scoring every no-gradient path uses failed in index_add_, and SimPO's length was 0."""
    from transformers import AutoTokenizer

    from pobench.data.tokenize import encode_completions
    from pobench.engine.logps import collate_shared
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "hello"}]
    formatter = ChatFormatter(tokenizer, "auto")
    prompt = formatter.prompt_text(messages)
    # one prompt's samples in one call, as a pool's: only the empty open one is scored closed
    hi_open, empty, hi, empty_closed = encode_completions(formatter, messages, prompt, ["hi", "", "hi", ""], 16,
                                                          [False, False, True, True])
    assert empty == empty_closed and empty
    assert hi_open != hi and hi[:len(hi_open)] == hi_open
    batch = collate_shared([(formatter.encode(prompt), [empty, [5, 6]])], pad_id=0)
    assert batch["token_cols"].numel() == batch["token_targets"].numel() == len(empty) + 2
    with pytest.raises(ValueError, match="non-empty completions"):
        collate_shared([(formatter.encode(prompt), [[], [5, 6]])], pad_id=0)


def test_a_finished_sample_is_closed_as_the_template_closes_a_dataset_completion(tiny_model_dir):
    """Generation stops at SmolLM2's <|im_end|>, and the template puts a newline after it: a finished online sample
    takes exactly what a dataset completion has after that token (closing_ids), so neither is told apart by its
    ending; a plain prompt ends completions with the EOS itself, and an EOS the template does not close turns with
    gets nothing."""
    from transformers import AutoTokenizer

    from pobench.data.tokenize import closing_ids, completion_ids
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "hello"}]
    eos = tokenizer.eos_token_id
    for template, closing in (("auto", tokenizer("\n", add_special_tokens=False)["input_ids"]), ("plain", [])):
        formatter = ChatFormatter(tokenizer, template)
        prompt = formatter.prompt_text(messages)
        encoded = formatter.encode_prompts([prompt])[0]
        dataset = completion_ids(formatter, [messages], [encoded], ["Hi there"])[0]
        assert dataset[len(dataset) - len(closing) - 1:] == [eos] + closing, template
        assert closing_ids(formatter, messages, encoded, eos) == closing, template
        assert closing_ids(formatter, messages, encoded, tokenizer.bos_token_id) == []


# -- completions tokenized after their prompt ---------------------------------------------------------------------

def sentencepiece_tokenizer(style: str, merge: bool = False):
    """A SentencePiece-style tokenizer built in memory (a Unigram model with byte fallback) that starts every call
    with the dummy prefix '▁': 'legacy' as Llama 2's converted tokenizer.json (Prepend + Replace normalizer, a
    Llama 2 chat template with a space before the answer), 'always' as a Metaspace pre-tokenizer with
    prepend_scheme="always" (a Mistral v0.1 template, no space before the answer), 'first' with prepend_scheme
    "first" (the prefix only at the start of the text, not after a special token). `merge` adds a piece ']H' that
    joins the prompt's last character to the answer's first."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    b = "\u2581"
    words = ["Hi", "there", "hello", "INST", "Sure", "ok"]
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [(f"<0x{i:02X}>", 0.0) for i in range(256)]
    pieces += [(b, -3.0)] + [(c, -5.0) for c in sorted(set("".join(words) + "[]/"))]
    pieces += [(b + w, -1.0) for w in words] + [(w, -2.0) for w in words] + [(b + "[", -2.0)]
    pieces += [("]H", -0.5)] if merge else []
    core = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    if style == "legacy":
        core.normalizer = normalizers.Sequence([normalizers.Prepend(b), normalizers.Replace(" ", b)])
        core.decoder = decoders.Sequence([decoders.Replace(b, " "), decoders.ByteFallback(), decoders.Fuse(),
                                          decoders.Strip(" ", 1, 0)])
    else:
        core.pre_tokenizer = pre_tokenizers.Metaspace(replacement=b, prepend_scheme=style, split=False)
        core.decoder = decoders.Metaspace(replacement=b, prepend_scheme=style, split=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    space = " " if style == "legacy" else ""
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                               "[INST] {{ m['content'] }} [/INST]{% else %}" + space + "{{ m['content'] }}" + space +
                               "{{ eos_token }}{% endif %}{% endfor %}")
    return tokenizer


@pytest.mark.parametrize("style", ["legacy", "always"])
def test_sentencepiece_completions_take_the_ids_of_the_joint_text(tmp_path, style):
    """A tokenizer that adds '▁' at the start of every call gave a completion tokenized alone another first token
    than prompt + completion has ('▁' '▁Hi' or '▁Hi' where the joint text has '▁Hi' or 'Hi'): the policy was
    trained and scored on a sequence it would not produce after the prompt. Every path that tokenizes a completion
    (the dataset's pairs and candidates, generated pools, open and closed) now gives the joint text's ids."""
    from pobench.data.records import PreferenceRecord
    from pobench.data.tokenize import encode_completions, tokenize_record
    from pobench.engine.refcache import ReferenceCache
    formatter = ChatFormatter(sentencepiece_tokenizer(style))
    messages = [{"role": "user", "content": "hello"}]
    record = PreferenceRecord(id="r", prompt=messages, chosen="Hi there", rejected="Sure ok",
                              candidates=["Hi there", "Sure ok", "ok"], scores=[1.0, 0.0, 0.5])
    prompt = formatter.prompt_text(messages)
    pair = tokenize_record(record, formatter, max_prompt=100, max_completion=100, with_candidates=True)
    assert pair.prompt == formatter.encode(prompt)
    for text, ids in zip(["Hi there", "Sure ok", "Hi there", "Sure ok", "ok"],
                         [pair.chosen, pair.rejected] + pair.candidates):
        completion = formatter.completion_text(messages, prompt, text)
        assert pair.prompt + ids == formatter.encode(prompt + completion)
        assert ids != formatter.encode(completion)       # the defect: alone, the completion starts with '▁'
        assert encode_completions(formatter, messages, prompt, [text], 100) == [ids]   # generated pools
        left_open = formatter.completion_text(messages, prompt, text, finished=False)
        assert pair.prompt + encode_completions(formatter, messages, prompt, [text], 100, [False])[0] == \
            formatter.encode(prompt + left_open)
    first = formatter.tokenizer.convert_ids_to_tokens(pair.chosen)[0]
    assert first == ("\u2581Hi" if style == "legacy" else "Hi")
    assert formatter.adds_prefix
    # the truncation rules as before: the prompt keeps its last tokens, a completion its first
    cut = tokenize_record(record, formatter, max_prompt=3, max_completion=2)
    assert (cut.prompt, cut.chosen, cut.rejected) == (pair.prompt[-3:], pair.chosen[:2], pair.rejected[:2])
    assert cut.truncated == (True, True)
    # a reference cache made on the ids of before serves none of the new ones: its entries are keyed by the ids
    # (sequence_key), so no stale log-prob is read and its file name needs no new suffix
    cache = ReferenceCache(tmp_path / "ref.pt")
    old = (pair.prompt, formatter.encode(formatter.completion_text(messages, prompt, "Hi there")))
    cache.add([old], torch.tensor([-1.0]), torch.tensor([len(old[1])]))
    assert cache.missing([(pair.prompt, pair.chosen)]) == [(pair.prompt, pair.chosen)]


def test_a_token_across_the_prompts_end_keeps_the_prompt_and_no_dummy_prefix():
    """Where a piece joins the prompt's last character to the answer's first (']H'), no split of the joint ids
    leaves the prompt's ids as they are given to the model: the prompt keeps them, and the answer is tokenized as it
    reads after other text ('Hi', not the call's '▁Hi')."""
    from pobench.data.records import PreferenceRecord
    from pobench.data.tokenize import tokenize_record
    formatter = ChatFormatter(sentencepiece_tokenizer("always", merge=True))
    tokens = formatter.tokenizer.convert_ids_to_tokens
    messages = [{"role": "user", "content": "hello"}]
    prompt = formatter.prompt_text(messages)
    completion = formatter.completion_text(messages, prompt, "Hi there")
    assert "]H" in tokens(formatter.encode(prompt + completion))
    pair = tokenize_record(PreferenceRecord(id="r", prompt=messages, chosen="Hi there", rejected="Sure ok"),
                           formatter, max_prompt=100, max_completion=100)
    assert pair.prompt == formatter.encode(prompt)
    assert tokens(formatter.encode(completion)) == ["\u2581Hi", "\u2581there", "</s>"]   # alone: the dummy prefix
    assert tokens(pair.chosen) == ["Hi", "\u2581there", "</s>"]
    assert tokens(pair.rejected) == ["Sure", "\u2581ok", "</s>"]                           # no merge: the joint ids


@pytest.mark.parametrize("style", ["legacy", "always", "first"])
def test_completions_tokenized_from_the_prompts_tail_get_the_whole_joint_texts_ids(style):
    """A completion is tokenized with the prompt's text from its last special token on, not the whole prompt
    again: its ids are those the whole joint text gives (after the prompt's ids; or, where a token spans the
    prompt's end, the completion as it reads after other text), here on multi-turn prompts whose last special token
    (</s>) is mid-prompt. 'first' adds the dummy prefix only at the start of a call: the text after the special
    token, tokenized without it, would start with '▁' (the tail keeps the token)."""
    from pobench.data.records import PreferenceRecord
    from pobench.data.tokenize import tokenize_records
    formatter = ChatFormatter(sentencepiece_tokenizer(style))
    texts = ["Hi there", " Hi there", "ok", "", "\nSure ok", "Sure  ok "]
    conversations = [[{"role": "user", "content": "hello"}, {"role": "assistant", "content": answer},
                      {"role": "user", "content": question}]
                     for answer in ("Hi", " Sure ok") for question in ("hello there", "ok")]
    records = [PreferenceRecord(id=str(k), prompt=m, chosen=c, rejected=r, candidates=texts, scores=[0.0] * 6)
               for k, m in enumerate(conversations) for c, r in zip(texts, texts[1:])]
    pairs = tokenize_records(records, formatter, 10**6, 10**6, with_candidates=True, chunk=5)
    for record, pair in zip(records, pairs):
        prompt = formatter.prompt_text(record.prompt)
        (encoded,) = formatter.encode_prompts([prompt])
        assert prompt[encoded.tail_start:].startswith("</s>") and encoded.tail_start > 0   # the shortcut is taken
        assert pair.prompt == formatter.encode(prompt)
        for text, ids in zip(texts + [record.chosen, record.rejected], pair.candidates + [pair.chosen, pair.rejected]):
            completion = formatter.completion_text(record.prompt, prompt, text)
            whole = formatter.encode(prompt + completion)
            if whole[:len(pair.prompt)] == pair.prompt:
                assert ids == whole[len(pair.prompt):], (text, prompt)
            else:
                assert ids == formatter.encode_continuations([completion])[0], (text, prompt)


def test_default_model_ids_are_unchanged_on_the_hh_sample(smollm2_dir):
    """SmolLM2's byte-level BPE with its chat template: every record of the shipped HH-RLHF sample tokenizes as it
    did when completions were tokenized alone (the prompt's ids, then the completion's text's ids), so the figures
    made before completions took the joint text's ids hold; and so does the suite's path, many records per
    tokenizer call, each completion tokenized with the prompt's tail ('<|im_start|>assistant\\n')."""
    from transformers import AutoTokenizer

    from pobench.data.loading import SAMPLES_DIR, parse_rows, read_json_rows
    from pobench.data.tokenize import tokenize_record, tokenize_records
    formatter = ChatFormatter(AutoTokenizer.from_pretrained(smollm2_dir))
    sample = SAMPLES_DIR / "hh-rlhf" / "harmless-base-test-2000.jsonl.gz"
    records = parse_rows(str(sample), read_json_rows(sample), schema="auto").records
    assert len(records) == 1992
    cuts = []
    for record in records:
        prompt = formatter.prompt_text(record.prompt)
        before = [formatter.encode(prompt)] + [formatter.encode(formatter.completion_text(record.prompt, prompt, t))
                                               for t in (record.chosen, record.rejected)]
        pair = tokenize_record(record, formatter, max_prompt=10**6, max_completion=10**6)
        assert [pair.prompt, pair.chosen, pair.rejected] == before, record.id
        cuts.append(tokenize_record(record, formatter, max_prompt=128, max_completion=64))   # the suite's lengths
        assert [cuts[-1].prompt, cuts[-1].chosen, cuts[-1].rejected] == \
            [before[0][-128:], before[1][:64], before[2][:64]]
    assert not formatter.adds_prefix   # a text that merges at the prompt's end is tokenized alone, as before
    assert tokenize_records(records, formatter, 128, 64) == cuts
    assert {p.tail for p in formatter.encode_prompts([formatter.prompt_text(r.prompt) for r in records[:8]])} == \
        {"<|im_start|>assistant\n"}


def test_resume_on_other_records_is_refused(tmp_path, tiny_model_dir):
    """A local file edited after a crash (or `data.path: auto` reaching the hub where it read the sample) would
    continue the run's data order over other records: data.json names the records, and --resume compares."""
    import gzip

    from typer.testing import CliRunner

    from pobench.cli import app
    from pobench.data.loading import SAMPLES_DIR
    from pobench.errors import PobenchError
    with gzip.open(SAMPLES_DIR / "hh-rlhf" / "harmless-base-test-2000.jsonl.gz", "rt") as f:
        rows = [next(f) for _ in range(14)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(rows))
    args = ["run", "--algo", "dpo", "--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "1",
            "--out", str(tmp_path / "out"), "--set", "data.eval_size=4", "--no-eval"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    run_dir = tmp_path / "out" / "hh-rlhf" / "dpo" / "seed1"
    assert set(json.loads((run_dir / "data.json").read_text())["records_digest"]) == {"train", "eval"}
    (run_dir / "train_summary.json").unlink()            # as if it had crashed before the end
    data.write_text("".join(rows[:2] + rows[3:] + rows[2:3]))   # the same rows, another order
    kept = (run_dir / "config.yaml").read_bytes()
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert isinstance(again.exception, PobenchError), again.output
    assert "--resume on other training records than the run started on" in str(again.exception)
    assert (run_dir / "config.yaml").read_bytes() == kept
    data.write_text("".join(rows))
    assert CliRunner().invoke(app, [*args, "--resume"]).exit_code == 0


def test_a_lora_run_resumed_without_its_reference_cache_scores_the_reference_with_the_adapter_off(
        tmp_path, tiny_model_dir, monkeypatch):
    """Before step 1 a fresh adapter changes nothing, so only a cache built after updates tells whether the
    reference is the adapter-disabled policy: here the reference cache is lost with the crash, rebuilt on resume
    from the trained LoRA policy, and the resumed run must still train as the uninterrupted one did."""
    import shutil
    lora = {"lora_r": 4}
    run_train(tmp_path / "full", tiny_model_dir, cache=tmp_path / "c1", max_steps=6, save_every=2, model=lora, lr=1e-2)
    calls = {"n": 0}
    real = T.collate_pairs_shared

    def crash_on_fifth_step(pairs, pad_id):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real(pairs, pad_id)

    monkeypatch.setattr(T, "collate_pairs_shared", crash_on_fifth_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(tmp_path / "crash", tiny_model_dir, cache=tmp_path / "c2", max_steps=6, save_every=2, model=lora,
                  lr=1e-2)
    monkeypatch.setattr(T, "collate_pairs_shared", real)
    shutil.rmtree(tmp_path / "c2" / "reflogps")
    run_train(tmp_path / "crash", tiny_model_dir, cache=tmp_path / "c2", max_steps=6, save_every=2, model=lora, lr=1e-2,
              resume=True)
    full = {r["step"]: r["loss"] for r in metrics(tmp_path / "full")}
    resumed = {r["step"]: r["loss"] for r in metrics(tmp_path / "crash")}
    assert abs(full[6] - full[1]) > 1e-3                     # the adapter moved: a wrong reference would show
    for step in (5, 6):
        assert resumed[step] == pytest.approx(full[step], rel=1e-4, abs=1e-5)


def test_learning_rate_warms_up_then_decays_by_cosine_and_gradients_are_clipped(tmp_path, tiny_model_dir):
    """The schedule README promises (linear warmup over warmup_ratio of the steps, then cosine to 0), read back from
    the logged learning_rate; clipping at a tiny norm shrinks AdamW's first updates to nothing (the gradient falls
    under Adam's eps), and max_grad_norm 0 turns clipping off."""
    run_train(tmp_path / "lr", tiny_model_dir, max_steps=10, batch_size=2, lr=1e-3, warmup_ratio=0.2, eval_every=0)
    logged = {r["step"]: r["learning_rate"] for r in metrics(tmp_path / "lr")}
    # warmup: 2 steps (0.5, 1.0); then 0.5 (1 + cos(pi k / 8)) for k = 0..7
    want = {1: 0.5, 2: 1.0, 3: 1.0, 7: 0.5, 10: 0.5 * (1 + math.cos(math.pi * 7 / 8))}
    for step, factor in want.items():
        assert logged[step] == pytest.approx(1e-3 * factor, rel=1e-6), step
    runs = {}
    for name, norm in (("tiny", 1e-9), ("off", 0.0), ("huge", 1e9)):
        run_train(tmp_path / name, tiny_model_dir, max_steps=2, batch_size=2, lr=1e-2, max_grad_norm=norm,
                  cache=tmp_path / "cache")
        runs[name] = metrics(tmp_path / name)
    assert runs["off"] == runs["huge"]                            # 0 = no clipping
    assert runs["tiny"][1]["grad_norm"] == pytest.approx(runs["off"][1]["grad_norm"], rel=0.5)  # measured unclipped
    moved = abs(runs["off"][1]["loss"] - math.log(2))
    assert moved > 1e-3 and abs(runs["tiny"][1]["loss"] - math.log(2)) < moved / 20


def test_max_steps_0_is_one_pass_and_log_every_thins_the_log(tmp_path, tiny_model_dir):
    """train.max_steps 0: as many steps as whole batches in one pass over the training records (data.max_train_records
    48: 12 steps of 4). train.log_every 3: steps 3, 6, 9 and 12, and the evaluation steps 4 and 8."""
    summary, _ = run_train(tmp_path / "run", tiny_model_dir, max_steps=0, log_every=3, eval_every=4)
    assert summary["train_pairs"] == 48 and summary["steps"] == 12 and summary["records_seen"] == 48
    assert [r["step"] for r in metrics(tmp_path / "run")] == [3, 4, 6, 8, 9, 12]


def test_an_unfinished_answer_keeps_what_the_template_puts_before_it(tiny_model_dir):
    """A template that opens the assistant turn with an empty <think></think> block: the cut goes after the answer
    (a search for the answer's text found 'in' inside '<think>' and cut there)."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}<think>\n\n</think>\n\n"
                "{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                "{% endif %}")
    formatter = ChatFormatter(tokenizer, template)
    messages = [{"role": "user", "content": "hi"}]
    prompt = formatter.prompt_text(messages)
    assert formatter.completion_text(messages, prompt, "in", finished=False) == "<think>\n\n</think>\n\nin"
    assert formatter.completion_text(messages, prompt, "in", finished=True) == "<think>\n\n</think>\n\nin<|im_end|>\n"


# Mistral's and Gemma's template checks, in short: roles alternate from user; no system turn
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}")


def test_a_strict_chat_template_gets_the_turns_merged_not_the_run_aborted(tiny_model_dir):
    """4 of the HH-RLHF samples hold two human turns in a row, which alternation-checking templates reject (the run
    stopped at the first); such a prompt's turns are merged, a system turn folded into the first user turn, and a
    prompt the template takes is rendered as it is."""
    from transformers import AutoTokenizer
    formatter = ChatFormatter(AutoTokenizer.from_pretrained(tiny_model_dir), STRICT_TEMPLATE)
    plain = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert formatter.prompt_text(plain) == "[user] a\n[assistant] b\n[user] c\n[assistant] "
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "again"}]
    prompt = formatter.prompt_text(twice)
    assert prompt == "[user] a\n\nagain\n[assistant] "
    assert formatter.completion_text(twice, prompt, "yes") == "yes\n"          # the answer after the merged prompt
    system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a"}]
    assert formatter.prompt_text(system) == "[user] be brief\n\na\n[assistant] "
    with pytest.raises(Exception, match="must alternate"):                     # nothing simpler helps: its error
        formatter.prompt_text([{"role": "assistant", "content": "a"}])


PLUGIN_MISTAKES = {
    "dup_sampler": ('''
from pobench.registry import register_sampler
@register_sampler("dataset_pair")
class Swapped:
    needs_candidates = False
''', "sampler 'dataset_pair' is registered twice"),
    "no_loss": ('''
from pobench.registry import register_algorithm
@register_algorithm("no_loss_algo")
class NoLoss:
    sampler = "dataset_pair"
''', "algorithm 'no_loss_algo' ({file}): it has no `loss(self, policy, reference, cfg)` method"),
    "no_needs_reference": ('''
from pobench.registry import register_algorithm
@register_algorithm("no_reference_flag_algo")
class NoFlag:
    sampler = "dataset_pair"
    def loss(self, policy, reference, cfg):
        pass
''', "algorithm 'no_reference_flag_algo' ({file}): it has no `needs_reference` class attribute"),
    "bad_defaults": ('''
from pobench.registry import register_algorithm
@register_algorithm("bad_defaults_algo")
class BadDefaults:
    sampler = "dataset_pair"
    needs_reference = True
    defaults = """
beta: [0.1,
"""
    def loss(self, policy, reference, cfg):
        pass
''', "algorithm 'bad_defaults_algo' ({file}): bad YAML in `defaults`"),
    "dup_algorithm": ('''
from pobench.registry import register_algorithm
@register_algorithm("dpo")
class Mine:
    sampler = "dataset_pair"
    needs_reference = True
    def loss(self, policy, reference, cfg):
        pass
''', "algorithm 'dpo' is registered twice ("),   # files, not generated module names: checked below
    "list_defaults": ('''
from pobench.registry import register_algorithm
@register_algorithm("list_defaults_algo")
class ListDefaults:
    sampler = "dataset_pair"
    needs_reference = True
    defaults = "- beta"
    def loss(self, policy, reference, cfg):
        pass
''', "`defaults` must map parameter names to values, got a list"),
}


@pytest.mark.parametrize("name", sorted(PLUGIN_MISTAKES))
def test_a_plugin_authors_mistakes_are_named_when_the_plugin_loads(tmp_path, name):
    """A plugin that replaces a built-in sampler (it changed DPO's pairs, silently), lacks a loss, or has defaults
    that do not read: a one-line error naming the algorithm and the file, before any run starts."""
    from pobench.errors import PobenchError
    from pobench.registry import discover, load_plugin
    discover()
    code, message = PLUGIN_MISTAKES[name]
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    with pytest.raises(PobenchError) as err:
        load_plugin(path)
    assert message.format(file=path.resolve()) in str(err.value)
    if name == "dup_algorithm":
        assert str(err.value).endswith(f"algorithms/dpo.py and {path.resolve()})"), str(err.value)


def test_a_plugin_that_registers_nothing_is_warned_about(tmp_path, capsys):
    from pobench.registry import discover, load_plugin
    discover()
    capsys.readouterr()
    path = tmp_path / "empty.py"
    path.write_text("import torch\n")
    load_plugin(path)
    err = capsys.readouterr().err
    assert "warning: --plugin" in err and "empty.py: registers no algorithm or sampler" in err, err
    path = tmp_path / "one.py"
    path.write_text("from pobench.registry import register_sampler\n@register_sampler('warn_test_sampler')\n"
                    "class S:\n    pass\n")
    load_plugin(path)
    gold = Path(__file__).parent / "plugins" / "gold_length.py"   # a gold reward is something too
    load_plugin(gold)
    assert "warning" not in capsys.readouterr().err


def test_a_non_finite_loss_names_the_algorithm_and_a_bug_in_the_loss(tmp_path):
    from pobench.errors import PobenchError
    from pobench.registry import get_algorithm
    with pytest.raises(PobenchError, match=r"algorithm 'dpo': step 4: non-finite loss \(nan\); .*lower train.lr, check "
                                           r"the data, or look for a bug in the loss"):
        T.check_finite_loss(torch.tensor([0.5, float("nan")]), 4, tmp_path, get_algorithm("dpo"))
    T.check_finite_loss(torch.tensor([0.5, 0.1]), 4, tmp_path, get_algorithm("dpo"))


def test_a_loss_of_the_wrong_shape_and_a_missing_reference_are_named():
    """A loss that broadcast to [B, B] trained silently (its gradient summed B^2 terms); one that took the mean
    failed deep in the trainer. A sampler that made a sequence without ensure_reference hit a bare KeyError."""
    import types

    from pobench.algorithm import LossOutput, SeqLogps
    from pobench.engine.refcache import ReferenceCache
    from pobench.errors import PobenchError
    policy = SeqLogps(torch.zeros(3), torch.zeros(3), torch.ones(3), torch.ones(3))

    class Broadcast:
        name = "broadcast"

        def loss(self, policy, reference, cfg):
            h = policy.chosen[:, None] - policy.rejected[None, :]
            return LossOutput(-torch.nn.functional.logsigmoid(h), policy.chosen, policy.rejected)

    with pytest.raises(PobenchError, match=r"algorithm 'broadcast': loss must return .* shape \[3\].* losses \[3, 3\]"):
        T.checked_loss(Broadcast(), policy, None, types.SimpleNamespace())
    class ReadsReference:
        name = "reads_reference"

        def loss(self, policy, reference, cfg):
            return LossOutput(policy.chosen - reference.chosen, policy.chosen, policy.rejected)

    with pytest.raises(PobenchError, match="'reads_reference': its loss reads the reference, but it says "
                                           "needs_reference = False"):
        T.checked_loss(ReadsReference(), policy, None, types.SimpleNamespace())

    class ReadsMargin:
        name = "reads_margin"

        def loss(self, policy, reference, cfg):
            return LossOutput(policy.chosen * cfg.margin, policy.chosen, policy.rejected)

    with pytest.raises(PobenchError, match="'reads_margin': its loss reads parameter 'margin', which its defaults"):
        T.checked_loss(ReadsMargin(), policy, None, types.SimpleNamespace(beta=0.1))
    with pytest.raises(PobenchError, match="sampler 'mine': must return \\(pairs, metrics\\)"):
        T.checked_sampler_output([TokenizedPair([1], [2], [3])], "mine")
    with pytest.raises(PobenchError, match="sampler 'mine': metric 'loss' must be named 'sampler/...'"):
        T.checked_sampler_output(([], {"sampler/x": 1.0, "loss": 123.0}), "mine")   # it overwrote the logged loss
    assert T.checked_sampler_output(([], {"sampler/x": 1.0}), "mine") == ([], {"sampler/x": 1.0})
    with pytest.raises(PobenchError, match=r"must call `ctx.ensure_reference\(seqs\)`"):
        ReferenceCache(Path("/nonexistent/cache.pt")).lookup_sequences([([1], [2])])


RAISING_PLUGIN = '''
from pobench.algorithm import LossOutput
from pobench.registry import register_algorithm, register_sampler


@register_sampler("raising_sampler_test")
class Raising:
    def __init__(self, params, cfg):
        pass

    def __call__(self, batch, ctx):
        return {}["no such key"]


@register_algorithm("raising_loss_test")
class RaisingLoss:
    sampler = "raising_sampler_test"
    needs_reference = False
    defaults = "{detach: false, typo: false}"

    def loss(self, policy, reference, cfg):
        if cfg.detach:
            return LossOutput(policy.chosen.detach(), policy.chosen.detach(), policy.rejected.detach())
        if cfg.typo:
            return policy.chosen_logps
        raise KeyError("oops")
'''


def test_an_exception_in_a_plugins_loss_or_sampler_names_its_line_and_a_detached_loss_is_named(tmp_path):
    """A plugin's own bug ended as "internal error: KeyError: 'oops'" (pobench's bug, by its words), and a detached
    loss as torch's "element 0 of tensors does not require grad"; pobench's own code still raises unchanged."""
    import types

    from pobench.algorithm import SeqLogps
    from pobench.errors import PobenchError
    from pobench.registry import get_algorithm, load_plugin
    path = tmp_path / "raising.py"
    path.write_text(RAISING_PLUGIN)
    load_plugin(path)
    algo = get_algorithm("raising_loss_test")
    policy = SeqLogps(torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True), torch.ones(2),
                      torch.ones(2))
    line = RAISING_PLUGIN.splitlines().index('        raise KeyError("oops")') + 1
    with pytest.raises(PobenchError, match=f"algorithm 'raising_loss_test': its loss raised KeyError: 'oops' "
                                           f"\\({re.escape(str(path.resolve()))}:{line}\\)"):
        T.checked_loss(algo, policy, None, types.SimpleNamespace(detach=False, typo=False))
    with pytest.raises(PobenchError, match="'raising_loss_test' .*: losses do not require grad: detached from"):
        T.checked_loss(algo, policy, None, types.SimpleNamespace(detach=True, typo=False))
    # an AttributeError of the plugin's own (not a parameter or the reference) is named too: the handler for those
    # re-raised it past the wrapping
    with pytest.raises(PobenchError, match="its loss raised AttributeError: .*chosen_logps"):
        T.checked_loss(algo, policy, None, types.SimpleNamespace(detach=False, typo=True))
    # a resume is held to a plugin's code, not to pobench's own (an upgrade mid-run changes shipped files)
    dpo = get_algorithm("dpo")
    assert T.plugin_code(dpo, T.make_sampler(dpo, types.SimpleNamespace(algorithm={}))) == {}
    assert set(T.plugin_code(algo, T.make_sampler(algo, types.SimpleNamespace(algorithm={"detach": False})))) == \
        {"algorithm", "sampler"}
    with torch.no_grad():   # held-out scoring: nothing requires grad, and nothing is asked
        T.checked_loss(algo, SeqLogps(*(torch.ones(2) for _ in range(4))), None,
                       types.SimpleNamespace(detach=True, typo=False))
    sampler = T.make_sampler(algo, types.SimpleNamespace(algorithm={"detach": False}))
    error = T.plugin_error(KeyError("no such key"), sampler, "sampler 'raising_sampler_test'")
    assert isinstance(error, PobenchError) and f"{path.resolve()})" in str(error)
    try:
        sampler([], None)
    except KeyError as e:
        assert f"{path.resolve()}:12)" in str(T.plugin_error(e, sampler, "sampler 'raising_sampler_test'"))
    own = KeyError("x")   # a shipped algorithm's bug stays an internal error, with its traceback
    assert T.plugin_error(own, get_algorithm("dpo"), "algorithm 'dpo': its loss") is own


def test_every_shipped_algorithm_passes_the_dry_loss_check_at_its_grid_points():
    """`pobench run` calls each planned loss on two made-up pairs before training: no shipped loss may fail it (the
    ranking objectives read `group`), at its defaults and at every point of its default grid."""
    import itertools
    import types

    from pobench.registry import ALGORITHMS, algorithm_defaults, algorithm_grid, discover, get_algorithm
    discover()
    shipped = [n for n, c in ALGORITHMS.items() if c.__module__.startswith("pobench.algorithms.")]
    assert {"dpo", "simpo", "mcpo"} <= set(shipped)
    for name in shipped:
        algo, grid = get_algorithm(name), algorithm_grid(get_algorithm(name))
        choices = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        for extra in [{}] + choices + [{k: v} for k, vs in getattr(algo, "choices", {}).items() for v in vs]:
            T.dry_check_loss(algo, types.SimpleNamespace(algorithm={**algorithm_defaults(algo), **extra}))


def test_a_sampler_reading_a_parameter_its_algorithm_lacks_is_named():
    """A plugin algorithm on the `rso` sampler without RSO's parameters in its defaults: named at planning, not an
    internal AttributeError."""
    import types

    from pobench.errors import PobenchError
    algo = types.SimpleNamespace(name="my_rso", sampler="rso")
    cfg = types.SimpleNamespace(algorithm={"beta": 0.1}, seed=1)
    with pytest.raises(PobenchError, match="sampler 'rso' reads parameter 'num_candidates', which algorithm 'my_rso' "
                                           "does not define in its defaults"):
        T.make_sampler(algo, cfg)
