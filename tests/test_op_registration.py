"""Every glm52 op passes torch.library.opcheck and traces under torch.compile(fullgraph=True)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEVICES

from glm52_ext import ops, reference


def op_samples(device):
    """(op, args, kwargs) per op: at least one realistic sample each, partial groups/blocks included."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 300, generator=g)
    w = (torch.randn(2, 130, 200, generator=g) * 50).to(torch.float8_e4m3fn)
    s = torch.rand(2, 2, 2, generator=g)
    q_out = torch.empty(6, 300, dtype=torch.float8_e4m3fn)
    s_out = torch.empty(6, 3)
    logits = torch.randn(3, 4, 1100, generator=g)
    draft = logits.argmax(dim=-1)[:, :3].contiguous()
    probs = torch.softmax(logits, dim=-1)
    draft_probs = torch.softmax(torch.randn(3, 3, 1100, generator=g), dim=-1)
    d = device

    def rng():
        return torch.tensor([5], device=d), torch.tensor([6], device=d)

    def verify_out():
        return {"tokens": torch.empty(3, 4, dtype=torch.int32, device=d),
                "num_emitted": torch.empty(3, dtype=torch.int32, device=d)}

    samples = [
        (torch.ops.glm52.quant_fp8_per_token_group.default, (x.to(d), 128, False), {}),
        (torch.ops.glm52.quant_fp8_per_token_group.default, (x.bfloat16().to(d), 64, True), {}),
        (torch.ops.glm52.quant_fp8_per_token_group_out.default, (x.to(d), 128, False),
         {"out": q_out.to(d), "out_scale": s_out.to(d)}),
        (torch.ops.glm52.dequant_fp8_block.default, (w.to(d), s.to(d), torch.float32, [128, 128]), {}),
        (torch.ops.glm52.dequant_fp8_block_out.default, (w.to(d), s.to(d), [128, 128]),
         {"out": torch.empty(2, 130, 200, dtype=torch.bfloat16, device=d)}),
        (torch.ops.glm52.spec_verify_greedy.default, (draft.to(d), logits.bfloat16().to(d)), {}),
        (torch.ops.glm52.spec_verify_greedy_out.default, (draft.int().to(d), logits.to(d)), verify_out()),
        (torch.ops.glm52.spec_verify_sampling.default, (draft.to(d), draft_probs.to(d), probs.to(d), 1, 2), {}),
        (torch.ops.glm52.spec_verify_sampling.default, (draft.to(d), None, probs.to(d), 1, 2), {}),
        (torch.ops.glm52.spec_verify_sampling.default, (draft.to(d), None, probs.to(d), 1, 2),
         {"workspace": torch.empty(4096, dtype=torch.uint8, device=d)}),
        (torch.ops.glm52.spec_verify_greedy_out.default, (draft.int().to(d), logits.to(d)),
         {"workspace": torch.empty(4096, dtype=torch.uint8, device=d), **verify_out()}),
        (torch.ops.glm52.spec_verify_sampling_out.default, (draft.to(d), draft_probs.to(d), probs.to(d), 3, 4),
         verify_out()),
        (torch.ops.glm52.spec_verify_sampling.tensor, (draft.to(d), draft_probs.to(d), probs.to(d), *rng()), {}),
        (torch.ops.glm52.spec_verify_sampling_out.tensor, (draft.to(d), None, probs.to(d), *rng()), verify_out()),
    ]
    return samples + moe_samples(device) + attention_samples(device) + norm_samples(device)


def norm_samples(d):
    """RMSNorm, plain and fused with the residual add; a row longer than the kernel's 256 lanes."""
    g = torch.Generator().manual_seed(2)
    x, r = torch.randn(2, 3, 300, generator=g), torch.randn(2, 3, 300, generator=g)
    w = torch.randn(300, generator=g)
    glm = torch.ops.glm52
    return [
        (glm.rms_norm.default, (x.to(d), w.to(d), 1e-6), {}),
        (glm.rms_norm_out.default, (x.bfloat16().to(d), w.bfloat16().to(d), 1e-5),
         {"out": torch.empty(2, 3, 300, dtype=torch.bfloat16, device=d)}),
        (glm.add_rms_norm.default, (x.to(d), r.to(d), w.to(d), 1e-6), {}),
        (glm.add_rms_norm_out.default, (x.half().to(d), r.half().to(d), w.half().to(d), 1e-6),
         {"out": torch.empty(2, 3, 300, dtype=torch.half, device=d),
          "sum": torch.empty(2, 3, 300, dtype=torch.half, device=d)}),
    ]


