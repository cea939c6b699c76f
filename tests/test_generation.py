"""Generation backends: the transformers backend on a tiny random Llama, vLLM's request building and output
parsing on fake objects (every machine), and the real vLLM path where vLLM is installed."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pobench.errors import PobenchError
from pobench.generation import BACKENDS, Completion, GenerationConfig, get_backend, truncate_at_eos
from pobench.generation.vllm_backend import build_requests, parse_outputs, per_prompt_sampling

GREEDY = dict(temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny Llama's shape with an untied output layer. With tied embeddings, a random 2-layer model's
    greedy choice is mostly 'repeat the input token' (every output is '\\n\\n\\n...'), which would let a
    padding or masking bug pass unseen; untied, greedy outputs depend on the context."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(tiny_model_dir, tie_word_embeddings=False)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    from pobench.data.tokenize import ChatFormatter
    f = ChatFormatter(tokenizer)
    texts = ["hi", "Tell me a long story about dragons, knights and a very old castle by the sea.", "2+2?"]
    return [f.encode(f.prompt_text([{"role": "user", "content": t}])) for t in texts]


def ids(completions):
    return [[c.token_ids for c in row] for row in completions]


@pytest.fixture(scope="module")
def alone(model, tokenizer, prompts):
    """Each prompt's greedy completion, generated on its own (no padding at all): the reference outputs."""
    backend = get_backend("transformers", model, tokenizer)
    return [backend.generate([p], GenerationConfig(**GREEDY))[0][0].token_ids for p in prompts]


def test_shapes_order_and_max_new_tokens(model, tokenizer, prompts, alone):
    backend = get_backend("transformers", model, tokenizer)
    out = backend.generate(prompts, GenerationConfig(n=3, max_new_tokens=3, batch_size=4))
    assert len(out) == len(prompts) and all(len(row) == 3 for row in out)
    assert all(isinstance(c, Completion) and len(c.token_ids) == 3 and not c.finished for row in out for c in row)
    one = backend.generate(prompts[:2], GenerationConfig(n=2, max_new_tokens=1))
    assert all(len(c.token_ids) == 1 for row in one for c in row)
    # order is kept across batches of different composition (batch_size 2 splits the 3 prompts unevenly)
    greedy = backend.generate(prompts, GenerationConfig(batch_size=2, **GREEDY))
    assert ids(greedy) == [[a] for a in alone]


def test_left_padding_does_not_change_greedy_output(model, tokenizer, prompts, alone):
    backend = get_backend("transformers", model, tokenizer)
    short, long_ = prompts[0], prompts[1]
    assert len(long_) > len(short) + 5
    batched = backend.generate([long_, short], GenerationConfig(**GREEDY))
    assert ids(batched) == [[alone[1]], [alone[0]]]
    assert len(set(alone[0])) > 1   # not a degenerate repeat, so the comparison means something


def test_seeded_sampling_is_reproducible(model, tokenizer, prompts):
    backend = get_backend("transformers", model, tokenizer)
    cfg = GenerationConfig(n=2, max_new_tokens=4, seed=7, batch_size=4)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = ids(backend.generate(prompts[:2], cfg))
    assert torch.equal(torch.rand(3), expected)   # generating leaves the global RNG stream where it was
    assert ids(backend.generate(prompts[:2], cfg)) == a
    assert ids(backend.generate(prompts[:2], GenerationConfig(n=2, max_new_tokens=4, seed=8, batch_size=4))) != a
    assert a[0][0] != a[0][1]   # the n samples of a prompt are distinct draws


def test_a_prompts_samples_do_not_depend_on_its_batch_position_or_shard(model, tokenizer, prompts):
    """Seeding is per (prompt, sample): a prompt's samples are the same generated alone, in a batch at another
    position, with another batch size, in another shard of the prompt list (as a rank of a sharded evaluation
    generates it), and on the static-cache path. Measured here: token ids identical in every arrangement."""
    backend = get_backend("transformers", model, tokenizer)
    cfg = dict(n=2, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3)
    whole = ids(backend.generate(prompts, GenerationConfig(batch_size=4, **cfg)))
    assert whole[0][0] != whole[0][1] and len({tuple(r[0]) for r in whole}) == 3   # distinct draws
    alone = [ids(backend.generate([p], GenerationConfig(batch_size=4, **cfg)))[0] for p in prompts]
    reordered = ids(backend.generate(prompts[::-1], GenerationConfig(batch_size=3, **cfg)))[::-1]
    one_row = ids(backend.generate(prompts, GenerationConfig(batch_size=1, **cfg)))
    shards = ids(backend.generate(prompts[:2], GenerationConfig(batch_size=4, **cfg))) + \
        ids(backend.generate(prompts[2:] + prompts[2:], GenerationConfig(batch_size=4, **cfg)))[:1]  # padded share
    fast = ids(backend.generate(prompts, GenerationConfig(batch_size=4, fast="on", **cfg)))
    assert alone == whole and reordered == whole and one_row == whole and shards == whole and fast == whole
    assert ids(backend.generate(prompts, GenerationConfig(batch_size=4, **{**cfg, "seed": 4}))) != whole


