"""Every glm52 op passes torch.library.opcheck and traces under torch.compile(fullgraph=True)."""

from __future__ import annotations

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
    d = device
    return attention_samples(device) + [
        (torch.ops.glm52.quant_fp8_per_token_group.default, (x.to(d), 128, False), {}),
        (torch.ops.glm52.quant_fp8_per_token_group.default, (x.bfloat16().to(d), 64, True), {}),
        (torch.ops.glm52.quant_fp8_per_token_group_out.default, (x.to(d), 128, False),
         {"out": q_out.to(d), "out_scale": s_out.to(d)}),
        (torch.ops.glm52.dequant_fp8_block.default, (w.to(d), s.to(d), torch.float32, [128, 128]), {}),
        (torch.ops.glm52.dequant_fp8_block_out.default, (w.to(d), s.to(d), [128, 128]),
         {"out": torch.empty(2, 130, 200, dtype=torch.bfloat16, device=d)}),
    ]


def attention_samples(d):
    """The attention family: cache writes (both formats), indexer logits, top-k, sparse MLA."""
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
    glm = torch.ops.glm52
    return [
        (glm.mla_cache_write.default, (kv.to(d), slots.to(d)), {"cache": torch.zeros(2, 64, 1152, dtype=torch.uint8, device=d)}),
        (glm.mla_cache_write.default, (kv.to(d), slots.to(d)), {"cache": torch.zeros(2, 64, 656, dtype=torch.uint8, device=d)}),
        (glm.indexer_cache_write.default, (k.to(d), slots.to(d)), {"cache": icache.clone().to(d)}),
        (glm.indexer_logits.default, tuple(t.to(d) for t in (q8, w, k8, ksc, ks, ke)), {}),
        (glm.indexer_logits_out.default, tuple(t.to(d) for t in (q8, w, k8, ksc, ks, ke)),
         {"out": torch.empty(5, 90, device=d)}),
        (glm.indexer_logits_paged.default,
         (*(t.to(d) for t in (q8[:4].reshape(2, 2, 8, 128), w[:4].reshape(2, 2, 8), icache, table, lengths)), 150), {}),
        (glm.indexer_logits_paged_out.default,
         tuple(t.to(d) for t in (q8[:4].reshape(2, 2, 8, 128), w[:4].reshape(2, 2, 8), icache, table, lengths)),
         {"out": torch.empty(2, 2, 150, device=d)}),
        (glm.topk_indices.default, (logits.to(d), 16, lens.to(d)), {}),
        (glm.topk_indices.default, (logits.to(d), 400, None), {}),
        (glm.topk_indices_out.default, (logits.to(d), 16, lens.to(d)), {"out": torch.empty(4, 16, dtype=torch.int32, device=d)}),
        (glm.sparse_mla_prefill.default, (q.to(d), kv.to(d), idx.to(d), 0.0625), {}),
        (glm.sparse_mla_prefill_out.default, (q.to(d), kv.to(d), idx.to(d), 0.0625),
         {"out": torch.empty(3, 16, 512, dtype=torch.bfloat16, device=d), "lse": torch.empty(3, 16, device=d)}),
        (glm.sparse_mla_decode.default, (qd.to(d), cache16.to(d), idxd.to(d), 0.0625), {}),
        (glm.sparse_mla_decode_out.default, (qd.to(d), cache8.to(d), idxd.to(d), 0.0625),
         {"out": torch.empty(1, 3, 16, 512, dtype=torch.bfloat16, device=d), "lse": torch.empty(1, 3, 16, device=d)}),
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
        mutable = {arg.name for arg in op._schema.arguments if arg.alias_info and arg.alias_info.is_write}
        assert mutable == set(kwargs), f"{op}: schema marks {mutable} as written, sample passes {set(kwargs)}"


def test_every_registered_op_has_a_sample():
    registered = {name for name in dir(torch.ops.glm52) if not name.startswith("_")}
    registered -= {"name"}  # attribute of the namespace object, not an op
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
