"""Tensor, expert and attention-data parallelism (DESIGN §6) on CPU ranks over gloo: every layout's
logits (and MTP logits) equal the single-process model's; shards hold what the planner says; bad
layouts and checkpoints fail with clear errors on every rank, before any collective."""

from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
from model_testing import max_rel_err
from parallel_testing import results, spawn

from glm52 import GLM52Config, GLM52ForCausalLM
from glm52 import loader as loader_module
from glm52.checkpoint import init_random_, quantize_checkpoint, save_checkpoint
from glm52.loader import CheckpointError
from glm52.layers import Experts
from glm52.parallel import (ParallelConfig, ParallelHandle, ParallelMoE, build_parallel_model, dispatch_combine,
                            init_parallel, parameter_bytes, serve_experts, set_dispatch, share)
from glm52.planner import plan

# Sequences of 20 tokens > index_topk 8: sparse selection runs; layer 3 shares layer 2's top-k.
TINY = dict(num_hidden_layers=4, first_k_dense_replace=1, index_topk=8)
# Every TP slice on the FP8 128x128 grid at tp = 2 (heads of 128 + 128, 2 heads per rank).
GRID = dict(TINY, hidden_size=128, q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=64, qk_rope_head_dim=64,
            v_head_dim=64, index_head_dim=64, intermediate_size=256, moe_intermediate_size=256, num_hidden_layers=3)
BATCH, TOKENS = 4, 20
MOE_LAYERS = TINY["num_hidden_layers"] - TINY["first_k_dense_replace"] + 1  # and the MTP layer
LAYOUTS = {
    2: [dict(tp=2), dict(tp=2, ep=2), dict(dp=2, ep=2)],
    4: [dict(tp=4), dict(tp=4, ep=4), dict(tp=2, dp=2, ep=4), dict(dp=4, ep=4), dict(tp=2, dp=2)],
}


def _write(tmp_path, name: str, overrides: dict, dtype: torch.dtype, fp8: bool):
    """A random checkpoint in ``dtype``, or (``fp8``) its FP8 release at ``<name>-fp8`` next to it."""
    config = GLM52Config.preset("tiny").replace(**overrides)
    model = init_random_(GLM52ForCausalLM(config), seed=3).to(dtype)
    path = save_checkpoint(model, tmp_path / name, max_shard_bytes=200_000)
    return quantize_checkpoint(path, tmp_path / f"{name}-fp8") if fp8 else path


@pytest.fixture(scope="module")
def fp32_ckpt(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("par"), "fp32", TINY, torch.float32, fp8=False)


@pytest.fixture(scope="module")
def fp8_ckpt(tmp_path_factory):
    """FP8 linears, BF16 everything else (the release's format), on the 128 grid at tp = 2."""
    return _write(tmp_path_factory.mktemp("par"), "grid", GRID, torch.bfloat16, fp8=True)


def _inputs(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (BATCH, TOKENS), generator=torch.Generator().manual_seed(11))


def _outputs(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the MTP layer's logits (h_t paired with token t+1)."""
    with torch.no_grad():
        hidden = model.hidden_states(ids)
        _, mtp, _ = model.mtp(hidden[:, :-1], ids[:, 1:])
        return model.lm_head(hidden), mtp


def _load_tracking_reads(ckpt, dtype, handle) -> tuple[GLM52ForCausalLM, list[str], int]:
    """This rank's shard, the names of the expert tensors it read from disk, and the bytes it read."""
    reads, read_bytes, real = [], [], loader_module.read_tensor

    def read(h, name, index):
        t = real(h, name, index)
        reads.append(name)
        read_bytes.append(t.numel() * t.element_size())
        return t

    with mock.patch.object(loader_module, "read_tensor", side_effect=read):
        model = GLM52ForCausalLM.from_pretrained(ckpt, dtype=dtype, parallel=handle)
    return model, [n for n in reads if ".experts." in n], sum(read_bytes)


def _host_reads_of_capacity_dispatch(model, handle) -> list[str]:
    """Python-level host reads (tolist, item, bool, int) in one capacity dispatch round; the expert
    compute itself (the receiving side's business) is stubbed with a sync-free function."""
    moe = next(m for m in model.modules() if isinstance(m, ParallelMoE))
    x = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(handle.rank))
    weights, ids = moe.gate(x)
    seen = []

    def spy(name):
        real = getattr(torch.Tensor, name)
        return lambda self, *a, **k: seen.append(name) or real(self, *a, **k)

    with mock.patch.object(Experts, "forward", lambda self, h, w, i: h * w[:, :1].to(h.dtype)), \
            mock.patch.multiple(torch.Tensor, **{n: spy(n) for n in ("tolist", "item", "__bool__", "__int__")}):
        dispatch_combine(moe, x, weights, ids)
    return seen