def test_keyed_draws_follow_the_top_p_distribution():
    """The per-row path of sample_tokens (one key per row and step) samples the same distribution as the
    global-stream path, and a key gives the same draw whatever the other rows of the batch."""
    from pobench.generation.static import sample_tokens
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    keys = torch.randint(0, 1 << 32, (20000,), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(sample_tokens(logits, 1.0, 0.8, keys=keys), minlength=4).float() / 20000
    assert freq[2] == 0 and freq[3] == 0 and abs(freq[0].item() - 0.625) < 0.015
    plain = torch.bincount(sample_tokens(logits, 1.0, 1.0, keys=keys), minlength=4).float() / 20000
    assert torch.allclose(plain, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015)
    mixed = torch.randn(64, 1000, generator=torch.Generator().manual_seed(1)) * 3
    whole = sample_tokens(mixed, 0.8, 0.95, keys=keys[:64])
    assert torch.equal(sample_tokens(mixed[5:9], 0.8, 0.95, keys=keys[5:9]), whole[5:9])
    assert len(set(whole.tolist())) > 20                                 # the keys really vary the draws


def test_a_key_picks_the_token_whose_share_of_the_nucleus_holds_it():
    """Inverse CDF: key k stands for u = (k + 1/2) / 2^32, and the row takes the token whose interval of the
    renormalised nucleus (in token-id order) holds u; keys 9999 either side of an interval's edge, since float32's
    softmax is off by about 1e-7. Tokens outside the nucleus, before, between or after the kept ones, are never
    taken, at any key."""
    from pobench.generation.static import sample_tokens
    probs = torch.tensor([0.02, 0.4, 0.03, 0.25, 0.3])               # top_p 0.9 keeps ids 1, 3, 4 (mass 0.95)
    logits = probs.log()[None].repeat(9, 1)
    q = torch.tensor([0.4, 0.25, 0.3], dtype=torch.float64) / 0.95
    edges = [0, q[0].item(), (q[0] + q[1]).item()]
    near_edges = [int(e * 2 ** 32) + d for e in edges[1:] for d in (-9999, 9999)]
    keys = torch.tensor([0, (1 << 32) - 1, *near_edges, 1 << 31, 3 << 30, 1 << 30])
    drawn = sample_tokens(logits, 1.0, 0.9, keys=keys).tolist()
    u = ((keys.double() + 0.5) / 2 ** 32).tolist()
    expected = [[1, 3, 4][sum(x >= e for e in edges) - 1] for x in u]
    assert drawn == expected and drawn[:2] == [1, 4] and set(drawn) == {1, 3, 4}


class BoostAt:
    """A forward hook on the output layer that makes token `token` certain at decoding step `step` for
    batch row `row`: a random model almost never emits EOS, so the test decides where it does."""

    def __init__(self, token: int, step: int, row: int):
        self.token, self.step, self.row, self.calls = token, step, row, 0

    def __call__(self, module, inputs, output):
        if self.calls == self.step:
            output = output.clone()
            output[self.row, -1, self.token] += 1e4
        self.calls += 1
        return output


def test_stops_at_eos_and_strips_it(model, tokenizer, prompts):
    backend = get_backend("transformers", model, tokenizer)
    eos = tokenizer.eos_token_id
    assert backend.eos_ids == [eos]
    hook = model.lm_head.register_forward_hook(BoostAt(eos, step=3, row=0))
    try:
        out = backend.generate(prompts[:2], GenerationConfig(max_new_tokens=8, **{"temperature": 0}))
    finally:
        hook.remove()
    stopped, running = out[1][0], out[0][0]     # rows are sorted longest prompt first: row 0 is prompt 1
    assert stopped.finished and len(stopped.token_ids) == 4 and stopped.token_ids[-1] == eos
    assert stopped.text == tokenizer.decode(stopped.token_ids[:3], skip_special_tokens=True)
    assert tokenizer.eos_token not in stopped.text
    assert not running.finished and len(running.token_ids) == 8


def test_generation_config_eos_ids_also_stop(model, tokenizer, prompts):
    """Chat models end a turn with a token only the generation config may name (Llama 3's <|eot_id|>)."""
    other = tokenizer.convert_tokens_to_ids("<|im_start|>")
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, other]
    hook = model.lm_head.register_forward_hook(BoostAt(other, step=0, row=0))
    try:
        backend = get_backend("transformers", model, tokenizer)
        assert backend.eos_ids == sorted([tokenizer.eos_token_id, other])
        out = backend.generate(prompts[:1], GenerationConfig(**GREEDY))
    finally:
        hook.remove()
        model.generation_config.eos_token_id = saved
    assert out[0][0] == Completion("", [other], True)


def test_truncate_at_eos():
    assert truncate_at_eos([5, 6, 2, 2, 2], [2]) == ([5, 6, 2], True)
    assert truncate_at_eos([5, 9, 6, 2], [2, 9]) == ([5, 9], True)
    assert truncate_at_eos([5, 6], [2]) == ([5, 6], False)
    assert truncate_at_eos([], [2]) == ([], False)


def test_train_mode_restored_and_peft(model, tokenizer, prompts, alone):
    import copy

    from peft import LoraConfig, get_peft_model
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    out = get_backend("transformers", peft_model, tokenizer).generate(prompts[:2], GenerationConfig(**GREEDY))
    assert peft_model.training and peft_model.base_model.model.model.layers[0].training
    assert ids(out) == [[a] for a in alone[:2]]   # a fresh LoRA adapter (B = 0) does not change the model
    model.eval()
    get_backend("transformers", model, tokenizer).generate(prompts[:1], GenerationConfig(**GREEDY))
    assert not model.training


