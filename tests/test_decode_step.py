"""The decode step a GPU can run at full speed (DESIGN §6b): host syncs counted by a dispatch-mode
counter (≤ 1 per plain step, ≤ 2 per speculative round), slots looked up on the device, a
sync-free grouped path for high-precision experts, and a step function that compiles with
``torch.compile(fullgraph=True)`` (the CPU proof that CUDA-graph capture needs no host sync)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glm52 import GLM52Config, GLM52ForCausalLM, synthetic
from glm52.checkpoint import init_random_, quantize_checkpoint, save_checkpoint
from glm52.counters import OpCounter
from glm52.engine import Engine, SamplingParams
from glm52.graphs import CompiledStep, DecodeGraphs
from glm52.kv_cache import BlockAllocator, paged_slots
from glm52.layers import Experts
from conftest import poisoned
from glm52_ext import ops, reference

SMALL = dict(num_hidden_layers=4, first_k_dense_replace=1)  # dense, MoE, IndexShare and MTP layers, fast
KERNEL_SIZES = dict(kv_lora_rank=512, qk_rope_head_dim=64, index_head_dim=128, qk_nope_head_dim=32, v_head_dim=32,
                    num_attention_heads=2, num_key_value_heads=2, q_lora_rank=64, index_n_heads=4,
                    indexer_precision="fp8")


def tiny(**overrides) -> GLM52ForCausalLM:
    return synthetic.bigram_model(GLM52Config.preset("tiny").replace(**SMALL, **overrides), 0, draft_noise=0.02)


@pytest.fixture(scope="module")
def kernel_model():
    """GLM-5.x attention sizes in BF16: the kernel cache formats (indexer_logits_paged, sparse_mla_decode)."""
    model = init_random_(GLM52ForCausalLM(GLM52Config.preset("tiny").replace(**SMALL, **KERNEL_SIZES)), 0).eval()
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    return model


def prompts(config, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, config.vocab_size, (n,), generator=g).tolist() for n in lengths]


# ---- the counter ------------------------------------------------------------------------------


def test_counter_counts_host_reads_and_skips_views():
    x = torch.arange(12.0).view(3, 4)
    with OpCounter() as counter:
        y = x.reshape(-1)[2:]  # views only
        assert counter.counts.ops == 0
        z = y * 2  # one op
        int(z[0])  # _local_scalar_dense
        bool((z > 3).any())  # gt, any: ops; is_nonzero or item: a sync
        z[z > 5]  # boolean-mask index
        z.nonzero()
        z.tolist()  # no dispatcher op on the CPU: caught at the Python level
        torch.repeat_interleave(torch.tensor([1, 2]))
    c = counter.counts
    assert c.syncs == 6, c.sync_sites
    assert {"_local_scalar_dense", "index with a boolean mask", "nonzero", "Tensor.tolist",
            "repeat_interleave without output_size"} <= set(c.sync_sites)
    assert c.op_names["mul"] == 1 and "view" not in c.op_names and "t" not in c.op_names


def test_counter_attributes_ops_to_layers():
    model = tiny()
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    with torch.no_grad(), OpCounter(model) as counter:
        model(ids)
    layers = model.config.num_hidden_layers
    assert sorted(counter.counts.per_layer) == list(range(layers))  # MTP layer not run by forward()
    assert all(counter.counts.per_layer[i] > 10 for i in range(layers))
    assert counter.counts.ops > sum(counter.counts.per_layer.values())  # embedding, norm, lm_head outside


# ---- the engine's step ------------------------------------------------------------------------


@pytest.mark.parametrize("spec_steps,sampling", [(0, None), (0, 1.0), (3, None), (3, 1.0)],
                         ids=["plain-greedy", "plain-sampled", "spec-greedy", "spec-sampled"])
def test_decode_steps_read_the_device_at_most_once(spec_steps, sampling):
    model = tiny()
    engine = Engine(model, spec_steps=spec_steps, cache_bytes=16 << 20)
    engine.count_step_ops = True
    sp = SamplingParams(temperature=sampling, top_p=0.9, top_k=20, seed=3) if sampling else None
    result = engine.generate(prompts(model.config, (9, 30)), 9, sp)
    assert result.verify_steps == len(engine.step_counts) >= 2
    for counts in engine.step_counts:
        assert counts.syncs == 1, counts.sync_sites  # the emitted tokens
        assert counts.ops_per_layer() > 0


@pytest.mark.parametrize("spec_steps", [0, 2])
def test_kernel_cache_decode_is_sync_free(kernel_model, spec_steps):
    engine = Engine(kernel_model, spec_steps=spec_steps, cache_bytes=16 << 20)
    assert engine.cache.format == "bf16"
    engine.count_step_ops = True
    engine.generate(prompts(kernel_model.config, (5, 20)), 4)
    assert engine.step_counts and all(c.syncs == 1 for c in engine.step_counts), \
        [c.sync_sites for c in engine.step_counts]
    # Fused norms, one-op rope rotation, grouped experts: 65 non-view ops per layer measured for
    # the plain step (about 120 before); the bound leaves room, a per-expert loop would break it.
    main = list(range(kernel_model.config.num_hidden_layers))
    assert all(c.ops_per_layer(main) <= 80 for c in engine.step_counts)


def test_kernel_cache_decode_splits_kv_once_per_step(kernel_model, monkeypatch):
    """With split-KV on (what a GPU picks at small batch), every layer's sparse_mla_decode gets the
    step's one plan, the step stays sync-free with the same ops per layer, and the tokens are
    those of the unsplit decode."""
    import glm52.kernels as kernels

    plans = []
    decode = kernels.sparse_mla_decode

    def spy(*args, **kwargs):
        plans.append(kwargs.get("tile_scheduler_metadata"))
        return decode(*args, **kwargs)

    monkeypatch.setattr(kernels, "sparse_mla_decode", spy)
    runs = {}
    for split in (False, True):
        engine = Engine(kernel_model, spec_steps=0, cache_bytes=16 << 20)
        engine.cache.split_decode = split
        engine.count_step_ops = True
        plans.clear()
        runs[split] = (engine.generate(prompts(kernel_model.config, (5, 20)), 4).tokens, engine.step_counts)
        assert all((p is not None) == split for p in plans) and plans
        if split:  # one plan object per forward, shared by its layers
            assert len({id(p) for p in plans}) < len(plans)
    assert runs[True][0] == runs[False][0]
    main = list(range(kernel_model.config.num_hidden_layers))
    for plain, split in zip(runs[False][1], runs[True][1]):
        assert split.syncs == 1 and split.ops_per_layer(main) == plain.ops_per_layer(main)


def test_decode_forwards_compile_without_graph_breaks():
    """``torch.compile(fullgraph=True)`` fails on any host sync or Python-side read of a tensor:
    the proof that the forwards CUDA graphs capture need none (the target step, and the whole draft:
    the MTP catch-up, then draft steps reusing the shared top-k, greedy and sampled). Same outputs
    as eager."""
    model = init_random_(GLM52ForCausalLM(GLM52Config.preset("tiny").replace(num_hidden_layers=2,
                                                                             first_k_dense_replace=1)), 0).eval()
    engine = Engine(model, spec_steps=0, cache_bytes=8 << 20)
    batch = prompts(model.config, (7, 12))
    engine.generate(batch, 1)  # nothing kept: build a cache state by hand
    for i, p in enumerate(batch):
        engine.allocator.reserve(i, len(p) + 2)
    table = engine.allocator.block_table([0, 1], 2)
    positions = torch.tensor([[len(p)] for p in batch])
    ids = torch.tensor([[p[-1]] for p in batch])
    hidden = torch.randn(2, 1, model.config.hidden_size)
    cases = [(engine._decode_forward, (ids, positions, table), None),
             (engine._draft_forward, (hidden, ids, positions, table), SamplingParams(temperature=0.0)),
             (engine._draft_forward, (hidden, ids, positions, table), SamplingParams(temperature=1.0, seed=3))]
    engine.spec_steps = 2
    for forward, inputs, sp in cases:
        engine._sampling = sp
        compiled = torch.compile(forward, fullgraph=True, backend="eager")
        with torch.no_grad():
            engine._seed.fill_(3), engine._offset.zero_()
            want = forward(*inputs)
            engine._offset.zero_()
            got = compiled(*inputs)
        torch.testing.assert_close(got, want)
        if sp is not None and sp.temperature:
            assert engine._offset.item() == 2  # one draw per draft step, counted on the device


@pytest.mark.parametrize("spec_steps, lengths", [(0, (5, 60, 9)), (3, (60,))])
def test_compiled_decode_emits_the_eager_engines_tokens(spec_steps, lengths):
    """``compiled_decode`` runs the same forwards through torch.compile per batch bucket: the same
    greedy tokens as eager, across two table widths, with a padded bucket (3 rows in 4) in plain
    decoding and, speculating, the verify, catch-up and shared-top-k draft forwards. The eager
    backend traces exactly what inductor compiles and keeps the test fast; inductor is tested below."""
    model = synthetic.bigram_model(GLM52Config.preset("tiny").replace(**SMALL), 0, draft_noise=0.0)
    batch = prompts(model.config, lengths)
    want = Engine(model, spec_steps=spec_steps, cache_bytes=8 << 20).generate(batch, 10)
    engine = Engine(model, spec_steps=spec_steps, cache_bytes=8 << 20, compiled_decode="eager")
    got = engine.generate(batch, 10)
    assert got.tokens == want.tokens
    assert {key[0] for key in engine.graphs.captured} == {len(lengths) + (len(lengths) == 3)}  # 3 rows in 4
    assert len({key[3][0] for key in engine.graphs.captured}) == 2  # table widths of 1 and 2 blocks
    if spec_steps:
        assert engine.draft_graphs.captured
        assert got.verify_steps < 5  # the drafts were accepted: this was no plain decoding


def fp8_kernel_cache_model(tmp_path, **changes) -> GLM52ForCausalLM:
    """A model on the GLM-5.x-shaped path: FP8 weights through the fused FP8 kernels
    (``fp8_compute="fp8"``, sizes on the 128-block grid), the kernels' BF16 cache, the FP8 indexer."""
    config = GLM52Config.preset("tiny").replace(**{**SMALL, **KERNEL_SIZES, "q_lora_rank": 128,
                                                   "moe_intermediate_size": 128, **changes})
    bf16 = init_random_(GLM52ForCausalLM(config), 0).to(torch.bfloat16)
    fp8 = quantize_checkpoint(save_checkpoint(bf16, tmp_path / "bf16"), tmp_path / "fp8")
    return GLM52ForCausalLM.from_pretrained(fp8, fp8_compute="fp8", indexer_precision="fp8")


