"""Lockstep decode under expert dispatch across data-parallel groups (glm52.lockstep) on two CPU
ranks (gloo, dp = ep = 2): greedy tokens equal one process's, plain and speculative, with ragged
batches, groups that finish at different steps and a group without requests; each decode step
reads the device once (its emitted tokens) and dispatches by capacity; a rank that fails in the
middle of decoding fails every rank instead of hanging them."""

from __future__ import annotations

import pytest
import torch
from parallel_testing import results, spawn

from glm52 import GLM52Config, GLM52ForCausalLM, parallel
from glm52.checkpoint import init_random_, save_checkpoint
from glm52.engine import Engine
from glm52.kv_cache import BlockAllocator, CacheFullError
from glm52.parallel import ParallelConfig, init_parallel

TINY = dict(num_hidden_layers=4, first_k_dense_replace=1, index_topk=8)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18]]  # group 0 gets 1 request, group 1 gets 2
NEW_TOKENS = 9


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    config = GLM52Config.preset("tiny").replace(**TINY)
    return save_checkpoint(init_random_(GLM52ForCausalLM(config), seed=5), tmp_path_factory.mktemp("lockstep") / "fp32")


class _FailingAllocator(BlockAllocator):
    """Full at its 6th reservation: prefill reserves twice (the chunk, the MTP catch-up), a
    speculative round twice (the draft, the verification)."""

    calls, lockstep, failed_after = 0, None, None

    def reserve(self, seq_id: int, tokens: int) -> None:
        self.calls += 1
        if self.calls == 6:
            self.failed_after = self.lockstep.next_forward
            raise CacheFullError("the test's allocator is full")
        super().reserve(seq_id, tokens)


def _case(model, prompts, spec_steps: int, compiled: str | None = None) -> dict:
    engine = Engine(model, cache_bytes=8 << 20, spec_steps=spec_steps, compiled_decode=compiled)
    engine.count_step_ops = compiled is None  # the counter sees compiled regions as opaque calls
    result = parallel.generate(engine, prompts, NEW_TOKENS)
    engine.allocator.check()
    lockstep = engine.lockstep
    return dict(tokens=None if result is None else result.tokens, syncs=[c.syncs for c in engine.step_counts],
                steps=len(engine.step_counts), free=engine.allocator.num_free == engine.allocator.num_blocks,
                forwards=lockstep and (lockstep.forwards_run, lockstep.forwards_served),
                prepared=engine.graphs and sorted(map(str, engine.graphs.captured)))


def _worker(rank: int, ckpt) -> dict:
    handle = init_parallel(ParallelConfig(dp=2, ep=2), timeout_s=60)
    model = GLM52ForCausalLM.from_pretrained(ckpt, dtype=torch.float32, parallel=handle)
    out = {(n, len(p)): _case(model, p, n) for n in (0, 3) for p in (PROMPTS, PROMPTS[:1])}
    # Compiled forwards (fullgraph, gloo collectives inside): the peers prepare the same shapes.
    out["compiled"] = _case(model, PROMPTS, 3, compiled="eager")
    # Rank 1's cache runs out in the middle of its second speculative round, after the draft
    # forward's capacity rounds: it serves the rest of that step, then every rank raises.
    engine = Engine(model, cache_bytes=8 << 20, spec_steps=3)
    if rank == 1:
        engine.allocator = _FailingAllocator(engine.allocator.num_blocks)
        engine.allocator.lockstep = engine.lockstep
    try:
        parallel.generate(engine, [[3] * 60, [4] * 60], 30)
        out["failure"] = None
    except CacheFullError as e:
        out["failure"] = str(e)
    if rank == 1:
        out["failed_after_forwards"] = engine.allocator.failed_after
    return out


def test_lockstep_decode_matches_one_process_without_host_reads(ckpt, tmp_path):
    one = GLM52ForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    want = {(n, len(p)): _case(one, p, n)["tokens"] for n in (0, 3) for p in (PROMPTS, PROMPTS[:1])}
    ranks = results(spawn(2, _worker, ckpt, out=tmp_path, timeout=300))
    for key, tokens in want.items():
        lead, other = ranks[0][key], ranks[1][key]
        assert lead["tokens"] == tokens, key
        assert other["tokens"] is None
        for r in (lead, other):
            assert r["free"], key
            # One host read per decode step (the emitted tokens): no exact dispatch while decoding.
            assert r["syncs"] == [1] * r["steps"], (key, r["syncs"])
        # Both ranks took part in every decode forward (run with tokens, or served without), the
        # group without requests (one prompt: rank 0) included.
        assert sum(lead["forwards"]) == sum(other["forwards"]) > 0, key
    lead, other = ranks[0]["compiled"], ranks[1]["compiled"]
    assert lead["tokens"] == want[(3, len(PROMPTS))]
    assert lead["prepared"] == other["prepared"] and lead["prepared"], (lead["prepared"], other["prepared"])
    for r in ranks:
        assert r["failure"] is not None and "rank 1: CacheFullError: the test's allocator" in r["failure"], r
    assert ranks[1]["failed_after_forwards"] == 1  # the draft; the verification was served


def test_lockstep_schedule_follows_the_step():
    """The schedule every peer follows: forwards, their MoE layers and capacities."""
    config = GLM52Config.preset("tiny").replace(**TINY)
    handle = parallel.ParallelHandle(ParallelConfig(tp=2, dp=2, ep=4), rank=0)
    model = parallel.build_parallel_model(config, handle)
    from glm52.lockstep import LockstepDecode

    plain, spec = LockstepDecode(model, 0), LockstepDecode(model, 3)
    main = config.num_hidden_layers - config.first_k_dense_replace  # MoE layers of the target
    assert plain.forwards() == [(list(range(main)), 1)]
    assert spec.forwards() == [([main] * 3, 4), (list(range(main)), 4)]
    spec.batch = 4  # a batch bucket of 4 sequences x 4 tokens over 2 TP ranks: 8 tokens per rank
    per = config.n_routed_experts // 4  # experts per rank; a token sends at most min(k, per) rows to one
    assert spec.capacity(4) == 8 and spec.capacity(1) == 2
    assert spec.rounds(4, [main]) == [(main, 8 * min(config.num_experts_per_tok, per))]
    assert spec.rounds(1, list(range(main))) == [(i, 2 * min(config.num_experts_per_tok, per)) for i in range(main)]