def test_bad_config_and_backend():
    with pytest.raises(PobenchError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(PobenchError, match="n=0"):
        GenerationConfig(n=0)
    with pytest.raises(PobenchError, match="unknown generation backend 'nope'"):
        get_backend("nope")
    assert {"transformers", "vllm"} <= set(BACKENDS)


def test_auto_batch_rows_fills_a_gpu_within_its_memory_share():
    """batch_size 0: 64 rows off CUDA; on CUDA the call's rows, at most 256, at most what a quarter of the free
    memory holds (KV cache at the call's capacity plus the sampler's buffers, per row)."""
    from pobench.generation.hf import auto_batch_rows, decode_bytes_per_row
    qwen2_05b = SimpleNamespace(num_attention_heads=14, num_key_value_heads=2, hidden_size=896, num_hidden_layers=24,
                                vocab_size=151936)
    per_row = decode_bytes_per_row(qwen2_05b, 2, 576)
    assert per_row == 24 * 2 * 2 * 64 * 2 * 576 + 32 * 151936                  # 7.1 MB of cache + 4.9 MB
    assert [auto_batch_rows(r, "cpu", per_row, 0) for r in (1, 64, 768)] == [1, 64, 64]
    gib = 1 << 30
    assert auto_batch_rows(768, "cuda", per_row, 60 * gib) == 256            # a round of 96 prompts x 8: capped
    assert auto_batch_rows(32, "cuda", per_row, 60 * gib) == 32              # an OnMC-PO refresh: all of it
    assert auto_batch_rows(768, "cuda", per_row, 1 * gib) == int(0.25 * gib) // per_row == 22
    assert auto_batch_rows(768, "cuda", per_row, 0) == 1
    llama_7b = SimpleNamespace(num_attention_heads=32, num_key_value_heads=None, hidden_size=4096,
                               num_hidden_layers=32, vocab_size=32000)
    assert decode_bytes_per_row(llama_7b, 2, 1) == 32 * 2 * 32 * 128 * 2 + 32 * 32000   # no GQA: all heads cached


def test_batch_size_zero_is_auto_on_the_backend(model, tokenizer, prompts, monkeypatch):
    """On CPU auto is 64 rows and gives the samples an explicit 64 gives. On CUDA (its memory queries stood in for:
    no GPU here) the backend sizes rows for the call's longest prompt, rounded up as the decoder pads it (16, or 128
    for compiled decoding), plus max_new_tokens."""
    from pobench.generation import hf, rows_per_call
    backend = get_backend("transformers", model, tokenizer)
    cfg = dict(n=6, temperature=0.8, max_new_tokens=4, seed=3)
    assert GenerationConfig().batch_size == 0
    assert backend.auto_batch_rows(prompts, GenerationConfig(**cfg)) == min(64, 6 * len(prompts))
    assert ids(backend.generate(prompts, GenerationConfig(**cfg))) == \
        ids(backend.generate(prompts, GenerationConfig(batch_size=64, **cfg)))
    assert rows_per_call(backend, prompts, GenerationConfig(batch_size=5)) == 5
    assert rows_per_call(SimpleNamespace(), prompts, GenerationConfig()) == 256      # a self-batching backend
    with pytest.raises(PobenchError, match="batch_size=-1"):
        GenerationConfig(batch_size=-1)
    seen = {}
    monkeypatch.setattr(backend, "_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 << 20, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 1 << 20)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    monkeypatch.setattr(hf, "decode_bytes_per_row", lambda config, nbytes, capacity, sampler: seen.update(
        capacity=capacity, nbytes=nbytes, vocab=config.vocab_size, sampler=sampler) or 1 << 16)
    rows = backend.auto_batch_rows(prompts, GenerationConfig(n=8, max_new_tokens=20))
    width = -(-max(map(len, prompts)) // 16) * 16
    assert seen == {"capacity": width + 20, "nbytes": 4, "vocab": model.config.vocab_size, "sampler": 32}
    assert rows == min(8 * len(prompts), (4 << 20) // 4 // (1 << 16))       # free + torch's cached blocks
    backend.auto_batch_rows(prompts, GenerationConfig(n=8, max_new_tokens=20, compile=True))
    assert seen["capacity"] == -(-max(map(len, prompts)) // 128) * 128 + 20  # compiled decoding pads to 128
    backend.auto_batch_rows(prompts, GenerationConfig(n=8, max_new_tokens=20, top_p_method="reject"))
    assert seen["sampler"] == 48                                              # rejection draws hold more


# ---- vLLM, without vLLM: the request we would send and the outputs we would read ----

def test_vllm_build_requests():
    cfg = GenerationConfig(n=4, temperature=0.8, top_p=0.95, max_new_tokens=32, seed=3)
    prompts, kw = build_requests([[1, 2, 3], [4]], cfg, eos_ids=[2, 7])
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4]}]
    assert kw == dict(n=4, temperature=0.8, top_p=0.95, top_k=-1, max_tokens=32, seed=3, stop_token_ids=[2, 7])
    many = [[i, i + 1] for i in range(50)]
    per = per_prompt_sampling(kw, many)
    # every (prompt, child) seed is distinct once vLLM adds the child index
    assert len({p["seed"] + j for p in per for j in range(4)}) == 200
    # a prompt's seed is its own, wherever it is in a call: pools are made in chunks, and a seed by position gave
    # the prompts of different chunks the same random numbers
    assert [p["seed"] for p in per_prompt_sampling(kw, many[32:34])] == [p["seed"] for p in per[32:34]]
    assert per_prompt_sampling({**kw, "seed": 4}, many[:1])[0]["seed"] != per[0]["seed"]   # the call's seed counts
    _, greedy = build_requests([[1]], GenerationConfig(temperature=0, top_p=0.5))
    assert greedy["temperature"] == 0 and greedy["top_p"] == 1.0 and "stop_token_ids" not in greedy


def test_vllm_parse_outputs():
    def out(index, text, token_ids, reason):
        return SimpleNamespace(index=index, text=text, token_ids=token_ids, finish_reason=reason)
    outputs = [
        SimpleNamespace(outputs=[out(1, "b", [8, 9], "length"), out(0, "a", [5, 2], "stop")]),
        SimpleNamespace(outputs=[out(0, "x", (6, 2, 2), "stop")]),
    ]
    parsed = parse_outputs(outputs, eos_ids=[2])
    assert parsed == [[Completion("a", [5, 2], True), Completion("b", [8, 9], False)],
                      [Completion("x", [6, 2], True)]]
    # an EOS as the last allowed token: vLLM checks the length first and says "length", but the sample ended
    assert parse_outputs([SimpleNamespace(outputs=[out(0, "c", [7, 2], "length")])], eos_ids=[2]) == \
        [[Completion("c", [7, 2], True)]]


def test_vllm_missing_is_a_clear_error():
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(PobenchError, match=r"vllm is not installed: pip install 'pobench\[vllm\]' \(CUDA only\)"):
        get_backend("vllm", "some/model")


def test_vllm_real_generation(tiny_model_dir, tokenizer, prompts):
    pytest.importorskip("vllm", reason="vLLM is an optional CUDA-only extra: pip install 'pobench[vllm]'")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    backend = get_backend("vllm", str(tiny_model_dir), tokenizer, gpu_memory_utilization=0.2)
    cfg = GenerationConfig(n=2, max_new_tokens=6, seed=1)
    out = backend.generate(prompts, cfg)
    assert [len(row) for row in out] == [2] * len(prompts)
    assert all(1 <= len(c.token_ids) <= 6 for row in out for c in row)
    assert ids(backend.generate(prompts, cfg)) == ids(out)
    backend.sync_weights(tiny_model_dir)
    assert ids(backend.generate(prompts, cfg)) == ids(out)


# -- the static-cache decoder (pobench/generation/static.py): on CPU its decode step runs eagerly, the same code
# -- that is captured as a CUDA graph on a GPU.

FAST = dict(fast="on")


def test_a_checkpoints_generation_config_does_not_change_the_plain_path(model, tokenizer, prompts):
    """A generation_config.json that ships suppress_tokens, no_repeat_ngram_size or forced_eos_token_id changed what
    plain `generate` drew (and forced_eos marked cut samples finished); the static decoder and vLLM apply none of
    them, so the two paths differed."""
    import copy
    backend = get_backend("transformers", model, tokenizer)
    cfg = dict(temperature=0.0, max_new_tokens=6)
    fast = backend.generate(prompts, GenerationConfig(**cfg, **FAST))
    first = fast[0][0].token_ids[0]
    saved = copy.deepcopy(model.generation_config)
    for attr, value in (("suppress_tokens", [first]), ("no_repeat_ngram_size", 1), ("forced_eos_token_id", 2)):
        setattr(model.generation_config, attr, value)
    try:
        plain = backend.generate(prompts, GenerationConfig(**cfg, fast="off"))
        assert model.generation_config.suppress_tokens == [first]   # the model's own config, back after the call
    finally:
        model.generation_config = saved
    assert ids(plain) == ids(fast)
    assert [c.finished for row in plain for c in row] == [c.finished for row in fast for c in row]


