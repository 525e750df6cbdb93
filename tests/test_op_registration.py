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
    logits = torch.randn(3, 4, 1100, generator=g)
    draft = logits.argmax(dim=-1)[:, :3].contiguous()
    probs = torch.softmax(logits, dim=-1)
    draft_probs = torch.softmax(torch.randn(3, 3, 1100, generator=g), dim=-1)
    d = device

    def verify_out():
        return {"tokens": torch.empty(3, 4, dtype=torch.int32, device=d),
                "num_emitted": torch.empty(3, dtype=torch.int32, device=d)}

    return [
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
        (torch.ops.glm52.spec_verify_sampling_out.default, (draft.to(d), draft_probs.to(d), probs.to(d), 3, 4),
         verify_out()),
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
