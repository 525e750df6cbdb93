"""Typed wrappers over ``torch.ops.glm52.*``, one module per op family, all re-exported here.

Each op runs on the device of its inputs: CUDA kernels for CUDA tensors (when the extension was
built with CUDA), C++ CPU kernels otherwise. All ops trace under ``torch.compile(fullgraph=True)``
(each family registers its fake implementations beside its wrappers) and are safe in CUDA graphs
unless their docstring says otherwise. Bad arguments raise ``RuntimeError`` naming the argument and
what was expected.
"""

from .. import _C  # noqa: F401  (loads the extension: registers torch.ops.glm52.*)
from .attention import (
    indexer_cache_write,
    indexer_logits,
    indexer_logits_paged,
    mla_cache_write,
    sparse_mla_decode,
    sparse_mla_prefill,
    topk_indices,
)
from .quant import dequant_fp8_block, quant_fp8_per_token_group

__all__ = [
    "dequant_fp8_block",
    "indexer_cache_write",
    "indexer_logits",
    "indexer_logits_paged",
    "mla_cache_write",
    "quant_fp8_per_token_group",
    "sparse_mla_decode",
    "sparse_mla_prefill",
    "topk_indices",
]