def test_static_decoder_greedy_matches_generate(model, tokenizer, prompts, alone):
    from pobench.generation import static
    assert static.unsupported_reason(model) is None
    backend = get_backend("transformers", model, tokenizer)
    out = backend.generate(prompts, GenerationConfig(batch_size=3, **GREEDY, **FAST))
    assert ids(out) == [[a] for a in alone]          # left padding to a multiple of 16 changes nothing
    longer = backend.generate(prompts, GenerationConfig(batch_size=2, temperature=0.0, max_new_tokens=40, **FAST))
    plain = backend.generate(prompts, GenerationConfig(batch_size=2, temperature=0.0, max_new_tokens=40, fast="off"))
    assert ids(longer) == ids(plain)                 # past the 32-step early-stop check too


def test_static_decoder_stops_at_eos_and_pads_after(model, tokenizer, prompts):
    eos = tokenizer.eos_token_id
    backend = get_backend("transformers", model, tokenizer)
    hook = model.lm_head.register_forward_hook(BoostAt(eos, step=3, row=0))
    try:
        out = backend.generate(prompts[:2], GenerationConfig(max_new_tokens=8, temperature=0, **FAST))
    finally:
        hook.remove()
    stopped, running = out[1][0], out[0][0]
    assert stopped.finished and len(stopped.token_ids) == 4 and stopped.token_ids[-1] == eos
    assert not running.finished and len(running.token_ids) == 8


def test_static_decoder_reuses_its_decoder_and_sees_new_weights(model, tokenizer, prompts):
    import copy
    m = copy.deepcopy(model)
    backend = get_backend("transformers", m, tokenizer)
    cfg = GenerationConfig(batch_size=3, temperature=0.0, max_new_tokens=6, **FAST)
    first = ids(backend.generate(prompts, cfg))
    assert ids(backend.generate(prompts, cfg)) == first and len(backend._decoders.decoders) == 1
    with torch.no_grad():                             # an optimizer-like in-place update of the weights
        m.lm_head.weight.mul_(-1.0)
    after = ids(backend.generate(prompts, cfg))
    assert after != first and after == ids(get_backend("transformers", m, tokenizer).generate(
        prompts, GenerationConfig(batch_size=3, temperature=0.0, max_new_tokens=6, fast="off")))


def test_the_decoder_pool_evicts_the_least_recently_used_shape(model):
    """Oldest-first eviction dropped a shape used in every round (its graph captured, its step compiled, again):
    a decoder used again is the last to go. An evicted decoder gives back its cache at once."""
    from pobench.generation.static import DecoderPool
    pool = DecoderPool(keep=2)
    get = lambda width: pool.get(model, 2, width, 4, [1], 0, 0.0, 1.0)   # noqa: E731
    hot = get(16)
    get(32)
    assert get(16) is hot                                                   # reused, and now the most recent
    cold = pool.decoders[next(iter(pool.decoders))]
    get(48)
    assert [k[2] for k in pool.decoders] == [16, 48] and pool.decoders[next(iter(pool.decoders))] is hot
    assert cold.cache is None                                               # released, not left to the collector