@pytest.mark.parametrize("backend,spec_steps,layers", [("eager", 0, 4), ("eager", 2, 4), ("inductor", 0, 2)])
def test_compiled_decode_of_fp8_kernel_cache_model(tmp_path, backend, spec_steps, layers):
    """The GLM-5.x-shaped path compiles whole, with a split-KV decode plan (its part count and
    workspace size, host arithmetic, are compile-time constants): the eager backend traces exactly
    what inductor compiles (fast, speculating too); inductor lowers it (the FP8 ops' optional
    workspaces are allocated inside the graph: a None mutable argument does not lower)."""
    model = fp8_kernel_cache_model(tmp_path, num_hidden_layers=layers)
    batch = prompts(model.config, (5, 20))
    tokens = []
    for compiled in (None, backend):
        engine = Engine(model, spec_steps=spec_steps, cache_bytes=16 << 20, compiled_decode=compiled)
        engine.cache.split_decode = True
        tokens.append(engine.generate(batch, 4).tokens)
    assert engine.cache.format == "bf16" and engine.graphs.captured
    assert tokens[1] == tokens[0]


def test_compiled_decode_with_inductor_matches_eager():
    """The default backend (inductor, C++ wrapper) on a one-layer model: same greedy tokens, and
    the custom glm52 ops run inside the compiled graph through their registered fakes."""
    config = GLM52Config.preset("tiny").replace(num_hidden_layers=1, first_k_dense_replace=0, num_nextn_predict_layers=0)
    model = init_random_(GLM52ForCausalLM(config), 0).eval()  # one MoE layer with its indexer
    batch = prompts(model.config, (6,))
    want = Engine(model, spec_steps=0, cache_bytes=4 << 20).generate(batch, 3)
    engine = Engine(model, spec_steps=0, cache_bytes=4 << 20, compiled_decode=True)
    assert engine.generate(batch, 3).tokens == want.tokens
    assert len(engine.graphs.captured) == 1


