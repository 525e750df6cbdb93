"""Deterministic GPU-cost counters: dispatcher ops and host syncs, per step and per layer (DESIGN §6b).

A decode step is paid once per layer per token, so its cost is counted, not timed: every
non-view ATen op the dispatcher runs (on a GPU each is at least one kernel launch) and every op
that makes the host wait for device values (a *host sync*). :class:`OpCounter` counts both on any
device, so a CPU run shows what a GPU run would pay.

What counts as a host sync (:func:`sync_reason`):

- ``aten._local_scalar_dense``, ``aten.is_nonzero``, ``aten.equal``: ``item()``, ``int(t)``,
  ``bool(t)``, ``if t:`` and tensor comparison on the host;
- ops whose output shape depends on values: ``nonzero``, ``unique*``, ``masked_select``,
  ``repeat_interleave`` without ``output_size``, ``bincount``, ``argwhere``, and indexing or
  ``index_put_`` with a boolean mask;
- a copy that lands on the CPU from another device (``.cpu()``, ``.to("cpu")``);
- ``Tensor.tolist()`` and ``Tensor.numpy()`` at the Python level (on CPU tensors they read memory
  without any ATen op, so the dispatcher alone would miss them).

View ops (``view``, ``slice``, ``select``, ``expand``, ``transpose`` ...) launch nothing and are
not counted as ops.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter", "OpCounts", "sync_reason"]

aten = torch.ops.aten

# Ops that always read device values on the host.
_HOST_READS = {"_local_scalar_dense", "is_nonzero", "equal"}
# Ops whose output size depends on tensor values (the host must wait to size the output).
_VALUE_SHAPED = {"nonzero", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
                 "unique_dim_consecutive", "masked_select", "bincount", "argwhere"}
# Not declared as views, but they only make a new tensor header over the same storage (no launch).
_METADATA_ONLY = {aten._unsafe_view.default, aten.lift_fresh.default}
# Python-level reads that bypass the dispatcher on CPU tensors.
_PYTHON_READS = {torch.Tensor.tolist, torch.Tensor.numpy}


def _is_bool_tensor(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.bool


def sync_reason(func, args, kwargs) -> str | None:
    """Why ``func(*args, **kwargs)`` synchronizes with the host, or None when it does not."""
    name = func._schema.name.split("::")[-1]
    if name in _HOST_READS or name in _VALUE_SHAPED:
        return name
    if name == "repeat_interleave" and func is not aten.repeat_interleave.self_int and \
            kwargs.get("output_size") is None:
        return "repeat_interleave without output_size"
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(_is_bool_tensor(i) for i in indices if i is not None):
            return f"{name} with a boolean mask"
    if name in ("_to_copy", "copy_", "to"):
        src = args[1] if name == "copy_" else args[0]
        dst_device = args[0].device if name == "copy_" else kwargs.get("device")
        if isinstance(src, torch.Tensor) and src.device.type != "cpu" and \
                dst_device is not None and torch.device(dst_device).type == "cpu":
            return "device-to-host copy"
    return None


@dataclass
class OpCounts:
    """What :class:`OpCounter` saw. ``per_layer[i]``: non-view ops while decoder layer ``i`` ran
    (the MTP layers included, by their layer index); ``sync_sites``: how many syncs of each kind."""

    ops: int = 0
    syncs: int = 0
    per_layer: Counter = field(default_factory=Counter)
    op_names: Counter = field(default_factory=Counter)
    sync_sites: Counter = field(default_factory=Counter)

    def ops_per_layer(self, layers: list[int] | None = None) -> float:
        """Mean non-view ops per layer over ``layers`` (default: every layer that ran)."""
        layers = sorted(self.per_layer) if layers is None else layers
        return sum(self.per_layer[i] for i in layers) / len(layers) if layers else 0.0


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, owner: OpCounter) -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.owner._record(func, args, kwargs)
        return func(*args, **kwargs)


class _PythonReadCounter(TorchFunctionMode):
    def __init__(self, owner: OpCounter) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PYTHON_READS:
            self.owner._sync(f"Tensor.{func.__name__}")
            with self.owner._quiet():  # the copy to the host inside is the same sync
                return func(*args, **kwargs)
        return func(*args, **kwargs)


class OpCounter:
    """Context manager counting non-view ATen ops and host syncs (see the module docstring).

    ``OpCounter(model)`` also attributes ops to the decoder layer running them (forward hooks on
    ``model.model.layers``). Results accumulate in :attr:`counts` (an :class:`OpCounts`).

    >>> with OpCounter(model) as counter:
    ...     engine.generate(prompts, 8)
    >>> counter.counts.syncs, counter.counts.ops_per_layer()
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        self.counts = OpCounts()
        self._layers = list(model.model.layers) if model is not None else []
        self._layer: int | None = None
        self._hooks: list = []
        self._muted = 0

    def _record(self, func, args, kwargs) -> None:
        if self._muted:
            return
        reason = sync_reason(func, args, kwargs)
        if reason is not None:
            self._sync(reason)
        if func.is_view or func in _METADATA_ONLY:
            return
        self.counts.ops += 1
        self.counts.op_names[func._schema.name.split("::")[-1]] += 1
        if self._layer is not None:
            self.counts.per_layer[self._layer] += 1

    def _sync(self, reason: str) -> None:
        self.counts.syncs += 1
        self.counts.sync_sites[reason] += 1

    def _quiet(self):
        counter = self

        class Quiet:
            def __enter__(self):
                counter._muted += 1

            def __exit__(self, *exc):
                counter._muted -= 1

        return Quiet()

    def __enter__(self) -> OpCounter:
        for layer in self._layers:
            self._hooks.append(layer.register_forward_pre_hook(self._enter_layer))
            self._hooks.append(layer.register_forward_hook(self._leave_layer))
        self._modes = (_PythonReadCounter(self), _DispatchCounter(self))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _enter_layer(self, module, args) -> None:
        self._layer = module.layer_idx

    def _leave_layer(self, module, args, output) -> None:
        self._layer = None
