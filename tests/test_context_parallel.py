"""Context parallelism (DESIGN §6) on CPU ranks over gloo: with the caches block-striped over the cp
ranks of a tensor-parallel group, logits equal the single-process model's within fp32 rounding and
greedy generation (chunked prefill, plain and speculative decoding) gives the same tokens, at
contexts of several 64-token blocks and far longer than ``index_topk``; each rank holds only its
blocks; bad layouts fail with clear errors."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
from model_testing import max_rel_err
from parallel_testing import results, spawn

from glm52 import GLM52Config, GLM52ForCausalLM
from glm52.checkpoint import init_random_, save_checkpoint
from glm52.cli import main
from glm52.context_parallel import ContextParallel, ContextParallelCache, StripedBlockAllocator
from glm52.engine import Engine
from glm52.kv_cache import BLOCK_SIZE, BlockAllocator, CacheFullError, CacheView, PagedKVCache
from glm52.parallel import ParallelConfig, ParallelHandle, init_parallel
from glm52 import parallel

# index_topk 8 against contexts up to 200 positions (4 blocks): the selection drops most keys and
# spans every rank's stripes; layer 3 shares layer 2's top-k.
TINY = dict(num_hidden_layers=4, first_k_dense_replace=1, index_topk=8)
# The attention kernels' sizes (576-wide MLA rows, 128-wide FP8 indexer keys): the kernel cache formats.
KERNEL_SIZES = dict(TINY, kv_lora_rank=512, qk_rope_head_dim=64, index_head_dim=128, qk_nope_head_dim=32,
                    v_head_dim=32, q_lora_rank=64, index_n_heads=4, indexer_precision="fp8")
PREFILL_TOKENS = 200
PROMPT_LENGTHS = (150, 70, 5)  # ragged: 3, 2 and 1 blocks
NEW_TOKENS = 5
# cp < tp (two stripes, each on two ranks); cp = tp in each of two data-parallel groups with expert
# dispatch (two ranks alone, cp = tp = 2: the torchrun test below).
LAYOUTS = [dict(tp=4, cp=2), dict(tp=2, dp=2, ep=4, cp=2)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    config = GLM52Config.preset("tiny").replace(**TINY)
    return save_checkpoint(init_random_(GLM52ForCausalLM(config), seed=3), tmp_path_factory.mktemp("cp") / "fp32")


def _ids(vocab: int, batch: int, tokens: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(11))


def _prompts(vocab: int) -> list[list[int]]:
    ids = _ids(vocab, len(PROMPT_LENGTHS), max(PROMPT_LENGTHS))
    return [ids[i, :n].tolist() for i, n in enumerate(PROMPT_LENGTHS)]


def _outputs(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill logits and the MTP layer's logits (h_t paired with token t+1), through throw-away caches."""
    with torch.no_grad():
        hidden = model.hidden_states(ids)
        _, mtp, _ = model.mtp(hidden[:, :-1], ids[:, 1:])
        return model.lm_head(hidden), mtp


def _generate(model, prompts, spec_steps: int):
    """Greedy tokens through the engine (prefill in 64-token chunks: the cached prefix crosses ranks)."""
    engine = Engine(model, cache_bytes=8 << 20, spec_steps=spec_steps, prefill_chunk_tokens=BLOCK_SIZE)
    result = parallel.generate(engine, prompts, NEW_TOKENS)
    engine.allocator.check()
    assert engine.allocator.num_free == engine.allocator.num_blocks and not engine.allocator.tables
    return None if result is None else result.tokens


def _reference(ckpt, dtype: torch.dtype) -> dict:
    """One process's outputs, computed once by the test (not by every rank)."""
    config = GLM52Config.from_pretrained(ckpt)
    model = GLM52ForCausalLM.from_pretrained(ckpt, dtype=dtype)
    logits, mtp = _outputs(model, _ids(config.vocab_size, 2, PREFILL_TOKENS))
    return dict(logits=logits, mtp=mtp, tokens={n: _generate(model, _prompts(config.vocab_size), n) for n in (0, 2)})


def _layouts_worker(rank: int, ckpt, layouts: list[dict], dtype: torch.dtype, ref: dict):
    config = GLM52Config.from_pretrained(ckpt)
    ids, prompts = _ids(config.vocab_size, 2, PREFILL_TOKENS), _prompts(config.vocab_size)
    out = []
    for layout in layouts:
        handle = init_parallel(ParallelConfig(**layout), timeout_s=60)
        model = GLM52ForCausalLM.from_pretrained(ckpt, dtype=dtype, parallel=handle)
        rows = list(parallel.share(ids.shape[0], handle))
        logits, mtp = _outputs(model, ids[rows])
        entry = dict(layout=layout, logits=max_rel_err(logits, ref["logits"][rows]),
                     mtp=max_rel_err(mtp, ref["mtp"][rows]),
                     cache=type(model.model.view(ids[rows], None).cache).__name__)
        for n in (0, 2):
            got = _generate(model, prompts, n)
            entry[f"tokens_equal_spec{n}"] = None if got is None else got == ref["tokens"][n]
        out.append(entry)
    return out


