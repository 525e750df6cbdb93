"""spec_verify_greedy / spec_verify_sampling against glm52_ext.reference, on every device; Philox
known answers; crafted acceptance cases; reproducibility; bad inputs; the sampling_probs path."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, poisoned

from glm52_ext import ops, reference
from glm52_ext.reference import spec as ref_spec

# Random123's kat_vectors for philox4x32 with 10 rounds: counter, key, expected output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_reference_philox_matches_random123_known_answers(counter, key, expected):
    assert ref_spec.philox4x32_10(counter, key) == expected


def test_philox_uniform_layout():
    """The documented counter layout, and uniforms that are exact multiples of 2^-24 in [0, 1)."""
    word = ref_spec.philox4x32_10((5, 2 * 3 + 1, 0x89ABCDEF, 0x01234567), (0x9, 0x8))[0]
    assert ref_spec.philox_uniform(0x0000000800000009, 0x0123456789ABCDEF, 5, 3, 1) == (word >> 8) * 2.0**-24
    values = [ref_spec.philox_uniform(1, 2, b, j, d) for b in range(20) for j in range(3) for d in (0, 1)]
    assert all(0.0 <= u < 1.0 and (u * 2**24).is_integer() for u in values)
    assert len(set(values)) == len(values)


def run_out(fn, draft, *args, **kwargs):
    """Run an op through its out-variant into poisoned buffers, so an unwritten element fails."""
    batch, n = draft.shape
    out = (poisoned((batch, n + 1), torch.int32, draft.device), poisoned((batch,), torch.int32, draft.device))
    tokens, emitted = fn(draft, *args, **kwargs, out=out)
    assert tokens is out[0] and emitted is out[1]
    return tokens.cpu(), emitted.cpu()


def near_argmax_draft(argmax: torch.Tensor, n: int, g: torch.Generator, vocab: int) -> torch.Tensor:
    """Drafts that agree with the target argmax for a random prefix, so every accept length occurs."""
    batch = argmax.shape[0]
    draft = argmax[:, :n].clone()
    cut = torch.randint(0, n + 1, (batch,), generator=g)
    wrong = torch.randint(0, vocab, (batch, n), generator=g)
    mask = torch.arange(n)[None, :] >= cut[:, None]
    draft[mask] = wrong[mask]
    return draft


# ---- greedy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("draft_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("batch,n,vocab", [(7, 3, 1000), (5, 1, 4099), (3, 7, 20000), (4, 2, 1), (9, 4, 7), (0, 3, 100)])
def test_greedy_matches_reference(device, dtype, draft_dtype, batch, n, vocab):
    g = torch.Generator().manual_seed(batch * 100 + n * 10 + vocab)
    logits = (torch.randn(batch, n + 1, vocab, generator=g) * 4).to(dtype)
    if vocab > 8:  # exact ties: the lowest index must win
        logits[..., vocab // 2] = logits[..., vocab // 3] = logits.float().amax(dim=-1).to(dtype)
    argmax = logits.float().argmax(dim=-1)
    draft = near_argmax_draft(argmax, n, g, vocab).to(draft_dtype)
    want = reference.spec_verify_greedy(draft, logits)
    got = run_out(ops.spec_verify_greedy, draft.to(device), logits.to(device))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    functional = ops.spec_verify_greedy(draft.to(device), logits.to(device))
    assert torch.equal(functional[0].cpu(), want[0]) and torch.equal(functional[1].cpu(), want[1])
    assert functional[0].dtype == torch.int32 and functional[1].dtype == torch.int32


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_acceptance_cases(device):
    """Independently of the reference: all accepted (bonus), first rejected, middle rejected."""
    vocab, n = 50, 4
    a = torch.tensor([[3, 7, 11, 13, 17], [3, 7, 11, 13, 17], [3, 7, 11, 13, 17], [0, 49, 1, 2, 3]])
    logits = torch.randn(4, n + 1, vocab).clamp(-1, 1)
    logits.scatter_(2, a[..., None], 5.0)
    draft = torch.tensor([[3, 7, 11, 13], [4, 7, 11, 13], [3, 7, 12, 13], [0, 49, 1, 2]], dtype=torch.int32)
    tokens, emitted = run_out(ops.spec_verify_greedy, draft.to(device), logits.to(device))
    assert emitted.tolist() == [5, 1, 3, 5]
    assert tokens.tolist() == [[3, 7, 11, 13, 17], [3, -1, -1, -1, -1], [3, 7, 11, -1, -1], [0, 49, 1, 2, 3]]


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_ties_and_nan_follow_torch_argmax(device):
    logits = torch.zeros(3, 2, 9000)
    logits[0, 0, [8000, 17, 4000]] = 2.0  # tie across far-apart positions: index 17
    logits[1, 0, [5, 8999]] = float("nan")  # first NaN wins
    logits[2, 0, :] = float("-inf")  # all -inf: index 0
    draft = torch.tensor([[17], [5], [0]])
    tokens, emitted = run_out(ops.spec_verify_greedy, draft.to(device), logits.to(device))
    assert tokens[:, 0].tolist() == [17, 5, 0] == logits[:, 0].argmax(dim=-1).tolist()
    assert emitted.tolist() == [2, 2, 2]


# ---- sampling ----------------------------------------------------------------------------------


def random_probs(shape, g, sharpness=3.0):
    return torch.softmax(torch.randn(shape, generator=g) * sharpness, dim=-1)


def sampling_case(batch, n, vocab, seed, with_q):
    g = torch.Generator().manual_seed(seed)
    target = random_probs((batch, n + 1, vocab), g)
    q = random_probs((batch, n, vocab), g) if with_q else None
    source = q if with_q else target[:, :n]
    draft = torch.multinomial(source.reshape(-1, vocab), 1, generator=g).view(batch, n)
    return draft, q, target


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("draft_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("batch,n,vocab", [(33, 3, 3000), (16, 1, 5), (8, 7, 1027), (6, 2, 4096), (0, 2, 64)])
def test_sampling_matches_reference_token_for_token(device, with_q, draft_dtype, batch, n, vocab):
    draft, q, target = sampling_case(batch, n, vocab, seed=vocab + n, with_q=with_q)
    draft = draft.to(draft_dtype)
    seed, offset = 0x5EED + vocab, 3 * n
    want = reference.spec_verify_sampling(draft, q, target, seed, offset)
    d = device
    got = run_out(ops.spec_verify_sampling, draft.to(d), None if q is None else q.to(d), target.to(d), seed, offset)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    if batch:
        assert len(set(want[1].tolist())) > 1  # the case exercises several accept lengths


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_more_than_1024_tiles(device):
    """V > 1024 * 1024: the tile sums are scanned in several chunks with a carry."""
    vocab = 1024 * 1024 + 3000
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 2, vocab, generator=g)
    target[..., 1024 * 1024 :] *= 1000  # most of the mass past the first 1024 tiles
    target = target / target.sum(dim=-1, keepdim=True)
    draft = torch.tensor([[-1], [vocab - 1]])  # both rejected
    want = reference.spec_verify_sampling(draft, None, target, 11, 0)
    got = run_out(ops.spec_verify_sampling, draft.to(device), None, target.to(device), 11, 0)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0][:, 0].max() >= 1024 * 1024  # the second chunk is searched


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_reproducible_and_offset_changes_stream(device):
    draft, q, target = sampling_case(256, 3, 500, seed=5, with_q=True)
    args = (draft.to(device), q.to(device), target.to(device))
    first = ops.spec_verify_sampling(*args, seed=42, offset=7)
    again = ops.spec_verify_sampling(*args, seed=42, offset=7)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    for seed, offset in [(42, 8), (43, 7)]:
        other = ops.spec_verify_sampling(*args, seed=seed, offset=offset)
        changed = (other[0] != first[0]).any(dim=1).float().mean().item()
        assert changed > 0.3, (seed, offset, changed)


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_acceptance_cases(device):
    """Independently of the reference: probability-1 drafts are kept, probability-0 drafts and
    out-of-vocabulary drafts are rejected, and a rejected deterministic draft is never re-emitted."""
    vocab, n = 6, 3
    target = torch.zeros(4, n + 1, vocab)
    target[0, :, 2] = 1.0  # row 0: every position certain of token 2 -> all accepted, bonus 2
    target[1:, :, :] = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0, 0.0])
    draft = torch.tensor([[2, 2, 2], [0, 1, 1], [7, 1, 1], [1, 3, 1]])
    tokens, emitted = run_out(ops.spec_verify_sampling, draft.to(device), None, target.to(device), 3, 4)
    assert tokens[0].tolist() == [2, 2, 2, 2] and emitted[0] == 4
    # row 1: token 0 has p = 0 -> rejected at 0; resample from p without 0 -> 1 or 2
    assert emitted[1] == 1 and tokens[1, 0].item() in (1, 2) and tokens[1, 1:].tolist() == [-1, -1, -1]
    assert emitted[2] == 1 and tokens[2, 0].item() in (1, 2)  # 7 is outside the vocabulary
    # row 3: d_0 = 1 accepted with probability 0.5; if rejected, only 2 may be sampled
    if emitted[3] == 1:
        assert tokens[3, 0] == 2
    else:
        assert tokens[3, 0] == 1 and tokens[3, 1] in (1, 2) and emitted[3] == 2  # d_1 = 3 has p = 0
    # Deterministic drafts: after a rejection of d at position 0 the residual excludes d.
    g = torch.Generator().manual_seed(3)
    many = random_probs((2000, 2, 8), g, 1.0)
    d = torch.full((2000, 1), 5)
    tokens, emitted = run_out(ops.spec_verify_sampling, d.to(device), None, many.to(device), 1, 2)
    rejected = emitted == 1
    assert rejected.any() and (tokens[rejected, 0] != 5).all()


@pytest.mark.parametrize("device", DEVICES)
def test_unnormalized_rows_sample_as_if_normalized(device):
    """Documented: sampling divides by the row sum it computes, so scaling a row by 2 (exact in
    fp32) changes nothing there. q = 0 everywhere accepts every draft, so the bonus is sampled."""
    draft, _, target = sampling_case(64, 2, 300, seed=9, with_q=False)
    q = torch.zeros(64, 2, 300)
    base = ops.spec_verify_sampling(draft.to(device), q.to(device), target.to(device), 5, 6)
    scaled = ops.spec_verify_sampling(draft.to(device), q.to(device), (2 * target).to(device), 5, 6)
    assert (base[1] == 3).all() and torch.equal(base[0], scaled[0])


@pytest.mark.parametrize("device", DEVICES)
def test_rows_without_mass_fall_back_as_documented(device):
    """All three rows reject d_0 (p(d_0) = 0 or NaN) and their residual max(p - q, 0) is empty."""
    vocab = 40
    target = torch.zeros(3, 2, vocab)
    q = torch.zeros(3, 1, vocab)
    target[0, 0, 20] = 1.0  # q covers p: the residual is empty -> sample p_0 itself -> 20
    q[0, 0, [9, 20]] = 1.0
    target[1, 0, :] = float("nan")  # no usable mass at all -> token 0
    q[1, 0, 3] = 1.0
    target[2, 0, [30, 31]] = 0.25  # an unnormalized p_0 covered by q -> 30 or 31
    q[2, 0, [5, 30, 31]] = 1.0
    draft = torch.tensor([[9], [3], [5]])
    tokens, emitted = run_out(ops.spec_verify_sampling, draft.to(device), q.to(device), target.to(device), 0, 0)
    assert emitted.tolist() == [1, 1, 1]
    assert tokens[0, 0] == 20 and tokens[1, 0] == 0 and tokens[2, 0].item() in (30, 31)
    want = reference.spec_verify_sampling(draft, q, target, 0, 0)
    assert torch.equal(tokens, want[0])


# ---- bad input ---------------------------------------------------------------------------------


def good_sampling(device):
    draft, q, target = sampling_case(2, 3, 16, seed=0, with_q=True)
    return draft.to(device), q.to(device), target.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_rejects_bad_input(device):
    logits = torch.randn(2, 4, 16, device=device)
    draft = torch.zeros(2, 3, dtype=torch.int64, device=device)
    cases = [
        (torch.zeros(2, 0, dtype=torch.int64, device=device), torch.randn(2, 1, 16, device=device), "n >= 1"),
        (draft, torch.randn(2, 3, 16, device=device), r"argument 'target_logits' must have shape \[2, 4, 16\]"),
        (draft, torch.randn(3, 4, 16, device=device), r"argument 'target_logits' must have shape \[2, 4, 16\]"),
        (draft, torch.randn(2, 4, 0, device=device), "vocabulary size V in"),
        (draft, logits.double(), "argument 'target_logits' must have dtype"),
        (draft.float(), logits, "argument 'draft' must have dtype"),
        (draft[0], logits, "argument 'draft' must be 2-D"),
        (draft, logits.transpose(1, 2).contiguous().transpose(1, 2), "argument 'target_logits' must be contiguous"),
    ]
    for d, x, message in cases:
        with pytest.raises(RuntimeError, match=message):
            ops.spec_verify_greedy(d, x)
    bad_outs = [
        ((torch.empty(2, 4, dtype=torch.int64, device=device), torch.empty(2, dtype=torch.int32, device=device)), "argument 'tokens' must have dtype"),
        ((torch.empty(2, 3, dtype=torch.int32, device=device), torch.empty(2, dtype=torch.int32, device=device)), "argument 'tokens' must have shape"),
        ((torch.empty(2, 4, dtype=torch.int32, device=device), torch.empty(3, dtype=torch.int32, device=device)), "argument 'num_emitted' must have shape"),
    ]
    for out, message in bad_outs:
        with pytest.raises(RuntimeError, match=message):
            ops.spec_verify_greedy(draft, logits, out=out)


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_rejects_bad_input(device):
    draft, q, target = good_sampling(device)
    cases = [
        ((draft[:, :0], None, target[:, :1]), "n >= 1"),
        ((draft, q, target[:, :3]), r"argument 'target_probs' must have shape \[2, 4, 16\]"),
        ((draft, q[:, :2], target), r"argument 'draft_probs' must have shape \[2, 3, "),
        ((draft, q[..., :8].contiguous(), target), r"argument 'draft_probs' must have shape \[2, 3, 16\]"),
        ((draft, q, target.bfloat16()), "argument 'target_probs' must have dtype Float"),
        ((draft, q.double(), target), "argument 'draft_probs' must have dtype Float"),
        ((draft.to(torch.int16), q, target), "argument 'draft' must have dtype"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            ops.spec_verify_sampling(*args, seed=0, offset=0)


def test_validate_rejects_rows_that_are_not_distributions():
    draft, q, target = good_sampling("cpu")
    ops.spec_verify_sampling(draft, q, target, 0, 0, validate=True)  # valid: no error
    off = target.clone()
    off[1, 2] *= 1.01
    with pytest.raises(ValueError, match=r"argument 'target_probs' row \(1, 2\) sums to 1.01"):
        ops.spec_verify_sampling(draft, q, off, 0, 0, validate=True)
    negative = q.clone()
    negative[0, 0, 0] = -0.1
    with pytest.raises(ValueError, match="argument 'draft_probs' holds negative or non-finite"):
        ops.spec_verify_sampling(draft, negative, target, 0, 0, validate=True)
    within = target.clone()
    within[0, 0] *= 1 + 0.5 * ops.PROB_SUM_TOLERANCE
    ops.spec_verify_sampling(draft, q, within, 0, 0, validate=True)


@pytest.mark.cuda
def test_device_mismatch_is_rejected():
    draft, q, target = good_sampling("cuda")
    with pytest.raises(RuntimeError, match="argument 'draft_probs' must be on the same device as 'draft'"):
        ops.spec_verify_sampling(draft, q.cpu(), target, 0, 0)
    with pytest.raises(RuntimeError, match="argument 'target_logits' must be on the same device as 'draft'"):
        ops.spec_verify_greedy(draft.cpu(), target)


@pytest.mark.cuda
def test_cuda_matches_cpu_at_full_vocabulary():
    """GLM-5.2's V = 154880: the GPU's split argmax and tile sums give the CPU twin's tokens."""
    vocab, batch, n = 154880, 4, 3
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, n + 1, vocab, generator=g).bfloat16()
    draft = near_argmax_draft(logits.float().argmax(dim=-1), n, g, vocab)
    cpu = ops.spec_verify_greedy(draft, logits)
    gpu = ops.spec_verify_greedy(draft.cuda(), logits.cuda())
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())
    draft, q, target = sampling_case(batch, n, vocab, seed=1, with_q=True)
    cpu = ops.spec_verify_sampling(draft, q, target, 9, 9)
    gpu = ops.spec_verify_sampling(draft.cuda(), q.cuda(), target.cuda(), 9, 9)
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())