def test_retained_decoders_count_against_the_decode_memory_share(model, tokenizer, prompts, monkeypatch):
    """Up to 4 decoders (each a full KV cache, on CUDA a graph's memory) outlived their calls beside training,
    outside the quarter of free memory that auto sizing gives one batch. On CUDA (stood in for) the pool keeps them
    all, a new one included, within that share, evicting the least recently used; auto sizing counts their memory
    as free (the pool gives it back), so a retained decoder does not shrink the next call's batch into a new shape."""
    from pobench.generation import hf
    from pobench.generation.static import DecoderPool
    pool = DecoderPool()
    get = lambda width, need, budget: pool.get(model, 2, width, 4, [1], 0, 0.0, 1.0, need_bytes=need,  # noqa: E731
                                               budget_bytes=budget)
    get(16, 100, 300)
    get(32, 100, 300)
    get(16, 100, 300)                                                       # a hit: the 16 is now the most recent
    assert pool.held_bytes() == 200
    get(48, 150, 300)                                                       # 350 > 300: the 32 goes
    assert [k[2] for k in pool.decoders] == [16, 48] and pool.held_bytes() == 250
    get(64, 400, 300)                                                       # larger than the share alone: alone
    assert [k[2] for k in pool.decoders] == [64] and pool.held_bytes() == 400

    backend = get_backend("transformers", model, tokenizer)
    held = lambda: backend._decoders.held_bytes() if backend._decoders else 0   # noqa: E731
    monkeypatch.setattr(backend, "_device", lambda: torch.device("cuda"))
    # a 4 MiB GPU, less what the pool's decoders hold; 64 KiB a row: 16 rows make the quarter share
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: ((4 << 20) - held(), 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    monkeypatch.setattr(hf, "decode_bytes_per_row", lambda config, nbytes, capacity, sampler: 1 << 16)
    cfg = GenerationConfig(n=8, temperature=0.0, max_new_tokens=4)
    assert backend.auto_batch_rows(prompts, cfg) == 16
    backend._decode_static([prompts[0]] * 8, cfg)
    assert held() == 8 << 16
    assert backend.auto_batch_rows(prompts, cfg) == 16                      # not 14: the pool's bytes count as free
    backend._decode_static([prompts[1]] * 12, cfg)                          # 8 + 12 rows > 16: the 8 go
    assert [k[1] for k in backend._decoders.decoders] == [12] and held() == 12 << 16
    backend._decode_static([prompts[2]] * 2, cfg)                           # 12 + 2 <= 16: both kept
    assert [k[1] for k in backend._decoders.decoders] == [12, 2]


def test_sample_tokens_follows_top_p_distribution():
    """Temperature then top-p as transformers' TopPLogitsWarper: with probabilities (.5, .3, .15, .05) and
    top_p .8 the kept set is the first two tokens (mass before the third is .8), renormalised to (.625, .375)."""
    from pobench.generation.static import sample_tokens
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    draws = sample_tokens(logits, temperature=1.0, top_p=0.8)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[2] == 0 and freq[3] == 0
    assert abs(freq[0].item() - 0.625) < 0.015
    assert torch.bincount(sample_tokens(logits, 1.0, 0.8, method="sort"), minlength=4)[2:].sum() == 0
    plain = torch.bincount(sample_tokens(logits, 1.0, 1.0), minlength=4).float() / len(draws)
    assert torch.allclose(plain, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015)
    assert sample_tokens(logits[:2], 0.0, 0.5).tolist() == [0, 0]


def test_fast_auto_is_plain_generate_on_cpu(model, tokenizer):
    backend = get_backend("transformers", model, tokenizer)
    assert not backend.uses_fast_path(GenerationConfig())
    assert backend.uses_fast_path(GenerationConfig(fast="on"))
    with pytest.raises(PobenchError, match="fast='yes'"):
        GenerationConfig(fast="yes")


def _windowed_mistral(window: int):
    from transformers import MistralConfig, MistralForCausalLM
    config = MistralConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                           max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    return MistralForCausalLM(config).eval()


def test_a_sliding_window_shorter_than_the_call_keeps_to_plain_generate(tokenizer, monkeypatch):
    """StaticCache gives a sliding-window layer only its window's slots while the decoder's mask spans prompt +
    new tokens: 30- and 21-token prompts (padded to 32) with 12 new tokens under a window of 8 crashed the fast path
    ("size of tensor a (32) must match ... (44)"). "auto" now takes plain generate there (on CUDA, stood in for),
    "on" is a PobenchError naming the window; a window the call fits in keeps the fast path, which gives generate's
    tokens; a compiled step is refused for any window (it recompiled at every token)."""
    prompts = [list(range(3, 33)), list(range(5, 26))]
    greedy = dict(temperature=0.0, max_new_tokens=12)
    short = get_backend("transformers", _windowed_mistral(8), tokenizer)
    with pytest.raises(PobenchError, match="fast='on'.*window of 8 tokens.*44"):
        short.generate(prompts, GenerationConfig(fast="on", **greedy))
    monkeypatch.setattr(short, "_device", lambda: torch.device("cuda"))
    assert not short.uses_fast_path(GenerationConfig(**greedy), prompts)
    assert not short.uses_fast_path(GenerationConfig(**greedy))                   # width unknown: any window
    monkeypatch.undo()
    plain = short.generate(prompts, GenerationConfig(fast="off", **greedy))
    assert [len(c[0].token_ids) for c in plain] == [12, 12]

    wide = get_backend("transformers", _windowed_mistral(48), tokenizer)
    monkeypatch.setattr(wide, "_device", lambda: torch.device("cuda"))
    assert wide.uses_fast_path(GenerationConfig(**greedy), prompts)                # 32 + 12 <= 48
    assert not wide.uses_fast_path(GenerationConfig(compile=True, **greedy), prompts)
    assert not wide.uses_fast_path(GenerationConfig(**{**greedy, "max_new_tokens": 17}), prompts)
    monkeypatch.undo()
    assert ids(wide.generate(prompts, GenerationConfig(fast="on", **greedy))) == \
        ids(wide.generate(prompts, GenerationConfig(fast="off", **greedy)))


def test_generation_from_sharded_weights_keeps_every_rank_in_step(model, tokenizer, prompts, monkeypatch):
    """FSDP/ZeRO-3 over several processes (a GenerationRanks given, stood in for here): each forward is a collective,
    so the fast path (which stops on the rank's own rows and records gathers into CUDA graphs) is not taken, plain
    generate keeps stepping until all ranks are done (synced_gpus), every rank decodes chunks of the ranks' smallest
    auto size, and as many of them as the busiest rank (a rank short of chunks decodes its last one again)."""
    class OtherRanks:   # another rank's GPU had less free memory; another rank had one chunk more
        asked = []

        def min(self, value):
            self.asked.append(("min", value))
            return 2

        def max(self, value):
            self.asked.append(("max", value))
            return value + 1
    backend = get_backend("transformers", model, tokenizer, ranks=OtherRanks())
    cfg = GenerationConfig(n=2, temperature=0.8, max_new_tokens=5, seed=4)
    with monkeypatch.context() as m:
        m.setattr(backend, "_device", lambda: torch.device("cuda"))
        assert not backend.uses_fast_path(cfg, prompts)
    with pytest.raises(PobenchError, match="fast='on'.*sharded across processes"):
        backend.generate(prompts, GenerationConfig(fast="on"))
    calls = []
    real = model.generate

    def generate(**kw):
        calls.append((kw["input_ids"].shape[0], kw.pop("synced_gpus", None)))   # no process group here to sync
        return real(**kw)
    monkeypatch.setattr(model, "generate", generate)
    out = backend.generate(prompts, cfg)
    assert OtherRanks.asked == [("min", 6), ("max", 3)]                     # 6 rows: auto 6 here, 2 agreed
    assert calls == [(2, True)] * 4                                          # 3 chunks + the busiest rank's 4th
    monkeypatch.setattr(model, "generate", real)
    assert ids(out) == ids(get_backend("transformers", model, tokenizer).generate(
        prompts, GenerationConfig(n=2, temperature=0.8, max_new_tokens=5, seed=4, batch_size=2)))


def test_layer_kinds_the_static_decoder_serves():
    """Read as StaticCache reads a config: per-layer types (Gemma 2/3, Qwen2 with use_sliding_window), a chunked
    window (Llama 4), anything else (linear attention) refused; Qwen2 without its window is all full attention."""
    from transformers import Gemma2Config, Qwen2Config
    from pobench.generation.static import window_conflict
    assert window_conflict(Qwen2Config(num_hidden_layers=2), 10_000) is None
    assert window_conflict(Qwen2Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=64,
                                       max_window_layers=1), 65) is not None
    assert window_conflict(Gemma2Config(num_hidden_layers=2, sliding_window=64), 64) is None
    assert "sliding_attention" in window_conflict(Gemma2Config(num_hidden_layers=2, sliding_window=64), 65)
    chunked = SimpleNamespace(num_hidden_layers=2, layer_types=["chunked_attention", "full_attention"],
                              attention_chunk_size=16)
    assert window_conflict(chunked, 16) is None and "chunked_attention" in window_conflict(chunked, 17)
    linear = SimpleNamespace(num_hidden_layers=1, layer_types=["linear_attention"])
    assert "linear_attention" in window_conflict(linear, 8)