def _layouts_worker(rank: int, ckpt, layouts: list[dict], as_stored: bool):
    """Per layout: logits and MTP errors against one process (fp32 activations; FP8 weights
    dequantized from their slices), and with ``as_stored`` the bytes and expert reads of a shard
    loaded as stored (FP8 + scales)."""
    ids = _inputs(GLM52Config.from_pretrained(ckpt).vocab_size)
    ref_logits, ref_mtp = _outputs(GLM52ForCausalLM.from_pretrained(ckpt, dtype=torch.float32), ids)
    out = []
    for layout in layouts:
        handle = init_parallel(ParallelConfig(**layout), timeout_s=60)
        model, _, _ = _load_tracking_reads(ckpt, torch.float32, handle)
        rows = list(share(BATCH, handle))
        logits, mtp = _outputs(model, ids[rows])
        entry = dict(layout=layout, logits=max_rel_err(logits, ref_logits[rows]), mtp=max_rel_err(mtp, ref_mtp[rows]),
                     exact=bool(torch.equal(logits, ref_logits[rows]) and torch.equal(mtp, ref_mtp[rows])))
        if as_stored:
            stored, entry["reads"], entry["read_bytes"] = _load_tracking_reads(ckpt, None, handle)
            entry["bytes"] = parameter_bytes(stored)
            if handle.config.tp == 1:  # BF16 activations, BF16 checkpoint: EP-only is bit-identical too
                bf16 = ckpt.with_name(ckpt.name.removesuffix("-fp8"))
                ref = _outputs(GLM52ForCausalLM.from_pretrained(bf16), ids[rows])
                got = _outputs(GLM52ForCausalLM.from_pretrained(bf16, parallel=handle), ids[rows])
                entry["bf16_exact"] = all(torch.equal(a, b) for a, b in zip(got, ref))
        if handle.config.moe_mode == "dispatch":
            # Data-parallel group 0 runs one more forward (its MTP logits) alone; the others serve it.
            if handle.dp_rank == 0:
                extra = _outputs(model, ids[rows])[1]
                entry["alone_err"] = max_rel_err(extra, mtp)  # expert GEMMs see fewer rows: not bit-equal
            entry["served"] = serve_experts(model)
            # The decode dispatch gives the same bits as the exact one.
            set_dispatch(model, "capacity", capacity=BATCH * TOKENS)
            cap_logits, cap_mtp = _outputs(model, ids[rows])
            entry["capacity_same"] = bool(torch.equal(cap_logits, logits) and torch.equal(cap_mtp, mtp))
            entry["capacity_host_reads"] = _host_reads_of_capacity_dispatch(model, handle)
        out.append(entry)
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_layouts_match_single_process_fp32(fp32_ckpt, tmp_path, world):
    reports = results(spawn(world, _layouts_worker, fp32_ckpt, LAYOUTS[world], False, out=tmp_path))
    for per_layout in zip(*reports):
        for r in per_layout:
            assert r["logits"] <= 1e-5 and r["mtp"] <= 1e-5, r
            if r["layout"].get("tp", 1) == 1:
                assert r["exact"], f"EP-only layout {r['layout']} is not bit-identical: {r}"
            if "capacity_same" in r:
                assert r["capacity_same"] and r["capacity_host_reads"] == [], r
                # group 0's lone forward: all of its MoE layers served by the other groups' ranks
                assert r.get("alone_err", 0) <= 1e-5 and r["served"] == (0 if "alone_err" in r else MOE_LAYERS), r


