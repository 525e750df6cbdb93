"""CUDA-graph capture and replay of the decode target forward, per batch-size bucket (DESIGN §6b).

The decode forward is a function of three device tensors, ``ids``/``positions [B, T]`` and the
block table ``[B, W]`` (:meth:`glm52.engine.Engine._decode_forward`), and reads nothing on the host,
so it can be captured once per ``(batch bucket, T, W)`` and replayed with new inputs copied into
the captured buffers. Batches are padded up to a power of two with padding rows (position −1,
block table −1): they store nothing in the cache, and every op is row-wise, so they never touch
the real rows.

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
    ids: torch.Tensor
    positions: torch.Tensor
    table: torch.Tensor
    outputs: tuple[torch.Tensor, ...]


class DecodeGraphs:
    """``graphs(ids, positions, table)`` -> what ``forward(ids, positions, table)`` returns (a
    tuple of tensors with the batch first), replayed from a graph captured per shape key.

    The results are views of the captured output buffers: read them before the next call.
    """

    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
                 ) -> None:
        self.forward = forward
        self.captured: dict[tuple[int, int, int], _Captured] = {}
        self._pool = None  # one memory pool shared by every captured graph

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch, tokens = ids.shape
        key = (batch_bucket(batch), tokens, table.shape[1])
        entry = self.captured.get(key) or self._capture(key, ids)
        entry.ids.zero_()
        entry.positions.fill_(-1)
        entry.table.fill_(-1)
        entry.ids[:batch].copy_(ids)
        entry.positions[:batch].copy_(positions)
        entry.table[:batch].copy_(table)
        entry.graph.replay()
        return tuple(out[:batch] for out in entry.outputs)

    def _capture(self, key: tuple[int, int, int], like: torch.Tensor) -> _Captured:
        bucket, tokens, width = key
        device = like.device
        ids = torch.zeros(bucket, tokens, dtype=like.dtype, device=device)
        positions = torch.full((bucket, tokens), -1, dtype=torch.int64, device=device)
        table = torch.full((bucket, width), -1, dtype=torch.int32, device=device)
        # Warm up on a side stream first (lazy initialization and workspace allocations must not
        # happen during capture); all-padding inputs write nothing into the cache.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self.forward(ids, positions, table)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self.forward(ids, positions, table)
        self._pool = graph.pool()
        entry = self.captured[key] = _Captured(graph, ids, positions, table, tuple(outputs))
        return entry
