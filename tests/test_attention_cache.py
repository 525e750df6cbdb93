"""mla_cache_write and indexer_cache_write against glm52_ext.reference: bytes, layouts, slots."""

from __future__ import annotations

import pytest
import torch
from attention_testing import gen, random_cache_bytes, random_latent
from conftest import DEVICES

from glm52_ext import ops, reference
from glm52_ext.reference.attention import rope_rotate


def scattered_slots(t: int, capacity: int, g: torch.Generator) -> torch.Tensor:
    """Distinct slots in random order, with a few −1 and out-of-range ones (skipped by contract)."""
    slots = torch.randperm(capacity, generator=g)[:t].long()
    if t > 3:
        slots[1], slots[t // 2] = -1, capacity + 5
    return slots


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("token_bytes", [1152, 656])
@pytest.mark.parametrize("t,num_blocks", [(0, 2), (1, 1), (64, 1), (150, 4)])
def test_mla_cache_write_matches_reference_bytes(device, token_bytes, t, num_blocks):
    g = gen(t * 7 + token_bytes)
    cache = random_cache_bytes((num_blocks, 64, token_bytes), g)
    kv = random_latent(t, g)
    slots = scattered_slots(t, num_blocks * 64, g) if t <= num_blocks * 64 else None
    want = reference.mla_cache_write(kv, slots, cache)
    got = cache.to(device)
    ops.mla_cache_write(kv.to(device), slots.to(device), got)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("token_bytes", [1152, 656])
def test_mla_cache_write_takes_flash_mla_4d_view(device, token_bytes):
    """FlashMLA views the cache as [num_blocks, 64, 1, row] (one KV head): the same bytes."""
    g = gen(17 + token_bytes)
    cache = random_cache_bytes((3, 64, token_bytes), g)
    kv = random_latent(100, g)
    slots = scattered_slots(100, 3 * 64, g)
    want = reference.mla_cache_write(kv, slots, cache)
    got = cache.to(device).view(3, 64, 1, token_bytes)
    ops.mla_cache_write(kv.to(device), slots.to(device), got)
    assert torch.equal(got.cpu().view(3, 64, token_bytes), want)


@pytest.mark.parametrize("device", DEVICES)
def test_mla_cache_write_reads_row_strided_kv(device):
    """kv may be a column slice of a wider projection output (row stride > 576)."""
    g = gen(5)
    wide = random_latent(40, g).repeat(1, 2)[:, 100:676]
    cache = random_cache_bytes((1, 64, 656), g)
    slots = torch.arange(40) + 10
    want = reference.mla_cache_write(wide.contiguous(), slots, cache)
    got = cache.to(device)
    ops.mla_cache_write(wide.to(device), slots.to(device), got)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_mla_cache_dequantizes_within_e4m3_precision(device):
    g = gen(9)
    kv = random_latent(128, g)
    cache = torch.zeros(2, 64, 656, dtype=torch.uint8, device=device)
    ops.mla_cache_write(kv.to(device), torch.arange(128, device=device), cache)
    back = reference.mla_cache_read(cache.cpu())
    assert torch.equal(back[:, 512:], kv[:, 512:].float())  # rope dims stay bf16, exact
    group_amax = kv[:, :512].float().abs().view(128, 4, 128).amax(-1, keepdim=True)
    err = (back[:, :512] - kv[:, :512].float()).view(128, 4, 128).abs() / group_amax
    assert err.max().item() <= 2.0**-4  # half an e4m3 ulp at the top binade, relative to amax


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("t,num_blocks", [(0, 1), (1, 1), (100, 3)])
def test_indexer_cache_write_matches_reference_bytes(device, dtype, ue8m0, t, num_blocks):
    g = gen(t + 3 * ue8m0)
    cache = random_cache_bytes((num_blocks, 8448), g)
    k = (torch.randn(t, 128, generator=g) * torch.exp(torch.randn(t, 1, generator=g))).to(dtype)
    slots = scattered_slots(t, num_blocks * 64, g)
    want = reference.indexer_cache_write(k, slots, cache, ue8m0)
    got = cache.to(device)
    ops.indexer_cache_write(k.to(device), slots.to(device), got, ue8m0)
    assert torch.equal(got.cpu(), want)
    codes, scale = reference.indexer_cache_read(got.cpu())
    keep = (slots >= 0) & (slots < num_blocks * 64)
    q, s = reference.quant_fp8_per_token_group(k[keep].float(), 128, ue8m0)
    assert torch.equal(codes[slots[keep]].view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(scale[slots[keep]], s.flatten())


def random_rope(t: int, pairs: int, g: torch.Generator) -> torch.Tensor:
    """``[T, pairs, 2]`` (cos, sin) of random angles, as ``view_as_real`` of the model's rotation."""
    angles = torch.rand(t, pairs, generator=g) * 1000
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("token_bytes", [1152, 656])
def test_mla_cache_write_with_rope_stores_the_rotated_k_pe(device, token_bytes):
    """The fused rotation equals the reference's, and what the model's unfused path stores
    (apply_rope on k_pe, then the plain write)."""
    from glm52.layers import apply_rope

    g = gen(23 + token_bytes)
    cache = random_cache_bytes((3, 64, token_bytes), g)
    kv = random_latent(150, g)
    slots = scattered_slots(150, 3 * 64, g)
    rope = random_rope(150, 32, g)
    want = reference.mla_cache_write(kv, slots, cache, rope)
    got = cache.to(device)
    ops.mla_cache_write(kv.to(device), slots.to(device), got, rope=rope.to(device))
    assert torch.equal(got.cpu(), want)
    turned = apply_rope(kv[:, 512:].unsqueeze(0), torch.view_as_complex(rope).unsqueeze(0), None)[0]
    unfused = reference.mla_cache_write(torch.cat((kv[:, :512], turned), dim=1), slots, cache)
    assert torch.equal(got.cpu(), unfused)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pairs", [32, 1, 64])
def test_indexer_cache_write_with_rope_rotates_the_leading_pairs(device, dtype, pairs):
    from glm52.layers import apply_rope

    g = gen(pairs + (dtype == torch.bfloat16))
    cache = random_cache_bytes((2, 8448), g)
    k = torch.randn(100, 128, generator=g).to(dtype)
    slots = scattered_slots(100, 2 * 64, g)
    rope = random_rope(100, pairs, g)
    want = reference.indexer_cache_write(k, slots, cache, True, rope)
    got = cache.to(device)
    ops.indexer_cache_write(k.to(device), slots.to(device), got, True, rope=rope.to(device))
    assert torch.equal(got.cpu(), want)
    r = 2 * pairs
    turned = apply_rope(k[:, :r].unsqueeze(0), torch.view_as_complex(rope).unsqueeze(0), None)[0]
    unfused = reference.indexer_cache_write(torch.cat((turned, k[:, r:]), dim=1), slots, cache, True)
    assert torch.equal(got.cpu(), unfused)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("with_rope", [False, True])
def test_indexer_cache_write_with_hadamard_rotates_after_rope(device, dtype, ue8m0, with_rope):
    """The fused write stores what rope, then hadamard_rotate, then quantization store (the FP8
    indexer recipe, DESIGN §2.1), bit for bit, on keys with a few large outlier channels."""
    g = gen(7 + 2 * ue8m0 + with_rope)
    cache = random_cache_bytes((3, 8448), g)
    k = torch.randn(150, 128, generator=g)
    k[:, [3, 64, 100]] *= 40
    k = k.to(dtype)
    slots = scattered_slots(150, 3 * 64, g)
    rope = random_rope(150, 32, g) if with_rope else None
    want = reference.indexer_cache_write(k, slots, cache, ue8m0, rope, hadamard=True)
    got = cache.clone().to(device)
    ops.indexer_cache_write(k.to(device), slots.to(device), got, ue8m0, rope=None if rope is None else rope.to(device),
                            hadamard=True)
    assert torch.equal(got.cpu(), want)
    turned = k if rope is None else torch.cat((rope_rotate(k[:, :64], rope), k[:, 64:]), dim=1)
    keep = (slots >= 0) & (slots < 3 * 64)
    codes, scale = reference.indexer_cache_read(got.cpu())
    q, s = reference.quant_fp8_per_token_group(ops.hadamard_rotate(turned[keep].contiguous()), 128, ue8m0)
    assert torch.equal(codes[slots[keep]].view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(scale[slots[keep]], s.flatten())
    plain = cache.clone().to(device)
    ops.indexer_cache_write(k.to(device), slots.to(device), plain, ue8m0, rope=None if rope is None else rope.to(device))
    assert not torch.equal(plain, got)  # the flag is honoured


@pytest.mark.parametrize("device", DEVICES)
def test_cache_writes_reject_bad_input(device):
    kv = torch.randn(4, 576, device=device).bfloat16()
    slots = torch.arange(4, device=device)
    cache = torch.zeros(1, 64, 1152, dtype=torch.uint8, device=device)
    cases = [
        (lambda: ops.mla_cache_write(kv.float(), slots, cache), "argument 'kv' must have dtype"),
        (lambda: ops.mla_cache_write(kv[:, :512], slots, cache), r"argument 'kv' must have shape \[T, 576\]"),
        (lambda: ops.mla_cache_write(kv, slots.int(), cache), "argument 'slots' must have dtype"),
        (lambda: ops.mla_cache_write(kv, slots[:3], cache), r"argument 'slots' must have shape \[4\]"),
        (lambda: ops.mla_cache_write(kv, slots, cache[..., :1000]), "argument 'cache' must have shape"),
        (lambda: ops.mla_cache_write(kv, slots, torch.zeros(1, 32, 1152, dtype=torch.uint8, device=device)),
         "argument 'cache' must have shape"),
        (lambda: ops.mla_cache_write(kv, slots, cache.view(torch.bfloat16)), "argument 'cache'"),
        (lambda: ops.mla_cache_write(kv, slots, torch.zeros(1, 64, 2, 656, dtype=torch.uint8, device=device)),
         r"argument 'cache' must be 3-D \[num_blocks, 64, 1152 or 656\] or 4-D"),
        (lambda: ops.indexer_cache_write(kv[:, :100], slots, torch.zeros(1, 8448, dtype=torch.uint8, device=device)),
         r"argument 'k' must have shape \[T, 128\]"),
        (lambda: ops.indexer_cache_write(kv[:, :128], slots, torch.zeros(1, 8447, dtype=torch.uint8, device=device)),
         "argument 'cache' must have shape"),
        (lambda: ops.mla_cache_write(kv, slots, cache, rope=torch.zeros(4, 16, 2, device=device)),
         r"argument 'rope' must have shape \[T = 4, 32, 2\]"),
        (lambda: ops.mla_cache_write(kv, slots, cache, rope=torch.zeros(4, 32, 2, device=device).double()),
         "argument 'rope' must have dtype"),
        (lambda: ops.indexer_cache_write(kv[:, :128], slots, torch.zeros(1, 8448, dtype=torch.uint8, device=device),
                                         rope=torch.zeros(4, 65, 2, device=device)),
         r"argument 'rope' must have shape \[T = 4, 1..64, 2\]"),
        (lambda: ops.indexer_cache_write(kv[:, :128], slots, torch.zeros(1, 8448, dtype=torch.uint8, device=device),
                                         rope=torch.zeros(4, 2, 32, device=device).transpose(1, 2)),
         "argument 'rope' must be contiguous"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()
