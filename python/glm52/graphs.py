"""Decode forwards run per batch-size bucket: replayed from CUDA graphs, or compiled by
``torch.compile`` (the CPU analogue: one compiled step instead of hundreds of eager ops) (DESIGN §6b).

The decode forwards are functions of device tensors with the batch first and read nothing on the
host: the target forward of ``ids``/``positions [B, T]`` and the block table ``[B, W]``
(:meth:`glm52.engine.Engine._decode_forward`), and the draft forward of a speculative round, which
also takes the target's hidden states (:meth:`glm52.engine.Engine._draft_forward`).
Each is prepared once per (batch bucket, input shapes, extra key) and run with new inputs copied
into the prepared buffers. Batches are padded up to a power of two (or a bucket the caller gives)
with padding rows (position −1, block table −1): they store nothing in the cache and
every op is row-wise, so they never change the real rows. They are not free: the MoE routes them
like any token (id 0), so they take grouped-GEMM rows and, under expert dispatch, capacity.

Every call runs the forward exactly once, the call that prepares a shape included: under expert
dispatch each run is a round of collectives its EP peers answer once (:mod:`glm52.lockstep`).

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
        """Run ``forward(*inputs)`` once for real, then capture it; -> a call whose first use returns
        that run's outputs and whose later uses replay the graph and return the captured outputs
        (overwritten by the next replay)."""
        device = inputs[0].device
        # The real run goes first, on a side stream: lazy initialization and workspace allocations
        # must not happen during capture. Capture itself executes nothing.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            first = [tuple(self.forward(*inputs))]
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = tuple(self.forward(*inputs))
        self._pool = graph.pool()

        def replay() -> tuple[torch.Tensor, ...]:
            if first:
                return first.pop()
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
        """-> a call that runs the step compiled for the shapes of ``inputs`` on them (its first
        use compiles: tracing executes nothing, so the step still runs once)."""
        forward = self.forward

        def step(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return forward(*args)
        options = {"cpp_wrapper": True} if self.backend == "inductor" else None
        # recompile_limit=1: a second entry (which would make guards matter again) fails loudly.
        compiled = torch.compile(step, backend=self.backend, fullgraph=True, dynamic=False, options=options,
                                 isolate_recompiles=True, recompile_limit=1)
        compiled_once = []

        def run() -> tuple[torch.Tensor, ...]:
            if not compiled_once:  # the first call compiles, under the default stance
                compiled_once.append(True)
                return tuple(compiled(*inputs))
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return tuple(compiled(*inputs))
        return run


@dataclass
class _Prepared:
    inputs: tuple[torch.Tensor, ...]
    run: Callable[[], tuple[torch.Tensor, ...]]


class DecodeGraphs:
    """``graphs(*inputs, bucket=None, key=())`` -> what ``forward(*inputs)`` returns (a tuple of
    tensors with the batch first), run by ``runner`` (:class:`GraphReplay` or :class:`CompiledStep`
    of ``forward``) from buffers prepared per (batch bucket, input shapes and dtypes, ``key``).
    ``bucket``: the prepared batch size (default :func:`batch_bucket` of the batch); ``key``: what
    else the forward's graph depends on (hashable; the expert dispatch capacity).

    ``pads[i]``: the value the padding rows of input i hold (ids and hidden states 0; positions,
    block tables −1). The results may be views of the runner's output buffers: read them
    before the next call of the same graphs.
    """

    def __init__(self, runner: GraphReplay | CompiledStep, pads: tuple[int, ...] = (0, -1, -1)) -> None:
        self.runner, self.pads = runner, pads
        self.captured: dict[tuple, _Prepared] = {}

    def __call__(self, *inputs: torch.Tensor, bucket: int | None = None, key: tuple = ()) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.pads):
            raise ValueError(f"expected {len(self.pads)} inputs (one per pad value), got {len(inputs)}")
        batch = inputs[0].shape[0]
        bucket = batch_bucket(batch) if bucket is None else bucket
        if bucket < batch:
            raise ValueError(f"bucket ({bucket}) must hold the batch ({batch} rows)")
        full = (bucket,) + tuple((tuple(x.shape[1:]), x.dtype) for x in inputs) + tuple(key)
        entry = self.captured.get(full)
        buffers = entry.inputs if entry else tuple(torch.empty((bucket, *x.shape[1:]), dtype=x.dtype, device=x.device)
                                                   for x in inputs)
        for buffer, x, pad in zip(buffers, inputs, self.pads):
            buffer[:batch].copy_(x)
            buffer[batch:].fill_(pad)  # rows a larger batch filled earlier must not write into the cache
        if entry is None:  # prepared on this call's inputs: its first run is this call's
            entry = self.captured[full] = _Prepared(buffers, self.runner.prepare(buffers))
        return tuple(out[:batch] for out in entry.run())