@pytest.mark.parametrize("scale", [0.05, 1.0, 8.0])
def test_the_nucleus_searches_keep_the_same_tokens(scale):
    """From nearly flat (a random model's) to very peaked distributions, rows x 5000 tokens, several top_p: the
    bisection keeps the sort's tokens, and selection gives the sort's threshold to the bit, whether a row's nucleus
    fits in the selected tokens or needs the full sort (select=64 forces both kinds of rows). The 16-way search
    and the radix select keep the sort's tokens too."""
    from pobench.generation.static import top_p_keep, top_p_threshold
    g = torch.Generator().manual_seed(3)
    probs = (torch.randn(16, 5000, generator=g) * scale).softmax(-1)
    for top_p in (0.5, 0.9, 0.95, 0.999):
        by_sort = top_p_keep(probs, top_p, "sort")
        for method in ("bisect", "kary", "radix"):
            searched = top_p_keep(probs, top_p, method)
            assert torch.equal(searched, by_sort), (method, scale, top_p, (searched != by_sort).sum().item())
        for select in (64, 1024):
            assert torch.equal(top_p_threshold(probs, top_p, "select", select=select),
                               top_p_threshold(probs, top_p, "sort"))
        kept_mass = (probs * by_sort).sum(-1)
        assert (kept_mass >= top_p - 1e-5).all()
    mixed = torch.cat([(torch.randn(8, 5000, generator=g) * s).softmax(-1) for s in (0.05, 8.0)])
    narrow = top_p_keep(mixed, 0.9, "sort").sum(-1) < 64
    assert narrow[8:].all() and not narrow[:8].any()    # rows of both kinds in one call
    assert torch.equal(top_p_threshold(mixed, 0.9, "select", select=64), top_p_threshold(mixed, 0.9, "sort"))


def test_radix_select_finds_the_exact_threshold():
    """The radix select's threshold is the one exact sums give (the sort's float32 running sum can miss it by a
    token where the crossing falls within rounding), ties are kept whole, and it does not depend on the row's
    order or on the other rows."""
    from pobench.generation.static import top_p_threshold

    def exact(probs, top_p):                                 # the sort's rule, summed in float64
        ordered = probs.double().sort(-1, descending=True).values
        kept = ((ordered.cumsum(-1) - ordered) < top_p).sum(-1, keepdim=True)
        return ordered.gather(-1, kept - 1).float()

    g = torch.Generator().manual_seed(5)
    wide = (torch.randn(24, 151936, generator=g) * 3).softmax(-1)      # a random model's flat rows, Qwen2's width
    for top_p in (0.5, 0.95):
        assert torch.equal(top_p_threshold(wide, top_p, "radix"), exact(wide, top_p))
    shuffled = wide[:, torch.randperm(wide.shape[1], generator=g)]
    assert torch.equal(top_p_threshold(shuffled, 0.95, "radix"), top_p_threshold(wide, 0.95, "radix"))
    assert torch.equal(top_p_threshold(wide[5:6], 0.95, "radix"), top_p_threshold(wide, 0.95, "radix")[5:6])
    ties = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.2, 0.2, 0.1], [1.0, 0.0, 0.0, 0.0]])
    for top_p, expected in ((0.3, [0.25, 0.5, 1.0]), (0.6, [0.25, 0.2, 1.0]), (0.95, [0.25, 0.1, 1.0])):
        assert torch.equal(top_p_threshold(ties, top_p, "radix"), torch.tensor(expected)[:, None])
    assert torch.equal(top_p_threshold(ties, 0.6, "radix"), top_p_threshold(ties, 0.6, "sort"))


def test_rejection_draws_follow_the_top_p_distribution():
    """"reject" draws from the whole row until a draw lands in the nucleus: the same distribution as the nucleus
    searches (0.8 keeps the first two of four tokens, renormalised to .625/.375), every token inside the radix
    select's nucleus from flat to peaked rows, a row's draw independent of its batch, and the keys vary it."""
    from pobench.generation.static import sample_tokens, top_p_keep
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(40000, 1)
    keys = torch.randint(0, 1 << 32, (40000,), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(sample_tokens(logits, 1.0, 0.8, "reject", keys), minlength=4).double() / 40000
    assert freq[2] == 0 and freq[3] == 0 and abs(freq[0].item() - 0.625) < 0.01
    by_search = torch.bincount(sample_tokens(logits, 1.0, 0.8, "sort", keys), minlength=4).double() / 40000
    assert abs(freq[0] - by_search[0]).item() < 0.015
    g = torch.Generator().manual_seed(2)
    for scale in (0.05, 3.0, 8.0):
        rows = torch.randn(48, 5000, generator=g) * scale
        row_keys = torch.randint(0, 1 << 32, (48,), generator=g)
        drawn = sample_tokens(rows, 0.8, 0.95, "reject", row_keys)
        nucleus = top_p_keep((rows / 0.8).softmax(-1), 0.95, "radix")
        assert nucleus.gather(-1, drawn[:, None]).all(), scale
        assert torch.equal(sample_tokens(rows[7:11], 0.8, 0.95, "reject", row_keys[7:11]), drawn[7:11])
        if scale < 8:
            assert len(set(drawn.tolist())) > 40
            assert not torch.equal(drawn, sample_tokens(rows, 0.8, 0.95, "sort", row_keys))   # other tokens


def test_rejection_tries_in_order_and_falls_back_to_the_most_probable_token():
    """Try 0 uses the key itself, later tries hashes of it; the first try inside the nucleus is taken, and a row
    whose every try misses takes its most probable token (always kept)."""
    from pobench.generation.static import _rejection_sample, key_uniforms, rejection_tries, try_keys
    probs = torch.tensor([[0.02, 0.4, 0.03, 0.25, 0.3]])                # top_p 0.9 keeps ids 1, 3, 4
    edges = probs.double().cumsum(-1)[0]

    def by_inverse_cdf(key):
        return int((edges < key_uniforms(torch.tensor([key]))).sum())

    miss = 1                                                           # u ~ 3e-10: token 0, outside
    assert by_inverse_cdf(miss) == 0
    assert _rejection_sample(probs, 0.9, torch.tensor([miss]), tries=1).item() == 1      # the fallback: argmax
    second = try_keys(torch.tensor([miss]), 2)[0, 1].item()
    expected = by_inverse_cdf(second)
    assert expected in (1, 3, 4)                                        # (a key whose second try lands inside)
    assert _rejection_sample(probs, 0.9, torch.tensor([miss]), tries=2).item() == expected
    hit = 1 << 31                                                      # u = 0.5: token 3, inside at once
    assert _rejection_sample(probs, 0.9, torch.tensor([hit]), tries=1).item() == by_inverse_cdf(hit) == 3
    assert [rejection_tries(p) for p in (0.95, 0.9, 0.5, 1.0)] == [10, 13, 40, 1]
    assert (0.05 ** 10 <= 2 ** -40) and (0.05 ** 9 > 2 ** -40)          # the fewest tries that miss that rarely


def test_membership_without_the_nucleus_is_the_radix_selects_nucleus():
    """inside_nucleus asks, token by token, what top_p_keep answers for the whole row: the same set, ties kept
    whole."""
    from pobench.generation.static import inside_nucleus, top_p_keep
    g = torch.Generator().manual_seed(4)
    probs = torch.cat([(torch.randn(6, 300, generator=g) * s).softmax(-1) for s in (0.05, 2.0, 8.0)])
    ties = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.2, 0.2, 0.1], [1.0, 0.0, 0.0, 0.0]])
    tiny = torch.tensor([[0.6, 0.4 - 2e-16, 1e-16, 1e-16]])           # two tokens of no mass (below 2^-52)
    for rows in (probs, ties, tiny):
        every = torch.arange(rows.shape[1]).expand(rows.shape[0], -1)
        for top_p in (0.3, 0.6, 0.95, 1 - 1e-12):
            assert torch.equal(inside_nucleus(rows, every, top_p), top_p_keep(rows, top_p, "radix")), top_p