# ---- the target distribution -------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_probs_semantics(device):
    logits = torch.tensor([[2.0, 1.0, 0.0, 1.0, -1.0], [0.0, 3.0, 3.0, 1.0, 2.0]], device=device)
    greedy = ops.sampling_probs(logits, temperature=0.0)
    assert greedy.tolist() == [[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]]
    plain = ops.sampling_probs(logits, temperature=2.0)
    torch.testing.assert_close(plain, torch.softmax(logits / 2.0, dim=-1))
    top2 = ops.sampling_probs(logits, temperature=1.0, top_k=2)
    # row 0: 2nd largest is 1.0, tied twice -> three tokens kept; row 1: the tied 3.0s
    assert (top2[0] > 0).tolist() == [True, True, False, True, False]
    assert (top2[1] > 0).tolist() == [False, True, True, False, False]
    torch.testing.assert_close(top2.sum(dim=-1), torch.ones(2, device=device))
    p = torch.softmax(logits[0], dim=-1)  # 0.52, 0.19, 0.07, 0.19, 0.03
    assert ops.sampling_probs(logits[:1], temperature=1.0, top_p=0.5)[0].tolist() == [1.0, 0, 0, 0, 0]
    nucleus = ops.sampling_probs(logits[:1], temperature=1.0, top_p=0.6)
    assert (nucleus[0] > 0).tolist() == [True, True, False, True, False]  # mass above the 0.19s: 0.52 < 0.6
    torch.testing.assert_close(nucleus[0, [0, 1, 3]], p[[0, 1, 3]] / p[[0, 1, 3]].sum())
    per_row = ops.sampling_probs(logits, temperature=torch.tensor([0.0, 1.0], device=device))
    assert per_row[0].tolist() == greedy[0].tolist()
    torch.testing.assert_close(per_row[1], torch.softmax(logits[1], dim=-1))