def test_decode_graphs_run_the_forward_once_per_call():
    """Every call runs the forward exactly once, the one that prepares a shape included (under
    expert dispatch each run is a round of collectives the peers answer once); padding rows hold
    their pad value; ``bucket`` and ``key`` select prepared entries."""
    runs = torch.zeros((), dtype=torch.int64)

    def forward(x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        runs.add_(1)  # a side effect of every real run (tracing does not execute it)
        return x * 2, positions.clamp_min(-1)

    graphs = DecodeGraphs(CompiledStep(forward, "eager"), pads=(0, -1))
    x, positions = torch.arange(6.).view(3, 2), torch.tensor([[4], [5], [6]])
    out, pos = graphs(x, positions)
    assert runs == 1 and torch.equal(out, x * 2) and torch.equal(pos, positions)
    entry = graphs.captured[(4, ((2,), torch.float32), ((1,), torch.int64))]  # 3 rows in a bucket of 4
    assert torch.equal(entry.inputs[1][3:], torch.tensor([[-1]]))
    graphs(x[:1], positions[:1])
    graphs(x, positions, bucket=8, key=("capacity", 16))
    assert runs == 3 and len(graphs.captured) == 3  # buckets 4 (from 3 rows), 1, and 8 with its key
    graphs(x, positions)
    assert runs == 4 and len(graphs.captured) == 3
    with pytest.raises(ValueError, match="bucket"):
        graphs(x, positions, bucket=2)


def test_compiled_decode_option_is_checked():
    with pytest.raises(ValueError, match="exclusive"):
        Engine(tiny(), spec_steps=0, cache_bytes=4 << 20, cuda_graphs=True, compiled_decode=True)


def test_paged_slots_match_the_host_lookup():
    alloc = BlockAllocator(8)
    alloc.reserve(0, 130)  # 3 blocks
    alloc.reserve(1, 10)
    alloc.reserve(0, 150)
    positions = torch.tensor([[0, 63, 64, 129, -1], [3, 9, -1, -1, -1]])
    table = alloc.block_table([0, 1], 4)
    assert table.dtype == torch.int32 and table[1, 1:].eq(-1).all()
    got = paged_slots(table, positions)
    want = torch.stack([alloc.slots(0, positions[0]), alloc.slots(1, positions[1])])
    assert got.tolist() == want.tolist()
    assert paged_slots(table, torch.tensor([[300], [64]])).tolist() == [[-1], [-1]]  # blocks not reserved
    with pytest.raises(ValueError, match="table width"):
        alloc.block_table([0], 2)


# ---- sampling with device seed/offset ---------------------------------------------------------


def test_sampling_verify_takes_device_seed_and_offset():
    g = torch.Generator().manual_seed(0)
    target = torch.softmax(3 * torch.randn(4, 3, 50, generator=g), -1)
    q = torch.softmax(3 * torch.randn(4, 2, 50, generator=g), -1)
    draft = torch.multinomial(q.view(-1, 50), 1, generator=g).view(4, 2)
    seed, offset = torch.tensor(77), torch.tensor(5)
    got = ops.spec_verify_sampling(draft, q, target, seed, offset)
    want = reference.spec_verify_sampling(draft, q, target, 77, 5)
    assert [t.tolist() for t in got] == [t.tolist() for t in want]
    assert [t.tolist() for t in ops.spec_verify_sampling(draft, q, target, 77, 5)] == [t.tolist() for t in want]
    with pytest.raises(RuntimeError, match="offset"):
        ops.spec_verify_sampling(draft, q, target, seed, torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="seed"):
        ops.spec_verify_sampling(draft, q, target, torch.tensor(1.0), offset)


def test_sample_probs_is_the_verifiers_sampler_and_follows_the_distribution():
    probs = torch.softmax(torch.randn(3, 40, generator=torch.Generator().manual_seed(1)), -1)
    tokens = ops.sample_probs(probs, torch.tensor(9), torch.tensor(4))
    want, _ = reference.spec_verify_sampling(torch.full((3, 1), -1), None, probs[:, None].expand(3, 2, 40).contiguous(),
                                             9, 4)
    assert tokens.tolist() == want[:, 0].tolist()
    draws = torch.stack([ops.sample_probs(probs[:1].expand(512, 40).contiguous(), 1, offset) for offset in range(8)])
    freq = torch.bincount(draws.flatten().long(), minlength=40).float() / draws.numel()
    assert (freq - probs[0]).abs().max() < 0.03


def test_sampling_probs_scalars_need_no_host_sync():
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(2))
    for args in [(0.0, 0, 1.0), (0.7, 5, 0.9), (1.0, 0, 1.0)]:
        with OpCounter() as counter:
            probs = ops.sampling_probs(logits, *args)
        assert counter.counts.syncs == 0, (args, counter.counts.sync_sites)
        tensor_args = [torch.full((3,), a) for a in args]
        torch.testing.assert_close(probs, ops.sampling_probs(logits, *tensor_args))