def test_fixed_point_masses_from_float32_bits_are_the_float64_ones():
    """MPS has no float64, so there masses come from the float32 bits; they must be the same integers: zero,
    subnormals, values around 2^-52 (the smallest unit) and up to 1."""
    from pobench.generation.static import fixed_point_mass
    g = torch.Generator().manual_seed(6)
    edges = torch.tensor([0.0, 1e-45, 1e-40, 2.0 ** -126, 2.0 ** -60, 2.0 ** -53, 2.0 ** -52, 3 * 2.0 ** -53,
                          2.0 ** -52 * 1.5, 1e-9, 0.1, 0.5, 0.75, 1.0 - 2.0 ** -24, 1.0])
    probs = torch.cat([edges, (torch.randn(20000, generator=g) * 6).softmax(-1), torch.rand(20000, generator=g)])
    assert torch.equal(fixed_point_mass(probs, from_bits=True), fixed_point_mass(probs, from_bits=False))


def test_reject_searches_where_it_would_take_too_many_tries():
    """Below REJECT_MIN_TOP_P "reject" would need more than 64 masked sums a token: it draws as the radix select
    does, and the stores are keyed as the default's (greedy and top_p 1 make no rejection draws either)."""
    from pobench.generation import REJECT_MIN_TOP_P, draw_settings, rejection_tries, rejects
    from pobench.generation.static import sample_tokens
    assert rejection_tries(REJECT_MIN_TOP_P + 1e-9) <= 64 < rejection_tries(REJECT_MIN_TOP_P - 1e-3)
    assert rejects(0.8, 0.5) and not rejects(0.8, 0.2) and not rejects(0.0, 0.95) and not rejects(0.8, 1.0)
    rows = torch.randn(8, 3000, generator=torch.Generator().manual_seed(7)) * 3
    keys = torch.randint(0, 1 << 32, (8,), generator=torch.Generator().manual_seed(8))
    assert torch.equal(sample_tokens(rows, 1.0, 0.2, "reject", keys), sample_tokens(rows, 1.0, 0.2, "radix", keys))
    assert not torch.equal(sample_tokens(rows, 1.0, 0.9, "reject", keys), sample_tokens(rows, 1.0, 0.9, "radix", keys))
    for settings in (dict(top_p=0.2), dict(temperature=0.0), dict(top_p=1.0)):
        assert draw_settings(GenerationConfig(top_p_method="reject", **settings)) == {}
    assert draw_settings(GenerationConfig(top_p_method="reject")) == {"top_p_method": "reject"}


def test_select_is_the_sort_where_the_step_is_traced(model, tokenizer, prompts, monkeypatch):
    """model.top_p_method=select with compiled decoding (or CUDA graphs) was a ValueError from the decoder, after
    training: the backend leaves the choice to the decoder there, which takes the sort (the same nucleus)."""
    from pobench.generation.static import DecoderPool
    asked = []
    real = DecoderPool.get
    monkeypatch.setattr(DecoderPool, "get", lambda self, *a, **kw: asked.append(kw["top_p_method"]) or real(
        self, *a, **kw))
    backend = get_backend("transformers", model, tokenizer)
    cfg = dict(n=1, temperature=1.0, top_p=0.9, max_new_tokens=2, fast="on")
    backend.generate(prompts, GenerationConfig(top_p_method="select", **cfg))
    backend.generate(prompts, GenerationConfig(top_p_method="reject", **cfg))
    assert asked == [None, "reject"]


def test_mix32_is_lowbias32():
    from pobench.generation.static import mix32

    def reference(x):                                                  # Wellons' C, in Python's integers
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)
    xs = [0, 1, 0x9E3779B9, (1 << 32) - 1, *torch.randint(0, 1 << 32, (200,)).tolist()]
    assert mix32(torch.tensor(xs)).tolist() == [reference(x) for x in xs]


def test_the_top_p_method_reaches_the_decoder_and_the_plain_path(model, tokenizer, prompts):
    """GenerationConfig.top_p_method: "reject" draws the same tokens on the fast path (eager steps here) and on
    plain `generate`, other tokens than the default, and every default method draws the default's."""
    backend = get_backend("transformers", model, tokenizer)
    cfg = dict(n=2, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5, batch_size=6)
    default = ids(backend.generate(prompts, GenerationConfig(fast="on", **cfg)))
    rejected = ids(backend.generate(prompts, GenerationConfig(fast="on", top_p_method="reject", **cfg)))
    assert ids(backend.generate(prompts, GenerationConfig(fast="off", top_p_method="reject", **cfg))) == rejected
    assert ids(backend.generate(prompts, GenerationConfig(fast="on", top_p_method="radix", **cfg))) == default
    assert rejected != default
    assert {d.top_p_method for d in backend._decoders.decoders.values()} == {"select", "reject", "radix"}
    with pytest.raises(PobenchError, match="top_p_method='nucleus'"):
        GenerationConfig(top_p_method="nucleus")