def test_context_parallel_matches_single_process(ckpt, tmp_path):
    ref = _reference(ckpt, torch.float32)
    reports = results(spawn(4, _layouts_worker, ckpt, LAYOUTS, torch.float32, ref, out=tmp_path))
    for rank, per_rank in enumerate(reports):
        for r in per_rank:
            assert r["cache"] == "ContextParallelCache", r
            assert r["logits"] <= 1e-5 and r["mtp"] <= 1e-5, r  # LSE merge: fp32 rounding only
            for n in (0, 2):
                assert r[f"tokens_equal_spec{n}"] is (True if rank == 0 else None), r


def _kernel_layer_worker(rank: int, tokens: int):
    """One full (indexer) attention layer of a BF16 model with the kernels' cache layouts, the same
    input on one process and on each cp rank (every rank holds all heads here: tp = cp, heads unsplit)."""
    config = GLM52Config.preset("tiny").replace(**KERNEL_SIZES)
    model = init_random_(GLM52ForCausalLM(config), seed=5).to(torch.bfloat16)
    attn = model.model.layers[0].self_attn
    n = torch.randn(2, tokens, config.hidden_size, generator=torch.Generator().manual_seed(7)).bfloat16()
    handle = init_parallel(ParallelConfig(tp=2, cp=2), timeout_s=60)
    views = [CacheView.contiguous(config, 2, tokens, torch.bfloat16, "cpu"),
             ContextParallel(handle).contiguous_view(config, 2, tokens, torch.bfloat16, "cpu")]
    outs, chosen, host_reads = [], [], []

    def spy(name):  # Python-level host reads (tolist, item, bool, int) of the layer's forward
        real = getattr(torch.Tensor, name)
        return lambda self, *a, **k: host_reads.append(name) or real(self, *a, **k)

    with torch.no_grad():
        for view in views:
            assert view.cache.format == "bf16"
            rope = model.model.rope(view)
            with mock.patch.multiple(torch.Tensor, **{n: spy(n) for n in ("tolist", "item", "__bool__", "__int__")}):
                out, slots = attn(n, *rope, view, None)
            # the chosen slots as positions (−1: not here), via the view's position -> slot map
            slot_pos = torch.full((view.cache.num_slots + 1,), -1)
            held = view.context_slots >= 0
            slot_pos[view.context_slots[held].long()] = torch.arange(tokens).expand(2, -1)[held]
            outs.append(out.float())
            chosen.append(torch.where(slots >= 0, slot_pos[slots.clamp_min(0).long()], -1))
    return max_rel_err(outs[1], outs[0]), chosen[0], chosen[1], host_reads


def test_kernel_cache_formats_under_context_parallelism(tmp_path):
    """The kernels' cache layouts (BF16 MLA rows, FP8 indexer keys): each rank's fused paged top-k over
    its stripe, candidates rescored from the FP8 keys, merged into the global top-k; sparse_mla_decode's
    partials (BF16, hence the tolerance) merged by LSE. A whole random BF16 model is chaotic across
    layouts (TP alone moves its logits by O(1)), so the check is one layer against one process."""
    tokens = 3 * BLOCK_SIZE + 10
    reports = results(spawn(2, _kernel_layer_worker, tokens, out=tmp_path))
    errors = [r[0] for r in reports]
    assert max(errors) < 1e-2, errors
    want = reports[0][1]
    mine = [r[2] for r in reports]
    union = torch.where(mine[0] >= 0, mine[0], mine[1])  # each position is held by exactly one rank
    assert torch.equal(torch.where(mine[0] >= 0, mine[1], -1), torch.full_like(union, -1))
    assert torch.equal(union, want)  # the global selection: the same positions in the same order
    assert [r[3] for r in reports] == [[], []]  # the merges and collectives read nothing on the host
    assert (want[:, BLOCK_SIZE:] >= 0).all()  # index_topk 8 of up to 202 keys: a full selection


# ---- each rank holds its stripe -------------------------------------------------------------------------
def _cp(cp: int, rank: int, tp: int | None = None) -> ContextParallel:
    """A rank's context-parallel place without processes (no group: enough to build caches)."""
    return ContextParallel(ParallelHandle(ParallelConfig(tp=tp or cp, cp=cp), rank))