def moe_samples(device):
    """The MoE family: GEMMs on 128-multiples (every device), routing, permute/unpermute, SwiGLU.

    Rows the contracts leave unspecified (masked rows past masked_m, permute's padding rows) would
    differ between eager and traced runs, so these samples have none: masked_m is full and
    moe_permute runs with alignment 1 and no dropped ids (its output is then exactly T * top_k rows),
    moe_permute_masked with every token routed to every expert (so masked_m = T everywhere).
    """
    g = torch.Generator().manual_seed(1)
    d = device
    a = (torch.randn(256, 256, generator=g) * 50).to(torch.float8_e4m3fn).to(d)
    a_scale = (torch.rand(256, 2, generator=g) + 0.1).to(d)
    b = (torch.randn(2, 128, 256, generator=g) * 50).to(torch.float8_e4m3fn).to(d)
    b_scale = (torch.rand(2, 1, 2, generator=g) + 0.1).to(d)
    m_indices = torch.tensor([0] * 100 + [-1] * 28 + [1] * 3 + [-1] * 125, dtype=torch.int32, device=d)
    masked_m = torch.tensor([128, 128], dtype=torch.int32, device=d)
    logits, bias = torch.randn(5, 64, generator=g).to(d), torch.randn(64, generator=g).to(d)
    ids = torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(6)]).to(torch.int32).to(d)
    x8, x_scale = a[:6], a_scale[:6]
    every_expert = torch.stack([torch.randperm(4, generator=g) for _ in range(6)]).to(torch.int32).to(d)
    rows = ops.permuted_rows_bound(24, 16, 1)
    y = torch.randn(rows, 64, generator=g).to(d)
    weights = torch.rand(6, 4, generator=g).to(d)
    row_map = reference.moe_permute(torch.zeros(6, 1), None, ids.cpu(), 16, 1)[3].to(d)
    h = torch.randn(7, 512, generator=g).to(d)
    empty = lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype, device=d)  # noqa: E731
    gemm_workspace = lambda groups: empty(ops.fp8_grouped_gemm_workspace_bytes(groups), dtype=torch.uint8)  # noqa: E731
    glm52 = torch.ops.glm52
    return [
        (glm52.fp8_grouped_gemm_contiguous.default, (a, a_scale, b, b_scale, m_indices), {}),
        (glm52.fp8_grouped_gemm_contiguous_out.default, (a, a_scale, b, b_scale, m_indices),
         {"out": empty(256, 128, dtype=torch.bfloat16)}),
        (glm52.fp8_grouped_gemm_masked.default, (a.view(2, 128, 256), a_scale.view(2, 128, 2), b, b_scale, masked_m, 64), {}),
        (glm52.fp8_grouped_gemm_masked_out.default, (a.view(2, 128, 256), a_scale.view(2, 128, 2), b, b_scale, masked_m, 64),
         {"out": empty(2, 128, 128, dtype=torch.bfloat16)}),
        (glm52.fp8_gemm.default, (a, a_scale, b[0], b_scale[0]), {}),
        (glm52.fp8_gemm_out.default, (a, a_scale, b[0], b_scale[0]), {"out": empty(256, 128, dtype=torch.bfloat16)}),
        (glm52.fp8_gemm.default, (a[:64], a_scale[:64], b[0], b_scale[0]), {"workspace": gemm_workspace(1)}),
        (glm52.fp8_grouped_gemm_masked.default, (a.view(2, 128, 256), a_scale.view(2, 128, 2), b, b_scale, masked_m, 200),
         {"workspace": gemm_workspace(2)}),
        (glm52.fp8_grouped_gemm_contiguous_out.default, (a, a_scale, b, b_scale, m_indices),
         {"workspace": gemm_workspace(2), "out": empty(256, 128, dtype=torch.bfloat16)}),
        (glm52.moe_route.default, (logits, bias, 4, 4, 2, 2.5, True), {}),
        (glm52.moe_route_out.default, (logits, bias, 4, 1, 1, 2.5, False),
         {"weights": empty(5, 4), "ids": empty(5, 4, dtype=torch.int32)}),
        (glm52.moe_permute.default, (x8, x_scale, ids, 16, 1), {}),
        (glm52.moe_permute.default, (h[:6, :64].contiguous().bfloat16(), None, ids, 16, 1), {}),
        (glm52.moe_permute_out.default, (x8, x_scale, ids, 16, 1),
         {"out": empty(rows, 256, dtype=torch.float8_e4m3fn), "out_scale": empty(rows, 2),
          "m_indices": empty(rows, dtype=torch.int32), "row_map": empty(6, 4, dtype=torch.int32)}),
        (glm52.moe_permute_masked.default, (x8, x_scale, every_expert, 4), {}),
        (glm52.moe_permute.default, (x8, x_scale, ids, 16, 1),
         {"workspace": empty(ops.moe_permute_workspace_bytes(24, 16), dtype=torch.uint8)}),
        (glm52.moe_permute_masked_out.default, (x8, x_scale, every_expert, 4),
         {"workspace": empty(ops.moe_permute_workspace_bytes(24, 4), dtype=torch.uint8),
          "out": empty(4, 6, 256, dtype=torch.float8_e4m3fn), "out_scale": empty(4, 6, 2),
          "masked_m": empty(4, dtype=torch.int32), "row_map": empty(6, 4, dtype=torch.int32)}),
        (glm52.moe_permute_masked_out.default, (h[:6, :64].contiguous(), None, every_expert, 4),
         {"out": empty(4, 6, 64), "out_scale": empty(4, 6, 0), "masked_m": empty(4, dtype=torch.int32),
          "row_map": empty(6, 4, dtype=torch.int32)}),
        (glm52.moe_unpermute.default, (y.bfloat16(), weights, row_map), {}),
        (glm52.moe_unpermute_out.default, (y, weights, row_map), {"out": empty(6, 64)}),
        (glm52.silu_and_mul_quant_fp8.default, (h.bfloat16(), 128, False), {}),
        (glm52.silu_and_mul_quant_fp8_out.default, (h, 128, True),
         {"out": empty(7, 256, dtype=torch.float8_e4m3fn), "out_scale": empty(7, 2)}),
    ]


