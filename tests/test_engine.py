"""The generation engine: speculative decoding emits exactly what plain decoding would (greedy) or
is distributed as the target (sampling); caches never leak blocks."""

from __future__ import annotations

import pytest
import torch

from glm52 import GLM52Config, GLM52ForCausalLM, synthetic
from glm52.checkpoint import init_random_
from glm52.engine import Engine, SamplingParams
from glm52.kv_cache import BlockAllocator, CacheFullError, PagedKVCache


def random_model(seed: int = 0, **overrides) -> GLM52ForCausalLM:
    return init_random_(GLM52ForCausalLM(GLM52Config.preset("tiny").replace(**overrides)), seed).eval()


def bigram_model(seed: int = 0, draft_noise: float = 0.0, **overrides) -> GLM52ForCausalLM:
    """A target whose MTP layer is a drafter of known quality (see glm52.synthetic)."""
    return synthetic.bigram_model(GLM52Config.preset("tiny").replace(**overrides), seed, draft_noise)


def prompts(config: GLM52Config, lengths, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, config.vocab_size, (n,), generator=g).tolist() for n in lengths]


def plain_greedy(model: GLM52ForCausalLM, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding by recomputing the whole prefix each step: no cache, no engine."""
    ids, out = torch.tensor([prompt]), []
    with torch.no_grad():
        for _ in range(new_tokens):
            out.append(int(model(ids)[0, -1].argmax()))
            ids = torch.cat((ids, torch.tensor([[out[-1]]])), dim=1)
    return out


@pytest.mark.parametrize("make,noise", [(random_model, None), (bigram_model, 0.0), (bigram_model, 0.02)],
                         ids=["random-mtp", "oracle-mtp", "noisy-mtp"])
def test_greedy_speculative_equals_plain_greedy(make, noise):
    model = make(0) if noise is None else make(0, draft_noise=noise)
    batch = prompts(model.config, (5, 37, 18))  # 37 > index_topk (16): selection really drops tokens
    want = [plain_greedy(model, p, 14) for p in batch]
    assert Engine(model, spec_steps=0).generate(batch, 14).tokens == want
    for n in (1, 3):
        result = Engine(model, spec_steps=n).generate(batch, 14)
        assert result.tokens == want, f"spec_steps={n}"
        if noise == 0.0:  # a perfect drafter: every draft accepted
            assert result.accepted_per_step == pytest.approx(n + 1, abs=0.5)
        if noise == 0.02 and n == 3:  # a fair drafter: some drafts accepted, some rolled back
            assert 1.2 < result.accepted_per_step < 3.8


def test_batch_composition_does_not_change_greedy_output():
    model = bigram_model(1, draft_noise=0.02)
    batch = prompts(model.config, (40, 3, 25, 9), seed=2)
    together = Engine(model, spec_steps=2).generate(batch, 10).tokens
    alone = [Engine(model, spec_steps=2).generate([p], 10).tokens[0] for p in batch]
    assert together == alone


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token of probability zero"
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat.double() / 2))


@pytest.mark.parametrize("spec_steps", [0, 2])
def test_sampled_tokens_follow_the_target_distribution(spec_steps):
    """The second generated token (the first one speculation decides) against the exact marginal
    Σ_{x1} p(x1 | prompt) p(x2 | prompt, x1) of the target, by a chi-square test."""
    model = bigram_model(3, draft_noise=0.5, vocab_size=12, index_topk=8)
    prompt = prompts(model.config, (10,), seed=4)[0]
    params = SamplingParams(temperature=1.0, top_p=1.0, seed=11)
    with torch.no_grad():
        p1 = torch.softmax(model(torch.tensor([prompt]))[0, -1].double(), -1)
        seconds = torch.stack([torch.softmax(model(torch.tensor([prompt + [x]]))[0, -1].double(), -1)
                               for x in range(model.config.vocab_size)])
    marginal = p1 @ seconds
    engine = Engine(model, spec_steps=spec_steps)
    result = engine.generate([prompt] * 1000, 2, params)
    second = torch.tensor([t[1] for t in result.tokens])
    counts = torch.bincount(second, minlength=model.config.vocab_size).double()
    assert chi_square_pvalue(counts, marginal) > 1e-3
    if spec_steps:
        assert 1.0 < result.accepted_per_step <= spec_steps + 1


def test_same_seed_same_output_and_seeds_differ():
    model = bigram_model(5, draft_noise=0.4)
    batch = prompts(model.config, (8, 21), seed=6)
    run = lambda seed: Engine(model, spec_steps=3).generate(batch, 12, SamplingParams(1.0, 0.9, 0, seed)).tokens
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_eos_stops_a_sequence_and_caches_do_not_leak():
    model = bigram_model(7, draft_noise=0.02)
    batch = prompts(model.config, (6, 30, 12), seed=8)
    free_run = Engine(model, spec_steps=2).generate(batch, 10).tokens
    eos = free_run[1][4]
    engine = Engine(model, spec_steps=2, eos_token_ids=[eos])
    stopped = engine.generate(batch, 10).tokens
    for full, cut in zip(free_run, stopped):
        end = full.index(eos) + 1 if eos in full else len(full)
        assert cut == full[:end]
    for seed in range(3):  # a run of requests: every block returns to the pool
        engine.generate(prompts(model.config, (3 + seed * 20, 40, 7), seed=seed), 9,
                        SamplingParams(temperature=0.8, seed=seed))
        assert engine.allocator.num_free == engine.allocator.num_blocks and not engine.allocator.tables
        engine.allocator.check()


def test_cache_too_small_is_a_clear_error_and_releases_everything():
    model = random_model(0)
    engine = Engine(model, cache_bytes=2 * PagedKVCache.bytes_per_block(model.config, torch.float32), spec_steps=1)
    with pytest.raises(CacheFullError, match="more blocks"):
        engine.generate(prompts(model.config, (100, 90)), 4)
    assert engine.allocator.num_free == engine.allocator.num_blocks


def test_block_allocator_accounting():
    alloc = BlockAllocator(4)
    alloc.reserve(0, 65)
    alloc.reserve(1, 64)
    assert alloc.num_free == 1 and len(alloc.tables[0]) == 2
    assert alloc.slots(0, torch.tensor([0, 63, 64, -1])).tolist() == [0, 63, alloc.tables[0][1] * 64, -1]
    with pytest.raises(CacheFullError):
        alloc.reserve(1, 64 * 3)
    assert alloc.num_free == 1  # all or nothing
    with pytest.raises(IndexError, match="past its reserved blocks"):
        alloc.slots(1, torch.tensor([64]))
    alloc.truncate(0, 10)
    alloc.release(1)
    alloc.check()
    assert alloc.num_free == 3


@pytest.mark.parametrize("kwargs,message", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"prompts": [[]]}, "prompt 0 is empty"),
    ({"prompts": []}, "non-empty"),
    ({"prompts": [[10**6]]}, "outside"),
])
def test_bad_requests_are_rejected(kwargs, message):
    engine = Engine(random_model(0), spec_steps=1)
    args = {"prompts": [[1, 2, 3]], "max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        engine.generate(**args)