@pytest.mark.parametrize("cp", [2, 4])
def test_each_rank_holds_only_its_blocks(cp):
    config = GLM52Config.preset("tiny").replace(**TINY)
    batch, tokens = 2, 5 * BLOCK_SIZE - 3  # 5 blocks per sequence
    whole = CacheView.contiguous(config, batch, tokens, torch.float32, "cpu")
    whole_bytes = PagedKVCache.bytes_per_block(config, torch.float32) * whole.cache.num_blocks
    total = 0
    for rank in range(cp):
        view = _cp(cp, rank).contiguous_view(config, batch, tokens, torch.float32, "cpu")
        mine = [j for j in range(5) if j % cp == rank]
        assert isinstance(view.cache, ContextParallelCache) and view.cache.num_blocks == batch * len(mine)
        assert (view.block_table >= 0).sum(1).tolist() == [len(mine)] * batch
        held = view.slots >= 0  # the positions this rank stores: exactly those of its blocks
        assert torch.equal(held, (view.positions // BLOCK_SIZE) % cp == rank)
        assert view.slots[held].unique().numel() == batch * len([p for p in range(tokens) if p // 64 % cp == rank])
        total += PagedKVCache.bytes_per_block(config, torch.float32) * view.cache.num_blocks
    assert total == whole_bytes  # the ranks' stripes add up to one replica: ~1/cp each


def test_striped_allocator_reserves_only_its_blocks_and_fails_alike_on_every_rank():
    cp, blocks = 2, 3
    ranks = [StripedBlockAllocator(blocks, r, cp) for r in range(cp)]
    for alloc in ranks:
        alloc.reserve(0, 5 * BLOCK_SIZE)  # entries 0..4: rank 0 holds 0, 2, 4; rank 1 holds 1, 3
    assert [a.tables[0] for a in ranks] == [[0, -1, 1, -1, 2], [-1, 0, -1, 1, -1]]
    assert [a.num_free for a in ranks] == [0, 0]  # the fewest free of any rank: the same everywhere
    assert [a.blocks_for(5 * BLOCK_SIZE) for a in ranks] == [3, 3]
    slots = ranks[1].slots(0, torch.tensor([0, 64, 65, 130, 200, -1]))
    assert slots.tolist() == [-1, 0, 1, -1, 64 + 200 - 192, -1]
    for alloc in ranks:  # rank 1 has a free block, rank 0 has none: both refuse
        with pytest.raises(CacheFullError, match="context-parallel rank 0"):
            alloc.reserve(1, 1)
        alloc.truncate(0, 2 * BLOCK_SIZE)
        alloc.check()
    assert [a.tables[0] for a in ranks] == [[0, -1], [-1, 0]] and [a.num_free for a in ranks] == [2, 2]
    for alloc in ranks:
        alloc.release(0)
        alloc.check()
        assert alloc.num_free == blocks
    # The same budget holds cp times the context of one replica.
    assert BlockAllocator(3).blocks_for(5 * BLOCK_SIZE) == 5 and ranks[0].blocks_for(6 * BLOCK_SIZE) == 3


# ---- errors ---------------------------------------------------------------------------------------------
def test_cp_must_divide_tp():
    with pytest.raises(ValueError, match=r"cp \(3\) must divide tp \(2\)"):
        ParallelConfig(tp=2, cp=3)
    with pytest.raises(ValueError, match=r"cp \(2\) must divide tp \(1\)"):
        ParallelConfig(dp=2, ep=2, cp=2)
    with pytest.raises(ValueError, match="cp must be a positive integer"):
        ParallelConfig(tp=2, cp=0)


def test_cuda_graphs_are_refused_under_context_parallelism():
    model = init_random_(GLM52ForCausalLM(GLM52Config.preset("tiny").replace(**TINY)), seed=0)
    model.model.context_parallel = _cp(2, 0)
    with pytest.raises(ValueError, match=r"cuda_graphs=True is not supported with context parallelism"):
        Engine(model, cache_bytes=1 << 20, cuda_graphs=True)


# ---- the command line ------------------------------------------------------------------------------------
def _generate_args(ckpt, prompt: list[int]) -> list[str]:
    return ["generate", "--checkpoint", str(ckpt), "--prompt-ids", ",".join(map(str, prompt)), "--prompt-ids", "7,8,9",
            "--max-new-tokens", "4", "--temperature", "0", "--dtype", "float32", "--spec-steps", "2", "--json"]


def test_torchrun_generate_with_cp_equals_one_process(ckpt, capsys):
    from test_parallel_cli import torchrun

    args = _generate_args(ckpt, _prompts(GLM52Config.from_pretrained(ckpt).vocab_size)[0])  # 150 tokens: 3 blocks
    assert main(args) == 0
    want = json.loads(capsys.readouterr().out)
    run = torchrun(2, *args, "--tp", "2", "--cp", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["tokens"] == want["tokens"], run.stdout


def test_generate_cp_not_dividing_tp_is_an_error(ckpt, capsys):
    assert main([*_generate_args(ckpt, [1, 2]), "--tp", "2", "--cp", "3"]) == 2
    assert "cp (3) must divide tp (2)" in capsys.readouterr().err


def test_planner_cache_per_gpu_is_one_ranks_stripe():
    """``glm52 plan --cp``'s cache per GPU is what a cp rank's allocator takes for the sequence."""
    from glm52.planner import plan

    config, context = GLM52Config.preset("glm-5.2"), 1 << 20
    planned = plan(config, weights="fp8", kv="fp8", context=context, tp=8, ep=8, cp=8)
    blocks = StripedBlockAllocator(1, 0, 8).blocks_for(context)  # the most any rank holds
    assert blocks * PagedKVCache.bytes_per_block(config, torch.bfloat16, "fp8") == planned["cache_bytes_per_gpu"]
    assert planned["cache_tokens_per_gpu"] == context // 8
