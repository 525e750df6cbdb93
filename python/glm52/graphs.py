"""Decode forwards run per batch-size bucket: replayed from CUDA graphs, or compiled by
``torch.compile`` (the CPU analogue: one compiled step instead of hundreds of eager ops) (DESIGN §6b).

The decode forwards are functions of device tensors with the batch first and read nothing on the
host: the target forward of ``ids``/``positions [B, T]`` and the block table ``[B, W]``
(:meth:`glm52.engine.Engine._decode_forward`), and the MTP draft forward, which also takes the
hidden states and, for later draft steps, the shared top-k (:meth:`glm52.engine.Engine._mtp_forward`).
Each is prepared once per (batch bucket, input shapes) and run with new inputs copied into the
prepared buffers. Batches are padded up to a power of two with padding rows (position −1,
block table −1, top-k −1): they store nothing in the cache and every op is row-wise, so they
never change the real rows. They are not free: the MoE routes them like any token (id 0), so
they take grouped-GEMM rows (and, under expert dispatch, which the engine does not capture,
capacity).

How a prepared shape runs is the runner's business: :class:`GraphReplay` captures a CUDA graph
(written for CUDA and never run on a GPU in this repository's CI), :class:`CompiledStep` calls the
forward compiled with ``torch.compile(fullgraph=True, dynamic=False)``, which succeeds only
because the forward reads nothing on the host (tests/test_decode_step.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["CompiledStep", "DecodeGraphs", "GraphReplay", "batch_bucket"]

Forward = Callable[..., tuple[torch.Tensor, ...]]


def batch_bucket(batch: int) -> int:
    """The prepared batch size serving ``batch`` rows: the next power of two."""
    return 1 << max(batch - 1, 0).bit_length()


class GraphReplay:
    """Runner: one CUDA graph per prepared shape, all sharing one memory pool."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self._pool = None  # one memory pool shared by every captured graph

    def prepare(self, inputs: tuple[torch.Tensor, ...]) -> Callable[[], tuple[torch.Tensor, ...]]:
        """Capture ``forward(*inputs)``; -> a call that replays it and returns the captured outputs
        (overwritten by the next replay)."""
        device = inputs[0].device
        # Warm up on a side stream first (lazy initialization and workspace allocations must not
        # happen during capture); all-padding inputs write nothing into the cache.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self.forward(*inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = tuple(self.forward(*inputs))
        self._pool = graph.pool()

        def replay() -> tuple[torch.Tensor, ...]:
            graph.replay()
            return outputs
        return replay


class CompiledStep:
    """Runner: ``forward`` compiled by ``torch.compile(fullgraph=True, dynamic=False)`` with
    ``backend``, one compiled region per prepared shape.

    With inductor on CPU the graph runs from a C++ wrapper (``cpp_wrapper``): the tiny model's step
    is a few hundred small kernels, and a Python wrapper would spend about as long calling them as
    the eager step spends dispatching its ops. Like a replayed CUDA graph, a prepared step is not
    re-checked when it runs: each region is isolated (``isolate_recompiles``) and holds exactly one
    compiled entry, for its own input buffers, so its guards (about 0.3 ms a call on the tiny model,
    most of them on the model's parameters) are skipped (``skip_guard_eval_unsafe``). What was
    compiled assumes, as a captured graph does, that the model's structure, parameter shapes and
    dtypes stay as they were (weights may change in place).
    """

    def __init__(self, forward: Forward, backend: str = "inductor") -> None:
        self.forward, self.backend = forward, backend

    def prepare(self, inputs: tuple[torch.Tensor, ...]) -> Callable[[], tuple[torch.Tensor, ...]]:
        """Compile for the shapes of ``inputs`` now (all-padding inputs write nothing into the cache);
        -> a call that runs the compiled step on them."""
        forward = self.forward

        def step(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return forward(*args)
        options = {"cpp_wrapper": True} if self.backend == "inductor" else None
        # recompile_limit=1: a second entry (which would make guards matter again) fails loudly.
        compiled = torch.compile(step, backend=self.backend, fullgraph=True, dynamic=False, options=options,
                                 isolate_recompiles=True, recompile_limit=1)
        compiled(*inputs)

        def run() -> tuple[torch.Tensor, ...]:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return tuple(compiled(*inputs))
        return run


@dataclass
class _Prepared:
    inputs: tuple[torch.Tensor, ...]
    run: Callable[[], tuple[torch.Tensor, ...]]


class DecodeGraphs:
    """``graphs(*inputs)`` -> what ``forward(*inputs)`` returns (a tuple of tensors with the batch
    first), run by ``runner`` (:class:`GraphReplay` or :class:`CompiledStep` of ``forward``) from
    buffers prepared per (batch bucket, input shapes and dtypes).

    ``pads[i]``: the value the padding rows of input i hold (ids and hidden states 0; positions,
    block tables and top-k −1). The results may be views of the runner's output buffers: read them
    before the next call of the same graphs.
    """

    def __init__(self, runner: GraphReplay | CompiledStep, pads: tuple[int, ...] = (0, -1, -1)) -> None:
        self.runner, self.pads = runner, pads
        self.captured: dict[tuple, _Prepared] = {}

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.pads):
            raise ValueError(f"expected {len(self.pads)} inputs (one per pad value), got {len(inputs)}")
        batch = inputs[0].shape[0]
        key = (batch_bucket(batch),) + tuple((tuple(x.shape[1:]), x.dtype) for x in inputs)
        entry = self.captured.get(key) or self._prepare(key, inputs)
        for buffer, x, pad in zip(entry.inputs, inputs, self.pads):
            buffer[:batch].copy_(x)
            buffer[batch:].fill_(pad)  # rows a larger batch filled earlier must not write into the cache
        return tuple(out[:batch] for out in entry.run())

    def _prepare(self, key: tuple, like: tuple[torch.Tensor, ...]) -> _Prepared:
        bucket = key[0]
        inputs = tuple(torch.full((bucket, *x.shape[1:]), pad, dtype=x.dtype, device=x.device)
                       for x, pad in zip(like, self.pads))
        entry = self.captured[key] = _Prepared(inputs, self.runner.prepare(inputs))
        return entry