def attention_samples(d):
    """The attention family: cache writes (both formats), indexer logits, fused indexer top-k, top-k, sparse MLA."""
    g = torch.Generator().manual_seed(1)
    kv = torch.randn(70, 576, generator=g).bfloat16()
    slots = torch.randperm(128, generator=g)[:70]
    slots[3] = -1
    k = torch.randn(70, 128, generator=g)
    q8 = (torch.randn(5, 8, 128, generator=g) * 30).to(torch.float8_e4m3fn)
    w = torch.randn(5, 8, generator=g)
    k8 = (torch.randn(90, 128, generator=g) * 30).to(torch.float8_e4m3fn)
    ksc = torch.rand(90, generator=g)
    ks = torch.tensor([0, 3, 10, 50, 89], dtype=torch.int32)
    ke = torch.tensor([1, 40, 90, 60, 200], dtype=torch.int32)
    icache = torch.randint(0, 0x7F, (2, 8448), generator=g, dtype=torch.uint8)
    table = torch.tensor([[1, 0], [0, -1]], dtype=torch.int32)
    lengths = torch.tensor([[100, 101], [30, 64]], dtype=torch.int32)
    logits = torch.randn(4, 300, generator=g)
    lens = torch.tensor([300, 0, 5, 100], dtype=torch.int32)
    q = torch.randn(3, 16, 576, generator=g).bfloat16()
    idx = torch.randint(-1, 70, (3, 40), generator=g, dtype=torch.int32)
    cache16 = torch.zeros(2, 64, 1152, dtype=torch.uint8)
    cache8 = torch.zeros(2, 64, 656, dtype=torch.uint8)
    for c in (cache16, cache8):
        torch.ops.glm52.mla_cache_write(kv, slots, c)
    qd, idxd = q.view(1, 3, 16, 576), idx.view(1, 3, 40)
    qs, idxs = q[:2, :8].reshape(2, 1, 8, 576).contiguous(), idx[:2].reshape(2, 1, 40)  # split-KV decode: 2 rows, 3 parts
    row_topk = torch.tensor([40, 7], dtype=torch.int32)
    plan = torch.ops.glm52.sparse_mla_decode_metadata(row_topk, 3)
    glm = torch.ops.glm52
    return [
        (glm.mla_cache_write.default, (kv.to(d), slots.to(d)), {"cache": torch.zeros(2, 64, 1152, dtype=torch.uint8, device=d)}),
        (glm.mla_cache_write.default, (kv.to(d), slots.to(d)), {"cache": torch.zeros(2, 64, 656, dtype=torch.uint8, device=d)}),
        (glm.indexer_cache_write.default, (k.to(d), slots.to(d)), {"cache": icache.clone().to(d)}),
        (glm.indexer_cache_write.default, (k.to(d), slots.to(d)), {"cache": icache.clone().to(d), "hadamard": True}),
        (glm.hadamard_rotate.default, (k.bfloat16().view(7, 10, 128).to(d),), {}),
        (glm.hadamard_rotate_out.default, (k.to(d),), {"out": torch.empty(70, 128, device=d)}),
        (glm.indexer_logits.default, tuple(t.to(d) for t in (q8, w, k8, ksc, ks, ke)), {}),
        (glm.indexer_logits_out.default, tuple(t.to(d) for t in (q8, w, k8, ksc, ks, ke)),
         {"out": torch.empty(5, 90, device=d)}),
        (glm.indexer_logits_paged.default,
         (*(t.to(d) for t in (q8[:4].reshape(2, 2, 8, 128), w[:4].reshape(2, 2, 8), icache, table, lengths)), 150), {}),
        (glm.indexer_logits_paged_out.default,
         tuple(t.to(d) for t in (q8[:4].reshape(2, 2, 8, 128), w[:4].reshape(2, 2, 8), icache, table, lengths)),
         {"out": torch.empty(2, 2, 150, device=d)}),
        (glm.indexer_topk.default, (*(t.to(d) for t in (q8, w, k8, ksc, ks, ke)), 7), {}),
        (glm.indexer_topk_out.default, (*(t.to(d) for t in (q8, w, k8, ksc, ks, ke)), 7),
         {"out": torch.empty(5, 7, dtype=torch.int32, device=d)}),
        (glm.indexer_topk_paged.default,
         (*(t.to(d) for t in (q8[:4].reshape(2, 2, 8, 128), w[:4].reshape(2, 2, 8), icache, table, lengths)), 9), {}),
        (glm.indexer_topk_paged_out.default,
         (*(t.to(d) for t in (q8[:4].reshape(2, 2, 8, 128), w[:4].reshape(2, 2, 8), icache, table, lengths)), 9),
         {"out": torch.empty(2, 2, 9, dtype=torch.int32, device=d)}),
        (glm.topk_indices.default, (logits.to(d), 16, lens.to(d)), {}),
        (glm.topk_indices.default, (logits.to(d), 400, None), {}),
        (glm.topk_indices_out.default, (logits.to(d), 16, lens.to(d)), {"out": torch.empty(4, 16, dtype=torch.int32, device=d)}),
        (glm.topk_indices.default, (logits.to(d)[:, :250], 16, lens.to(d), torch.tensor([0, 3, 200, 9], dtype=torch.int32, device=d)), {}),
        (glm.mla_cache_write.default, (kv.to(d), slots.to(d)), {"cache": torch.zeros(2, 64, 1, 656, dtype=torch.uint8, device=d)}),
        (glm.sparse_mla_prefill.default, (q.to(d), kv.to(d), idx.to(d), 0.0625), {}),
        (glm.sparse_mla_prefill_out.default, (q.to(d), kv.to(d), idx.to(d), 0.0625),
         {"out": torch.empty(3, 16, 512, dtype=torch.bfloat16, device=d), "lse": torch.empty(3, 16, device=d)}),
        (glm.sparse_mla_decode.default, (qd.to(d), cache16.to(d), idxd.to(d), 0.0625), {}),
        (glm.sparse_mla_decode_out.default, (qd.to(d), cache8.to(d), idxd.to(d), 0.0625),
         {"out": torch.empty(1, 3, 16, 512, dtype=torch.bfloat16, device=d), "lse": torch.empty(1, 3, 16, device=d)}),
        (glm.sparse_mla_decode_metadata.default, (row_topk.to(d), 3), {}),
        (glm.sparse_mla_decode_metadata_out.default, (row_topk.to(d), 2),
         {"tile_scheduler_metadata": torch.empty(2, 8, dtype=torch.int32, device=d),
          "num_splits": torch.empty(3, dtype=torch.int32, device=d)}),
        (glm.sparse_mla_decode.default, (qs.to(d), cache8.to(d), idxs.to(d), 0.0625, *(t.to(d) for t in plan)), {}),
        (glm.sparse_mla_decode_out.default, (qs.to(d), cache16.to(d), idxs.to(d), 0.0625, *(t.to(d) for t in plan)),
         {"workspace": torch.empty(torch.ops.glm52.sparse_mla_decode_workspace_bytes(2, 1, 8, 3), dtype=torch.uint8,
                                   device=d),
          "out": torch.empty(2, 1, 8, 512, dtype=torch.bfloat16, device=d), "lse": torch.empty(2, 1, 8, device=d)}),
    ]


