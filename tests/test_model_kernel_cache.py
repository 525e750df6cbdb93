"""The model through the attention kernels: GLM-5.2 latent sizes (576-wide MLA rows, 128-wide FP8
indexer keys) in BF16, so the paged caches use the kernels' byte formats and every attention read
goes through indexer_topk_paged and sparse_mla_decode."""

from __future__ import annotations

import pytest
import torch
from model_testing import max_rel_err

from glm52 import GLM52Config, GLM52ForCausalLM
from glm52.checkpoint import init_random_
from glm52.engine import Engine
from glm52.kv_cache import BlockAllocator, CacheView, PagedKVCache

ATTENTION_SIZES = dict(kv_lora_rank=512, qk_rope_head_dim=64, index_head_dim=128, qk_nope_head_dim=32, v_head_dim=32,
                       num_attention_heads=2, num_key_value_heads=2, q_lora_rank=64, index_n_heads=4, num_hidden_layers=5,
                       indexer_precision="fp8")


@pytest.fixture(scope="module")
def model():
    config = GLM52Config.preset("tiny").replace(**ATTENTION_SIZES)
    m = init_random_(GLM52ForCausalLM(config), 0).eval()
    for p in m.parameters():
        p.data = p.data.to(torch.bfloat16)
    return m


def ids(config, b, t, seed=0):
    return torch.randint(0, config.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def test_kernel_formats_are_chosen_for_glm52_sizes(model):
    view = model.model.view(ids(model.config, 1, 3), None)
    assert view.cache.format == "bf16" and view.cache.latent[0].dtype == torch.uint8
    tiny = GLM52Config.preset("tiny")
    assert PagedKVCache(tiny, 2, torch.float32, "cpu").format == "model"
    with pytest.raises(ValueError, match="attention kernels' contract"):
        PagedKVCache(tiny, 2, torch.bfloat16, "cpu", format="fp8")


def two_caches(model, b, t):
    """A kernel-format (BF16) and a model-format view of the same throw-away prefill cache."""
    kernel = CacheView.contiguous(model.config, b, t, torch.bfloat16, "cpu")
    plain = CacheView.contiguous(model.config, b, t, torch.bfloat16, "cpu")
    plain.cache = PagedKVCache(model.config, plain.cache.num_blocks, torch.bfloat16, "cpu", format="model",
                               shared_storage=True)
    return kernel, plain


def test_attention_layer_through_the_kernels_matches_plain_pytorch(model):
    """One full (indexer) layer, the same input: cache writes, FP8 indexer logits, top-k and sparse
    attention through the kernels against plain PyTorch over the model-format cache."""
    b, t = 2, 48  # 48 > index_topk (16): selection drops tokens
    n = torch.randn(b, t, model.config.hidden_size, generator=torch.Generator().manual_seed(5)).bfloat16()
    attn = model.model.layers[0].self_attn
    outs, picks = [], []
    with torch.no_grad():
        for view in two_caches(model, b, t):
            cos, sin = model.model.rope(view)
            out, topk = attn(n, cos, sin, view, None)
            outs.append(out.float())
            picks.append(topk)
    assert max_rel_err(*outs) < 2e-2  # BF16 rounding of the attention output
    same = [len(set(x.tolist()) & set(y.tolist())) / len(set(y.tolist()))
            for x, y in zip(picks[0].flatten(0, 1), picks[1].flatten(0, 1))]
    assert sum(same) / len(same) > 0.97  # the same FP8 recipe, fp32 sums in another order


def test_model_prefill_through_the_kernels(model):
    """Whole model: BF16 differences between the two attention paths grow layer by layer and can
    flip an MoE routing or a top-k choice, so tokens are compared by their typical error."""
    x = ids(model.config, 2, 40)
    with torch.no_grad():
        kernel, plain = (model(x, view).float() for view in two_caches(model, 2, 40))
    per_token = (kernel - plain).abs().amax(-1) / plain.abs().amax(-1)
    assert per_token[:, :5].max() < 1e-2  # before any difference reaches the residual stream
    assert per_token.median() < 2e-2


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_decode_from_the_paged_cache_matches_prefill(model, fmt):
    """Prefill 30 tokens into scattered blocks, then decode 3 + 4 tokens (the second step verifies
    several tokens at once, as MTP does): the logits match one prefill over the same cache format."""
    x = ids(model.config, 1, 37, seed=3)
    cache = PagedKVCache(model.config, 8, torch.bfloat16, "cpu", format=fmt)
    alloc = BlockAllocator(8)
    alloc.reserve(99, 1)  # so sequence 0's blocks are not 0, 1, ...
    alloc.reserve(0, 37)
    whole = CacheView.contiguous(model.config, 1, 37, torch.bfloat16, "cpu")
    whole.cache = PagedKVCache(model.config, whole.cache.num_blocks, torch.bfloat16, "cpu", format=fmt,
                               shared_storage=True)
    got = []
    with torch.no_grad():
        want = model(x, whole).float()
        for start, end in ((0, 30), (30, 33), (33, 37)):
            positions = torch.arange(start, end).view(1, -1)
            got.append(model(x[:, start:end], CacheView.for_sequences(cache, alloc, [0], positions)).float())
    got = torch.cat(got, dim=1)
    assert max_rel_err(got[:, :30], want[:, :30]) < 1e-2  # the same prefill, only other blocks
    per_token = (got - want).abs().amax(-1) / want.abs().amax(-1)
    assert per_token[:, 30:].median() < 2e-2


def test_engine_runs_speculative_decoding_on_kernel_caches(model):
    prompts = [ids(model.config, 1, n, seed=n)[0].tolist() for n in (9, 35)]
    engine = Engine(model, cache_bytes=16 << 20, spec_steps=2)
    assert engine.cache.format == "bf16"
    plain = Engine(model, cache_bytes=16 << 20, spec_steps=0).generate(prompts, 6)
    spec = engine.generate(prompts, 6)
    assert [len(t) for t in spec.tokens] == [6, 6] or any(model.config.eos_token_id[0] in t for t in spec.tokens)
    # BF16 activations: a different batch shape may round differently, so compare what greedy
    # decoding promises robustly, the first token, and that most tokens agree.
    assert [t[0] for t in spec.tokens] == [t[0] for t in plain.tokens]
    agree = sum(a == b for s, p in zip(spec.tokens, plain.tokens) for a, b in zip(s, p))
    assert agree >= 0.5 * sum(map(len, plain.tokens))
    assert engine.allocator.num_free == engine.allocator.num_blocks