# ---- experts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,hidden,inter", [(torch.float32, 64, 32), (torch.bfloat16, 64, 32),
                                                (torch.float32, 36, 20)],
                         ids=["fp32-grouped-mm", "bf16-grouped-mm", "fp32-gathered"])
def test_high_precision_experts_are_grouped_and_sync_free(dtype, hidden, inter):
    experts = Experts(hidden, inter, num_experts=6, first_expert=2)
    g = torch.Generator().manual_seed(4)
    for p in experts.parameters():
        p.data = (torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5).to(dtype)
    x = torch.randn(7, hidden, generator=g).to(dtype)
    ids = torch.randint(0, 10, (7, 3), generator=g, dtype=torch.int32)  # 0, 1, 8, 9: another rank's experts
    weights = torch.rand(7, 3, generator=g)
    with OpCounter() as counter:
        got = experts(x, weights, ids)
    assert counter.counts.syncs == 0, counter.counts.sync_sites
    want = torch.zeros(7, hidden, dtype=torch.float64)
    for t in range(7):
        for j in range(3):
            e = int(ids[t, j]) - 2
            if 0 <= e < 6:
                w1, w3, w2 = (m.weight[e].double() for m in (experts.gate_proj, experts.up_proj, experts.down_proj))
                h = x[t].double()
                want[t] += weights[t, j].double() * (w2 @ (F.silu(w1 @ h) * (w3 @ h)))
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert (got.double() - want).abs().max() <= tol * want.abs().max()