def test_fp8_checkpoint_shards_match_and_hold_the_planned_bytes(fp8_ckpt, tmp_path):
    layouts = LAYOUTS[2]
    reports = results(spawn(2, _layouts_worker, fp8_ckpt, layouts, True, out=tmp_path))
    config = GLM52Config.from_pretrained(fp8_ckpt)
    moe_layers = config.num_hidden_layers - config.first_k_dense_replace + config.num_nextn_predict_layers
    bias_upcast = 2 * config.n_routed_experts * moe_layers  # router biases: stored BF16, held fp32
    for i, layout in enumerate(layouts):
        per_rank = [r[i] for r in reports]
        planned = plan(config, weights="fp8", context=1, **{k: layout.get(k, 1) for k in ("tp", "dp", "ep")})
        for r in per_rank:
            assert r["logits"] <= 1e-5 and r["mtp"] <= 1e-5, r
            assert r["bytes"] == planned["weight_bytes_per_gpu"], (layout, r["bytes"], planned["weight_bytes_per_gpu"])
            assert r["read_bytes"] + bias_upcast == r["bytes"], "a rank reads from disk only the bytes of its shard"
            assert r.get("bf16_exact", True) and r.get("capacity_same", True), r
        assert any("bf16_exact" in r for r in per_rank) == (layout.get("tp", 1) == 1)
        if layout.get("ep", 1) == 2:  # every expert tensor (weights and scales) read by exactly one rank
            reads = [n for r in per_rank for n in r["reads"]]
            assert len(reads) == len(set(reads)) == 2 * 3 * config.n_routed_experts * moe_layers


# ---- errors: raised while building or loading, so every rank fails alike and nothing waits ------------
def test_layout_errors_name_the_field():
    with pytest.raises(ValueError, match="ep .3. must be 1 or a multiple of tp .2."):
        ParallelConfig(tp=2, dp=2, ep=3)
    with pytest.raises(ValueError, match="ep .8. must divide the world size"):
        ParallelConfig(tp=2, dp=2, ep=8)
    with pytest.raises(ValueError, match="cp .3. must divide tp .2."):
        ParallelConfig(tp=2, cp=3)
    with pytest.raises(ValueError, match="tp must be a positive integer"):
        ParallelConfig(tp=0)
    config = GLM52Config.preset("tiny")
    for pc, field in ((ParallelConfig(tp=8), "num_attention_heads"),
                      (ParallelConfig(dp=32, ep=32), "n_routed_experts")):
        with pytest.raises(ValueError, match=field):
            build_parallel_model(config, ParallelHandle(pc, 0))
    with pytest.raises(ValueError, match="vocab_size"):
        build_parallel_model(config.replace(vocab_size=1022), ParallelHandle(ParallelConfig(tp=4), 1))