def test_static_decoder_on_a_peft_model_with_a_trained_adapter(model, tokenizer, prompts):
    import copy

    from peft import LoraConfig, get_peft_model
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():                      # a non-zero adapter, so that it changes the outputs
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    backend = get_backend("transformers", peft_model, tokenizer)
    fast = backend.generate(prompts, GenerationConfig(temperature=0, max_new_tokens=10, **FAST))
    plain = backend.generate(prompts, GenerationConfig(temperature=0, max_new_tokens=10, fast="off"))
    assert ids(fast) == ids(plain)
    assert ids(plain) != ids(get_backend("transformers", model, tokenizer).generate(
        prompts, GenerationConfig(temperature=0, max_new_tokens=10, fast="off")))


@pytest.mark.parametrize("temperature, method", [(0.8, None), (0.8, "kary"), (0.8, "radix"), (0.8, "reject"),
                                                 (0.0, None)])
def test_the_whole_decode_step_traces_as_one_graph(model, tokenizer, prompts, temperature, method):
    """`compile=True` compiles the decode step whole (forward over every layer, sampling, EOS bookkeeping); a graph
    break would split it into pieces and lose the fusion it is for. Dynamo's tracer alone, no code generation."""
    import torch._dynamo as dynamo

    from pobench.generation.hf import left_pad
    from pobench.generation.static import StaticDecoder, grouped_decode_attention_in
    input_ids, mask = left_pad(prompts, tokenizer.pad_token_id, multiple=16)
    decoder = StaticDecoder(model, len(prompts), input_ids.shape[1], 4, [tokenizer.eos_token_id],
                            tokenizer.pad_token_id, temperature, 0.95, compile_step=True,   # compiled lazily: unused
                            top_p_method=method)
    assert decoder.top_p_method == (method or "sort")
    if decoder.keys is not None:
        decoder.keys.random_(0, 1 << 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), grouped_decode_attention_in(decoder.config):      # as _run_step traces it
        decoder._emit(decoder._prefill(input_ids, mask))
        report = dynamo.explain(decoder._decode_step)()
    assert report.graph_count == 1 and report.graph_break_count == 0, report.break_reasons


@pytest.mark.slow
def test_compiled_decode_step_gives_the_eager_steps_tokens(model, tokenizer, prompts):
    """Inductor on the CPU (about a minute to compile each): the compiled step samples the same tokens as the eager
    one, with the nucleus found by sort (the default) or rejection draws."""
    backend = get_backend("transformers", model, tokenizer)
    for temperature, method in ((0.8, "auto"), (0.8, "reject"), (0.0, "auto")):
        cfg = dict(n=2, temperature=temperature, max_new_tokens=12, batch_size=6, fast="on", top_p_method=method)
        eager = ids(backend.generate(prompts, GenerationConfig(**cfg)))
        compiled = ids(backend.generate(prompts, GenerationConfig(**cfg, compile=True)))
        assert compiled == eager
        assert any(d.compile_step for d in backend._decoders.decoders.values())   # the compiled path really ran


def test_selection_is_refused_where_the_step_is_captured_or_compiled(model, tokenizer):
    """"select" asks the host which rows need a full sort: inside a CUDA graph or a compiled step that would fail
    at capture (or break the graph), so the decoder refuses it up front and picks "sort" by itself."""
    from pobench.generation.static import StaticDecoder
    args = (model, 2, 16, 4, [tokenizer.eos_token_id], tokenizer.pad_token_id, 0.8, 0.95)
    assert StaticDecoder(*args).top_p_method == "select"                       # CPU: eager steps
    assert StaticDecoder(*args, use_graph=True).top_p_method == "sort"
    with pytest.raises(ValueError, match="select"):
        StaticDecoder(*args, compile_step=True, top_p_method="select")


def test_blockwise_cumsum_gives_cumsums_sums():
    from pobench.generation.static import blockwise_cumsum
    g = torch.Generator().manual_seed(0)
    wide = torch.rand(3, 5000, dtype=torch.float64, generator=g)               # not a multiple of the block
    assert torch.allclose(blockwise_cumsum(wide, block=1024), wide.cumsum(-1), rtol=1e-12, atol=0)
    narrow = torch.rand(2, 700, generator=g)
    assert torch.equal(blockwise_cumsum(narrow), narrow.cumsum(-1))             # one block: the plain cumsum
    exact = torch.ones(2, 3000, dtype=torch.float64)
    assert torch.equal(blockwise_cumsum(exact, block=512)[:, -1], torch.full((2,), 3000.0, dtype=torch.float64))


def test_grouped_decode_attention_is_sdpa_without_copying_the_cache(model):
    """One query token, 4 query heads on 2 key/value heads: the grouped form gives sdpa's output (which copies
    each key/value head per query head), masked slots included; a query of several tokens goes to sdpa itself."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from pobench.generation.static import grouped_decode_attention
    layer = model.model.layers[0].self_attn
    assert layer.num_key_value_groups == 2
    g = torch.Generator().manual_seed(1)
    rows, slots, dim = 3, 10, layer.head_dim
    key, value = (torch.randn(rows, 2, slots, dim, generator=g) for _ in range(2))
    mask = torch.zeros(rows, 1, 1, slots)
    mask[0, ..., :4] = torch.finfo(torch.float32).min                       # a left-padded row
    mask[:, ..., 7:] = torch.finfo(torch.float32).min                       # slots not written yet
    for tokens in (1, 2):
        query = torch.randn(rows, 4, tokens, dim, generator=g)
        m = mask.expand(rows, 1, tokens, slots)
        want, _ = sdpa_attention_forward(layer, query, key, value, m, scaling=layer.scaling)
        got, _ = grouped_decode_attention(layer, query, key, value, m, scaling=layer.scaling)
        assert got.shape == want.shape == (rows, tokens, 4, dim)
        assert torch.allclose(got, want, atol=1e-6)


def test_decode_steps_attend_grouped_and_leave_sdpa_in_place(model, tokenizer, prompts, monkeypatch):
    from pobench.generation import static
    from pobench.generation.hf import left_pad
    calls = []
    grouped = static.grouped_decode_attention
    monkeypatch.setattr(static, "grouped_decode_attention",
                        lambda *a, **k: calls.append(a[1].shape) or grouped(*a, **k))
    assert model.config._attn_implementation == "sdpa"
    input_ids, mask = left_pad(prompts, tokenizer.pad_token_id, multiple=16)
    decoder = static.StaticDecoder(model, len(prompts), input_ids.shape[1], 5, [], tokenizer.pad_token_id, 0.0, 1.0)
    decoder.generate(input_ids, mask)
    assert len(calls) == 4 * len(model.model.layers)                        # every decode step's every layer
    assert all(shape[2] == 1 for shape in calls)                            # not the prefill
    assert model.config._attn_implementation == "sdpa"                      # training attends as before
