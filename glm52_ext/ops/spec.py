"""Speculative decoding ops: draft verification (greedy and sampled) and the target distribution."""

from __future__ import annotations

import torch

__all__ = [
    "PROB_SUM_TOLERANCE",
    "sample_probs",
    "sampling_probs",
    "spec_verify_greedy",
    "spec_verify_sampling",
    "spec_verify_workspace_bytes",
]

PROB_SUM_TOLERANCE = 1e-3
"""``validate=True`` rejects probability rows whose sum is further than this from 1."""


def spec_verify_workspace_bytes(batch: int, n: int, vocab: int, sampling: bool) -> int:
    """Bytes of device scratch :func:`spec_verify_greedy` (``sampling=False``) or
    :func:`spec_verify_sampling` (``sampling=True``) use at most for ``[batch, n]`` drafts over
    ``vocab`` tokens: the size of their optional ``workspace`` (uint8, 16-byte aligned). Without one
    the CUDA kernels take it from the caching allocator; the CPU twins need none."""
    return torch.ops.glm52.spec_verify_workspace_bytes(batch, n, vocab, sampling)


def spec_verify_greedy(
    draft: torch.Tensor,
    target_logits: torch.Tensor,
    *,
    workspace: torch.Tensor | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify draft tokens against the target model's argmax (greedy speculative decoding).

    One pass over the logits: the argmax of every row is fused with the comparison.

    Parameters
    ----------
    draft : torch.Tensor
        ``[B, n]`` int32 or int64, contiguous, ``n >= 1``: the draft tokens ``d_0..d_{n-1}``.
    target_logits : torch.Tensor
        ``[B, n + 1, V]`` bfloat16, float16 or float32, contiguous: the target's logits at the last
        verified token and at each draft token (row j scores the token after ``d_{j-1}``).
    workspace : torch.Tensor, optional
        Preallocated uint8 scratch of at least :func:`spec_verify_workspace_bytes` bytes.
    out : (tokens, num_emitted), optional
        Preallocated int32 ``[B, n + 1]`` and ``[B]``, contiguous, e.g. for CUDA graphs.

    Returns
    -------
    (tokens, num_emitted) : tuple of torch.Tensor
        With ``a_j = argmax target_logits[b, j]`` (ties to the lowest index; a NaN counts as the
        largest value, as in ``torch.argmax``): ``d_j`` is accepted while ``d_j == a_j``; at the
        first mismatch k the target's ``a_k`` is emitted, after n acceptances the bonus ``a_n``.
        ``tokens[b, :k+1] = a[:k+1]``, −1 after; ``num_emitted[b] = k + 1`` in ``[1, n + 1]``.
        No host synchronization.
    """
    if out is None:
        return torch.ops.glm52.spec_verify_greedy(draft, target_logits, workspace)
    torch.ops.glm52.spec_verify_greedy_out(draft, target_logits, workspace, tokens=out[0], num_emitted=out[1])
    return out


def spec_verify_sampling(
    draft: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    seed: int | torch.Tensor,
    offset: int | torch.Tensor,
    *,
    validate: bool = False,
    workspace: torch.Tensor | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling: the emitted tokens are distributed exactly as sampling the target.

    Parameters
    ----------
    draft : torch.Tensor
        ``[B, n]`` int32 or int64, contiguous, ``n >= 1``. A token outside ``[0, V)`` is rejected.
    draft_probs : torch.Tensor or None
        ``[B, n, V]`` float32, contiguous: the distributions the draft tokens were sampled from.
        None means a deterministic (e.g. greedy) draft: ``q`` is one-hot at ``d_j``.
    target_probs : torch.Tensor
        ``[B, n + 1, V]`` float32, contiguous: the target distributions (after temperature,
        top-k and top-p; see :func:`sampling_probs`). Rows are expected to sum to 1.
    seed, offset : int or torch.Tensor
        Philox 4x32-10 key and stream: the accept uniform of (b, j) and the sample uniform of
        (b, k) use key ``seed`` and counter ``(b, 2j + purpose, offset)``. Same seed and offset,
        same tokens, on the CPU and the GPU alike; use a new offset for every call (e.g. the
        decode step). As ints both are baked into a captured CUDA graph; as int64 tensors of one
        element on ``draft``'s device the kernel reads them itself, so a graph that advances the
        offset tensor (``offset.add_(1)``) draws fresh randomness at every replay, with no host
        read.
    validate : bool
        Check on the host that every probability row is finite, non-negative and sums to 1
        within :data:`PROB_SUM_TOLERANCE`, and raise ``ValueError`` otherwise. This reads the
        tensors back and synchronizes; the op itself never does.
    workspace : torch.Tensor, optional
        Preallocated uint8 scratch of at least :func:`spec_verify_workspace_bytes` bytes.
    out : (tokens, num_emitted), optional
        Preallocated int32 ``[B, n + 1]`` and ``[B]``, contiguous.

    Returns
    -------
    (tokens, num_emitted) : tuple of torch.Tensor
        ``d_j`` is accepted when ``p_j(d_j) >= q_j(d_j)`` or ``u * q_j(d_j) < p_j(d_j)``; at the
        first rejection k a token is sampled from ``max(p_k - q_k, 0)`` (renormalized), after n
        acceptances the bonus from ``p_n``. ``tokens[b, :k] = d[:k]``, ``tokens[b, k]`` the
        sample, −1 after; ``num_emitted[b] = k + 1``. Sampling is inverse-CDF over the row in a
        fixed fp32 summation order (:func:`glm52_ext.reference.spec.sample_inverse_cdf`), so
        unnormalized rows act as if normalized there; the accept test reads p and q as given. A
        residual with no mass (only through rounding) falls back to ``p_k``; a row with no
        positive finite mass at all gives token 0. Only the n accepted-token probabilities and
        the stop row (plus its draft row) are read. No host synchronization.
    """
    if validate:
        _validate_probs(target_probs, "target_probs")
        if draft_probs is not None:
            _validate_probs(draft_probs, "draft_probs")
    overload = "tensor" if isinstance(seed, torch.Tensor) or isinstance(offset, torch.Tensor) else "default"
    if out is None:
        return getattr(torch.ops.glm52.spec_verify_sampling, overload)(draft, draft_probs, target_probs, seed, offset,
                                                                      workspace)
    getattr(torch.ops.glm52.spec_verify_sampling_out, overload)(
        draft, draft_probs, target_probs, seed, offset, workspace, tokens=out[0], num_emitted=out[1]
    )
    return out


def sample_probs(probs: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs [R, V]`` (float32), drawn by :func:`spec_verify_sampling`'s
    Philox inverse-CDF sampler: exactly its token for a draft that is always rejected (−1) with
    ``target_probs`` row 0 = ``probs``, i.e. the uniform of (row r, position 0, the sample draw) under
    ``seed``/``offset``. No host synchronization; with tensor seed/offset, CUDA-graph safe.

    Returns int32 ``[R]``. Costs one ``[R, 2, V]`` copy of ``probs`` (the op's stop row and bonus row).
    """
    rows, vocab = probs.shape
    draft = torch.full((rows, 1), -1, dtype=torch.int32, device=probs.device)
    target = probs.unsqueeze(1).expand(rows, 2, vocab).contiguous()
    return spec_verify_sampling(draft, None, target, seed, offset)[0][:, 0]


def _validate_probs(probs: torch.Tensor, name: str) -> None:
    if not probs.is_floating_point():
        return  # the op reports the dtype
    bad_values = ~torch.isfinite(probs) | (probs < 0)
    if bool(bad_values.any()):
        raise ValueError(f"spec_verify_sampling: argument '{name}' holds negative or non-finite probabilities")
    error = (probs.double().sum(dim=-1) - 1.0).abs()
    if error.numel() and float(error.max()) > PROB_SUM_TOLERANCE:
        row = tuple(int(i) for i in torch.nonzero(error > PROB_SUM_TOLERANCE)[0])
        raise ValueError(
            f"spec_verify_sampling: argument '{name}' row {row} sums to {1.0 + float(error[row]):.6g}, "
            f"expected 1 within {PROB_SUM_TOLERANCE}"
        )


def sampling_probs(
    logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """The target distribution after temperature, top-k and top-p (a plain torch path, not a kernel).

    Parameters
    ----------
    logits : torch.Tensor
        ``[R, V]`` (any float dtype; computed in float32).
    temperature : float or torch.Tensor
        Scalar or ``[R]``. 0 means greedy: a one-hot distribution at the argmax (ties to the
        lowest index).
    top_k : int or torch.Tensor
        Scalar or ``[R]``; keep the entries whose logit is at least the k-th largest (ties at the
        threshold are all kept); 0 or >= V keeps everything.
    top_p : float or torch.Tensor
        Scalar or ``[R]`` in (0, 1]; after top-k, keep every token whose probability is at least
        that of the last token of the smallest descending prefix reaching mass ``top_p`` (a token
        is kept iff the mass strictly more probable than it is below ``top_p``; ties kept).

    Returns
    -------
    torch.Tensor
        ``[R, V]`` float32 rows summing to 1: ``softmax(logits / T)`` restricted to the kept set
        and renormalized. Sorts each row (top-k/top-p only): for production-size batches this is
        the slow part of sampling on a GPU, not the verification. With Python-number arguments
        no host synchronization (CUDA-graph safe); with tensor arguments one (whether any row
        filters).
    """
    rows, vocab = logits.shape
    x = logits.to(torch.float32)
    argmax = x.argmax(dim=-1, keepdim=True)
    onehot = torch.zeros_like(x).scatter_(1, argmax, 1.0)
    scalars = not any(isinstance(a, torch.Tensor) for a in (temperature, top_k, top_p))
    if scalars and temperature <= 0:
        return onehot
    # Python numbers are decided on the host and expanded on the device (torch.full: no copy from
    # host memory, so the step stays CUDA-graph safe); tensor arguments are decided per row, and
    # whether any row filters is then read back (one host sync).
    t, k, p = (a if isinstance(a, torch.Tensor) else torch.full((), a, dtype=dt, device=x.device)
               for a, dt in ((temperature, torch.float32), (top_k, torch.int64), (top_p, torch.float32)))
    t, k, p = (a.to(device=x.device, dtype=dt).expand(rows)
               for a, dt in ((t, torch.float32), (k, torch.int64), (p, torch.float32)))
    greedy = t <= 0
    x = x / torch.where(greedy, 1.0, t)[:, None]
    filters = (0 < top_k < vocab or top_p < 1) if scalars else bool(((k > 0) & (k < vocab)).any() | (p < 1).any())
    if filters:
        ordered = x.sort(dim=-1, descending=True).values
        k_index = torch.where((k > 0) & (k < vocab), k - 1, vocab - 1).clamp_min(0)
        x = x.masked_fill(x < ordered.gather(1, k_index[:, None]), float("-inf"))
        probs = torch.softmax(x, dim=-1)
        ordered_p = probs.sort(dim=-1, descending=True).values
        mass_above = ordered_p.cumsum(dim=-1) - ordered_p
        last = ((mass_above < p[:, None]).sum(dim=-1) - 1).clamp_min(0)
        threshold = ordered_p.gather(1, last[:, None])
        probs = torch.where(probs >= threshold, probs, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    else:
        probs = torch.softmax(x, dim=-1)
    return probs if scalars else torch.where(greedy[:, None], onehot, probs)


# Fake (meta) implementations: shapes and dtypes only, for torch.compile. Out-variants return nothing.


def _fake_outputs(draft):
    return draft.new_empty((draft.shape[0], draft.shape[1] + 1), dtype=torch.int32), draft.new_empty(
        (draft.shape[0],), dtype=torch.int32
    )


@torch.library.register_fake("glm52::spec_verify_greedy")
def _spec_verify_greedy(draft, target_logits, workspace=None):
    torch._check(draft.dim() == 2, lambda: f"glm52.spec_verify_greedy: argument 'draft' must be 2-D [B, n], got {list(draft.shape)}")
    return _fake_outputs(draft)


@torch.library.register_fake("glm52::spec_verify_greedy_out")
def _spec_verify_greedy_out(draft, target_logits, workspace=None, *, tokens, num_emitted):
    return None


@torch.library.register_fake("glm52::spec_verify_sampling")
def _spec_verify_sampling(draft, draft_probs, target_probs, seed, offset, workspace=None):
    torch._check(draft.dim() == 2, lambda: f"glm52.spec_verify_sampling: argument 'draft' must be 2-D [B, n], got {list(draft.shape)}")
    return _fake_outputs(draft)


@torch.library.register_fake("glm52::spec_verify_sampling_out")
def _spec_verify_sampling_out(draft, draft_probs, target_probs, seed, offset, workspace=None, *, tokens, num_emitted):
    return None


@torch.library.register_fake("glm52::spec_verify_sampling.tensor")
def _spec_verify_sampling_tensor(draft, draft_probs, target_probs, seed, offset, workspace=None):
    torch._check(draft.dim() == 2, lambda: f"glm52.spec_verify_sampling: argument 'draft' must be 2-D [B, n], got {list(draft.shape)}")
    return _fake_outputs(draft)


@torch.library.register_fake("glm52::spec_verify_sampling_out.tensor")
def _spec_verify_sampling_out_tensor(draft, draft_probs, target_probs, seed, offset, workspace=None, *, tokens,
                                     num_emitted):
    return None