@pytest.mark.parametrize("dtype,with_scale", [(torch.float32, True), (torch.float8_e4m3fn, True),
                                              (torch.bfloat16, False)])
def test_masked_layout_producer_matches_reference(dtype, with_scale):
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(5, 16, generator=g) * 20).to(dtype)
    scale = torch.rand(5, 2, generator=g) if with_scale else None
    ids = torch.stack([torch.randperm(8, generator=g)[:3] for _ in range(5)]).int() - 1  # -1, 6: dropped
    want = reference.moe_permute_masked(x, scale, ids, 6)
    out = poisoned((6, 5, 16), dtype, "cpu")
    out_scale = poisoned((6, 5, 2 if with_scale else 0), torch.float32, "cpu")
    masked_m, row_map = poisoned((6,), torch.int32, "cpu"), poisoned((5, 3), torch.int32, "cpu")
    torch.ops.glm52.moe_permute_masked_out(x, scale, ids, 6, out=out, out_scale=out_scale, masked_m=masked_m,
                                           row_map=row_map)
    assert torch.equal(masked_m, want[2]) and torch.equal(row_map, want[3])
    for e in range(6):  # rows past masked_m[e] are unspecified
        m = int(masked_m[e])
        assert torch.equal(out[e, :m].view(torch.uint8), want[0][e, :m].view(torch.uint8))
        assert torch.equal(out_scale[e, :m], want[1][e, :m])
    with pytest.raises(RuntimeError, match="ids"):  # an expert twice in one token overflows its T rows
        ops.moe_permute_masked(x, scale, torch.zeros(5, 3, dtype=torch.int32), 6)


def test_fp8_experts_masked_layout_equals_contiguous(monkeypatch):
    g = torch.Generator().manual_seed(7)
    experts, hidden, inter = 6, 256, 128
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=g) * 30).to(torch.float8_e4m3fn)
    w2 = (torch.randn(experts, hidden, inter, generator=g) * 30).to(torch.float8_e4m3fn)
    s13, s2 = torch.rand(experts, 2, 2, generator=g) * 1e-3, torch.rand(experts, 2, 1, generator=g) * 1e-3
    x = torch.randn(9, hidden, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(8, generator=g)[:2] for _ in range(9)]).int()  # 6, 7 on another rank
    weights = torch.rand(9, 2, generator=g)
    with OpCounter() as counter:
        masked = ops.fp8_moe_experts(x, weights, ids, w13, s13, w2, s2)
    assert counter.counts.syncs == 0, counter.counts.sync_sites
    monkeypatch.setattr("glm52_ext.ops.moe.MASKED_LAYOUT_MAX_TOKENS", 0)
    contiguous = ops.fp8_moe_experts(x, weights, ids, w13, s13, w2, s2)
    assert masked.abs().max() > 0 and torch.equal(masked, contiguous)
