"""CUDA-graph capture and replay of the decode forwards, per batch-size bucket (DESIGN §6b).

The decode forwards are functions of device tensors with the batch first and read nothing on the
host: the target forward of ``ids``/``positions [B, T]`` and the block table ``[B, W]``
(:meth:`glm52.engine.Engine._decode_forward`), and the MTP draft forward, which also takes the
hidden states and, for later draft steps, the shared top-k (:meth:`glm52.engine.Engine._mtp_forward`).
Each is captured once per (batch bucket, input shapes) and replayed with new inputs copied into
the captured buffers. Batches are padded up to a power of two with padding rows (position −1,
block table −1, top-k −1): they store nothing in the cache and every op is row-wise, so they
never change the real rows. They are not free: the MoE routes them like any token (id 0), so
they take grouped-GEMM rows (and, under expert dispatch, which the engine does not capture,
capacity).

Written for CUDA and never run on a GPU in this repository's CI (no GPU there); on the CPU the
same forward is proved capture-safe by ``torch.compile(fullgraph=True)`` (tests/test_decode_step.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["DecodeGraphs", "batch_bucket"]


def batch_bucket(batch: int) -> int:
    """The captured batch size serving ``batch`` rows: the next power of two."""
    return 1 << max(batch - 1, 0).bit_length()


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


class DecodeGraphs:
    """``graphs(*inputs)`` -> what ``forward(*inputs)`` returns (a tuple of tensors with the batch
    first), replayed from a graph captured per (batch bucket, input shapes and dtypes).

    ``pads[i]``: the value the padding rows of input i hold (ids and hidden states 0; positions,
    block tables and top-k −1). The results are views of the captured output buffers: read them
    before the next call of the same graphs.
    """

    def __init__(self, forward: Callable[..., tuple[torch.Tensor, ...]], pads: tuple[int, ...] = (0, -1, -1)) -> None:
        self.forward, self.pads = forward, pads
        self.captured: dict[tuple, _Captured] = {}
        self._pool = None  # one memory pool shared by every captured graph

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.pads):
            raise ValueError(f"expected {len(self.pads)} inputs (one per pad value), got {len(inputs)}")
        batch = inputs[0].shape[0]
        key = (batch_bucket(batch),) + tuple((tuple(x.shape[1:]), x.dtype) for x in inputs)
        entry = self.captured.get(key) or self._capture(key, inputs)
        for buffer, x, pad in zip(entry.inputs, inputs, self.pads):
            buffer[:batch].copy_(x)
            buffer[batch:].fill_(pad)  # rows a larger batch filled earlier must not write into the cache
        entry.graph.replay()
        return tuple(out[:batch] for out in entry.outputs)

    def _capture(self, key: tuple, like: tuple[torch.Tensor, ...]) -> _Captured:
        bucket = key[0]
        inputs = tuple(torch.full((bucket, *x.shape[1:]), pad, dtype=x.dtype, device=x.device)
                       for x, pad in zip(like, self.pads))
        device = like[0].device
        # Warm up on a side stream first (lazy initialization and workspace allocations must not
        # happen during capture); all-padding inputs write nothing into the cache.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self.forward(*inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self.forward(*inputs)
        self._pool = graph.pool()
        entry = self.captured[key] = _Captured(graph, inputs, tuple(outputs))
        return entry