@pytest.mark.parametrize("device", DEVICES)
def test_preallocated_workspace(device):
    """A caller's workspace (CUDA graphs, memory planning) gives the same tokens; a short or
    mistyped one is rejected by name."""
    g = torch.Generator().manual_seed(12)
    batch, n, vocab = 5, 3, 9000
    logits = torch.randn(batch, n + 1, vocab, generator=g)
    probs = torch.softmax(logits, dim=-1)
    draft = logits.argmax(dim=-1)[:, :n].contiguous()
    draft[0, 1] = 3
    greedy_bytes = ops.spec_verify_workspace_bytes(batch, n, vocab, False)
    sampling_bytes = ops.spec_verify_workspace_bytes(batch, n, vocab, True)
    assert greedy_bytes == 2 * batch * (n + 1) * (vocab // 2048) * 4 and sampling_bytes == batch * 9 * 4
    d, lg, pr = draft.to(device), logits.to(device), probs.to(device)
    for ws in (torch.empty(greedy_bytes, dtype=torch.uint8, device=device),):
        got = ops.spec_verify_greedy(d, lg, workspace=ws)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(got, reference.spec_verify_greedy(draft, logits)))
    ws = torch.empty(sampling_bytes + 100, dtype=torch.uint8, device=device)
    out = (poisoned((batch, n + 1), torch.int32, device), poisoned((batch,), torch.int32, device))
    ops.spec_verify_sampling(d, None, pr, 3, 4, workspace=ws, out=out)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(out, reference.spec_verify_sampling(draft, None, probs, 3, 4)))
    with pytest.raises(RuntimeError, match=f"argument 'workspace' must hold at least {greedy_bytes} bytes"):
        ops.spec_verify_greedy(d, lg, workspace=torch.empty(greedy_bytes - 1, dtype=torch.uint8, device=device))
    with pytest.raises(RuntimeError, match="argument 'workspace' must have dtype"):
        ops.spec_verify_sampling(d, None, pr, 3, 4, workspace=torch.empty(sampling_bytes, device=device))