# opcheck's test_schema compares tensors with allclose, which float8 tensors do not support
# (torch 2.14); test_inputs_are_not_mutated below checks the same property byte for byte.
OPCHECK_TESTS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args, kwargs in op_samples(device):
        torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_TESTS)


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8).cpu().clone()


@pytest.mark.parametrize("device", DEVICES)
def test_inputs_are_not_mutated(device):
    """What the schemas promise: only arguments marked (a!) are written."""
    for op, args, kwargs in op_samples(device):
        before = [as_bytes(a) for a in args if isinstance(a, torch.Tensor)]
        op(*args, **kwargs)
        after = [as_bytes(a) for a in args if isinstance(a, torch.Tensor)]
        assert all(torch.equal(b, a) for b, a in zip(before, after)), f"{op} wrote to an input"
        written = [arg for arg in op._schema.arguments if arg.alias_info and arg.alias_info.is_write]
        # Every written argument the sample passes is a tensor keyword; optional ones (a workspace) may
        # be left out. Non-tensor keywords are flags (indexer_cache_write's hadamard).
        required = {arg.name for arg in written if not isinstance(arg.type, torch.OptionalType)}
        passed = {name for name, value in kwargs.items() if isinstance(value, torch.Tensor)}
        assert required <= passed <= {arg.name for arg in written}, (
            f"{op}: schema marks {[a.name for a in written]} as written, sample passes {passed}")


