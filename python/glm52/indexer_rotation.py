"""The normalized Hadamard rotation production FP8 indexers apply to q and k before quantizing
(DeepSeek-V3.2 reference ``rotate_activation``, vLLM, SGLang; DESIGN §2.1).

``hadamard_rotate(x) = x · H_n / sqrt(n)`` over the last dim (n a power of two; 128 for GLM-5.x).
``H_n`` is the Sylvester Hadamard matrix, symmetric with ``H_n H_n = n I``, so rotating both q and k
leaves every exact score ``q · k`` unchanged; only the FP8 rounding moves.

Measured here (tests/test_indexer_hadamard.py, e4m3 recipe of DESIGN §2.1, k = 512 of 8192): on
i.i.d. Gaussian inputs the rotation changes nothing (~96.6% agreement with the exact top-k either
way); on keys with a few large *offset* channels (the common LLM outlier) it makes the FP8 top-k
clearly worse, because e4m3 is a floating-point format that already keeps each channel's relative
precision, and the rotation mixes the large common offset into every channel. So the model's FP8
indexer does not rotate (a checkpoint trained with the rotation would need it: the scores are the
same, so turning it on later is a two-line change in ``Indexer``).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["hadamard_matrix", "hadamard_rotate"]


@functools.lru_cache(maxsize=8)
def _hadamard_cpu(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h * n**-0.5


def hadamard_matrix(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalized ``[n, n]`` fp32 Sylvester Hadamard matrix (orthogonal and symmetric)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"the Hadamard size must be a power of two, got {n}")
    return _hadamard_cpu(n).to(device)


def hadamard_rotate(x: torch.Tensor) -> torch.Tensor:
    """``x [..., n]`` rotated by the normalized Hadamard transform over its last dim, in fp32."""
    return x.float() @ hadamard_matrix(x.shape[-1], x.device)