def test_wrong_world_size_is_an_error_before_any_group():
    env = {"RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    with mock.patch.dict(os.environ, env), \
            pytest.raises(ValueError, match=r"tp \(2\) x dp \(1\) = 2 must equal the world size \(3"):
        init_parallel(ParallelConfig(tp=2))
    with mock.patch.dict(os.environ, {}, clear=True), pytest.raises(ValueError, match="RANK.*torchrun"):
        init_parallel(ParallelConfig(tp=2))


def test_fp8_split_off_the_block_grid_names_the_tensor(tmp_path):
    ckpt = _write(tmp_path, "off", TINY, torch.float32, fp8=True)
    for rank in range(2):
        with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.self_attn\.\w+_proj\.weight .* breaks "
                                                  r"the FP8 128x128 block grid; part counts that work: \[1\]"):
            GLM52ForCausalLM.from_pretrained(ckpt, parallel=ParallelHandle(ParallelConfig(tp=2), rank))


def test_missing_shard_fails_on_every_rank(fp32_ckpt, tmp_path):
    import shutil

    broken = shutil.copytree(fp32_ckpt, tmp_path / "broken")
    victim = sorted(broken.glob("*.safetensors"))[-1]
    victim.unlink()
    for rank in range(4):
        handle = ParallelHandle(ParallelConfig(dp=4, ep=4), rank)
        with pytest.raises(CheckpointError, match=f"shard .*{victim.name} is missing"):
            GLM52ForCausalLM.from_pretrained(broken, parallel=handle)


def test_glm52_shard_on_meta_matches_the_planner():
    """GLM-5.2 at tp = 8, ep = 8: one rank's shard built on meta, counted as the FP8 release stores it."""
    from glm52.parallel import model_bytes_as_loaded

    config = GLM52Config.preset("glm-5.2")
    planned = plan(config, weights="fp8", context=1, tp=8, ep=8)
    for rank in (0, 7):
        model = build_parallel_model(config, ParallelHandle(ParallelConfig(tp=8, ep=8), rank))
        assert model_bytes_as_loaded(model, "fp8") == planned["weight_bytes_per_gpu"]


_PEAK_RSS_SCRIPT = """
import gc, sys
import torch
from glm52 import GLM52ForCausalLM
from glm52.parallel import ParallelConfig, ParallelHandle, parameter_bytes

def status(field):  # bytes of a /proc/self/status field
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

warmup, checkpoint, ep = sys.argv[1], sys.argv[2], int(sys.argv[3])
handle = ParallelHandle(ParallelConfig(dp=ep, ep=ep), rank=0) if ep > 1 else None
# A first load warms what loads lazily (libraries, allocator pools, progress bar), so the measured
# load's growth is its own; then the peak-RSS mark is reset to the resident size now.
GLM52ForCausalLM.from_pretrained(warmup, parallel=handle)
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
model = GLM52ForCausalLM.from_pretrained(checkpoint, parallel=handle)
print(status("VmHWM") - before, parameter_bytes(model))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's resettable peak RSS")
def test_loading_peak_memory_follows_the_rank_share(tmp_path):
    """A rank's peak RSS while loading grows with its shard, not with the checkpoint: experts are
    ~95% of this checkpoint and an EP-4 rank reads a quarter of them. Measured in fresh processes
    (whole load, then an EP-4 rank's), after a warm-up load. The growth is the parameters plus the
    shard pages the rank read through safetensors' memory map (file-backed, reclaimable), so about
    2x the share at most; a whole-checkpoint read would show up as the other ranks' bytes."""
    import subprocess
    import sys

    wide = dict(TINY, n_routed_experts=32)
    big = dict(wide, hidden_size=256, moe_intermediate_size=1024, num_hidden_layers=2)
    warmup = _write(tmp_path, "warmup", wide, torch.float32, fp8=False)
    path = _write(tmp_path, "big", big, torch.float32, fp8=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    grown = {}
    for ep in (1, 4):
        out = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT, str(warmup), str(path), str(ep)],
                             capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        grown[ep] = tuple(int(v) for v in out.stdout.split())
    (whole_rss, whole_bytes), (rank_rss, rank_bytes) = grown[1], grown[4]
    assert rank_bytes < 0.4 * whole_bytes
    assert whole_rss >= whole_bytes, grown  # the measurement sees a whole load
    assert rank_rss <= 2 * rank_bytes + (16 << 20), (
        f"an EP-4 rank's load grew RSS by {rank_rss:,} B for {rank_bytes:,} B of shard (whole model: "
        f"{whole_rss:,} B for {whole_bytes:,} B)")