def test_every_registered_op_has_a_sample():
    registered = {name for name in dir(torch.ops.glm52) if not name.startswith("_")}
    registered -= {"name"}  # attribute of the namespace object, not an op
    # Queries without tensors (tests/test_spec_ops.py, tests/test_moe_ops.py, test_attention_indexer_topk.py,
    # test_attention_split_decode.py).
    registered -= {"spec_verify_workspace_bytes", "fp8_grouped_gemm_workspace_bytes", "moe_permute_workspace_bytes",
                   "grouped_gemm_config", "indexer_topk_kernel", "sparse_mla_decode_workspace_bytes"}
    sampled = {op._schema.name.split("::")[1] for op, _, _ in op_samples("cpu")}
    assert registered <= sampled, f"ops without an opcheck sample: {sorted(registered - sampled)}"


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    def quant_roundtrip(x):
        q, s = ops.quant_fp8_per_token_group(x, 128)
        return ops.dequant_fp8_block(q, s, torch.float32, (1, 128))

    torch._dynamo.reset()
    x = torch.randn(8, 384, device=device)
    compiled = torch.compile(quant_roundtrip, fullgraph=True, backend="aot_eager")
    want = reference.dequant_fp8_block(*reference.quant_fp8_per_token_group(x.cpu()), torch.float32, (1, 128))
    assert torch.equal(compiled(x).cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_spec_verify_torch_compile_fullgraph(device):
    def verify(draft, logits, probs, seed, offset):
        return ops.spec_verify_greedy(draft, logits), ops.spec_verify_sampling(draft, None, probs, seed, offset)

    torch._dynamo.reset()
    logits = torch.randn(4, 3, 300)
    probs = torch.softmax(logits, dim=-1)
    draft = logits.argmax(dim=-1)[:, :2].contiguous()
    compiled = torch.compile(verify, fullgraph=True, backend="aot_eager")
    got = compiled(draft.to(device), logits.to(device), probs.to(device), 5, 6)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(got[0], reference.spec_verify_greedy(draft, logits)))
    want = reference.spec_verify_sampling(draft, None, probs, 5, 6)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(got[1], want))


def test_fakes_register_when_the_extension_loads():
    """Importing glm52_ext._C alone (no glm52_ext.ops import) is enough to trace the ops."""
    code = (
        "import torch, glm52_ext._C\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "with FakeTensorMode():\n"
        "    x = torch.empty(3, 100)\n"
        "    assert torch.ops.glm52.topk_indices(x, 5).shape == (3, 5)\n"
        "    q = torch.empty(2, 8, 576, dtype=torch.bfloat16)\n"
        "    out, lse = torch.ops.glm52.sparse_mla_prefill(q, torch.empty(9, 576, dtype=torch.bfloat16), "
        "torch.empty(2, 4, dtype=torch.int32), 0.1)\n"
        "    assert out.shape == (2, 8, 512) and lse.shape == (2, 8)\n"
    )
    import glm52_ext  # the subprocess imports the same installation (a source tree or an installed wheel)

    here = Path(glm52_ext.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    # cwd too: `python -c` puts the working directory first on sys.path, which in CI's torch 2.11 pass
    # is the source tree (its _C built for the other torch), not the installed wheel under test.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=here)
    assert done.returncode == 0, done.stderr
