"""Load a Hugging Face safetensors checkpoint (DESIGN §2.2) into a model built on the meta device.

Everything is checked before anything is assigned: names (missing, unexpected), shapes, dtypes and
FP8 companions from the shard headers first, then every tensor is read into fresh storage, and
only when all of it succeeded are the model's parameters swapped in. Errors name the tensor and
the file.

A tensor- or expert-parallel shard (:func:`glm52.parallel.build_parallel_model`) loads the same way:
a module with a ``shard`` (:class:`glm52.parallel.ShardSlice`) reads only its slice of each
checkpoint tensor (``get_slice``), FP8 block scales cut with it; the routed experts of other ranks
are skipped unread.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from . import kernels
from .layers import Experts, Linear

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SCALE_SUFFIX = "_scale_inv"
FP8_BLOCK = 128
FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
FP8_DTYPE = "F8_E4M3"


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: names the tensor and the file."""


@dataclass(frozen=True)
class Slot:
    """Where checkpoint tensor lives in the model: ``module.<attr>``, row ``expert`` of a stack."""

    module: nn.Module
    attr: str
    shape: tuple[int, ...]
    expert: int | None = None

    @property
    def quantizable(self) -> bool:
        return isinstance(self.module, Linear) and self.attr == "weight"


def checkpoint_layout(model: nn.Module) -> dict[str, Slot]:
    """Every checkpoint tensor name the model expects (without FP8 companions) -> its slot."""
    layout: dict[str, Slot] = {}
    stacked: list[str] = []  # prefixes of Experts modules, whose tensors are listed per expert
    for prefix, module in model.named_modules():
        if any(prefix.startswith(p) for p in stacked):
            continue
        if isinstance(module, Experts):
            stacked.append(prefix + ".")
            for proj in ("gate_proj", "up_proj", "down_proj"):
                linear = getattr(module, proj)
                for e in range(module.num_experts):
                    name = f"{prefix}.{module.first_expert + e}.{proj}.weight"
                    layout[name] = Slot(linear, "weight", tuple(linear.weight.shape[1:]), e)
            continue
        dot = f"{prefix}." if prefix else ""
        for attr, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if attr != "weight_scale_inv":
                layout[f"{dot}{attr}"] = Slot(module, attr, tuple(t.shape))
    return layout


def scale_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*shape[:-2], -(-shape[-2] // FP8_BLOCK), -(-shape[-1] // FP8_BLOCK))


def _ignorable(name: str, model: nn.Module) -> bool:
    """GLM-5/5.1 store an indexer on every layer; on layers the config marks shared it is unused."""
    m = re.match(r"model\.layers\.(\d+)\.self_attn\.indexer\.", name)
    return m is not None and int(m.group(1)) < model.config.num_hidden_layers and \
        not model.config.has_indexer(int(m.group(1)))


def _foreign_expert(name: str, model: nn.Module) -> bool:
    """A routed expert of this layer that another expert-parallel rank holds."""
    m = re.match(r"(.+)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", name)
    if m is None or not m.group(1).endswith("experts"):
        return False
    try:
        experts = model.get_submodule(m.group(1))
    except AttributeError:
        return False
    e = int(m.group(2))
    return isinstance(experts, Experts) and 0 <= e < model.config.n_routed_experts and \
        not experts.first_expert <= e < experts.first_expert + experts.num_experts


def _full_shape(slot: Slot) -> tuple[int, ...]:
    """The checkpoint shape of the tensor whose slice ``slot`` holds."""
    shard = getattr(slot.module, "shard", None) if slot.attr == "weight" else None
    if shard is None:
        return slot.shape
    shape = list(slot.shape)
    shape[shard.dim] *= shard.parts
    return tuple(shape)


def _slice(slot: Slot, full: tuple[int, ...], scale: bool = False) -> tuple[slice, ...] | None:
    """Index of ``slot``'s slice in the checkpoint tensor (or its block scales), None for all of it."""
    shard = getattr(slot.module, "shard", None) if slot.attr == "weight" else None
    if shard is None:
        return None
    start, stop = shard.bounds(full[shard.dim])
    if scale:
        start, stop = start // FP8_BLOCK, -(-stop // FP8_BLOCK)
    return (slice(None),) * shard.dim + (slice(start, stop),)


def _check_grid(name: str, where: str, slot: Slot, full: tuple[int, ...]) -> None:
    """An FP8 slice must start and end on the 128x128 block grid (its scales are per block)."""
    shard = slot.module.shard
    size = full[shard.dim]
    start, stop = shard.bounds(size)
    if start % FP8_BLOCK or (stop % FP8_BLOCK and stop != size):
        raise CheckpointError(
            f"tensor {name} in {where}: splitting dim {shard.dim} ({size}) into {shard.parts} parts of "
            f"{size // shard.parts} breaks the FP8 {FP8_BLOCK}x{FP8_BLOCK} block grid; part counts that work: "
            f"{shard.grid_parts(size)}")


def _weight_map(path: Path) -> tuple[dict[str, str], Path]:
    """Checkpoint tensor name -> shard file name, and the file that said so."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
        return weight_map, index
    single = path / SINGLE_FILE
    if single.is_file():
        with _open(single) as f:
            return {k: SINGLE_FILE for k in f.keys()}, single
    raise CheckpointError(f"{path}: no {INDEX_FILE} or {SINGLE_FILE}")


def _open(file: Path):
    if not file.is_file():
        raise CheckpointError(f"shard {file} is missing")
    try:
        return safe_open(str(file), framework="pt")
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"shard {file} is corrupt or not safetensors: {e}") from None


def load_checkpoint(
    model: nn.Module, path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> None:
    """Fill ``model`` (built on meta) from the checkpoint at ``path``; see the module docstring.

    ``dtype=None`` keeps stored dtypes (FP8 weights stay FP8 with ``weight_scale_inv``); a floating
    ``dtype`` casts everything to it and dequantizes FP8 weights. The router's correction bias is
    always fp32.
    """
    path = Path(path)
    if dtype is not None and (not dtype.is_floating_point or dtype.itemsize < 2):
        raise ValueError(f"dtype must be a 16- or 32-bit floating dtype or None; got {dtype}")
    device = torch.device("cpu") if device is None else torch.device(device)
    layout = checkpoint_layout(model)
    weight_map, source = _weight_map(path)
    handles = {file: _open(path / file) for file in sorted(set(weight_map.values()))}
    headers = {file: set(h.keys()) for file, h in handles.items()}

    def where(name: str) -> str:
        return str(path / weight_map[name])

    for name, file in weight_map.items():
        if name not in headers[file]:
            raise CheckpointError(f"tensor {name}: {source} places it in {path / file}, which does not hold it")
    missing = sorted(set(layout) - set(weight_map))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"tensor {missing[0]}{more} missing from the checkpoint {source}")
    for name in weight_map:
        base = name[: -len(SCALE_SUFFIX)] if name.endswith(SCALE_SUFFIX) else name
        if base not in layout and not _ignorable(base, model) and not _foreign_expert(base, model):
            kind = "FP8 scale for an unknown tensor" if base != name else "unexpected tensor"
            raise CheckpointError(f"{kind} {name} in {where(name)}")

    plan: dict[str, tuple[Slot, str | None]] = {}  # name -> (slot, companion scale name or None)
    for name, slot in layout.items():
        info = handles[weight_map[name]].get_slice(name)
        shape, stored = tuple(info.get_shape()), info.get_dtype()
        if shape != _full_shape(slot):
            raise CheckpointError(f"tensor {name} in {where(name)} has shape {list(shape)}; expected "
                                  f"{list(_full_shape(slot))}")
        companion = name + SCALE_SUFFIX if name + SCALE_SUFFIX in weight_map else None
        if companion is not None:
            if not slot.quantizable:
                raise CheckpointError(f"tensor {companion} in {where(companion)}: {name} cannot be FP8")
            if stored != FP8_DTYPE:
                raise CheckpointError(f"tensor {name} in {where(name)} has dtype {stored} but a {SCALE_SUFFIX} "
                                      f"companion; expected {FP8_DTYPE}")
            s = handles[weight_map[companion]].get_slice(companion)
            if s.get_dtype() != "F32" or tuple(s.get_shape()) != scale_shape(shape):
                raise CheckpointError(f"tensor {companion} in {where(companion)} is {s.get_dtype()} "
                                      f"{list(s.get_shape())}; expected F32 {list(scale_shape(shape))}")
            if _slice(slot, shape) is not None:
                _check_grid(name, where(name), slot, shape)
        elif stored not in FLOAT_DTYPES:
            hint = f" without a {SCALE_SUFFIX} companion" if stored == FP8_DTYPE else ""
            raise CheckpointError(f"tensor {name} in {where(name)} has dtype {stored}{hint}; expected one of "
                                  f"{sorted(FLOAT_DTYPES)}" + (f" or {FP8_DTYPE} with a scale" if slot.quantizable else ""))
        plan[name] = (slot, companion)

    stacks = _check_stacks(plan, where)
    fresh: dict[tuple[int, str], torch.Tensor] = {}  # (id(module), attr) -> new tensor
    modules: dict[int, nn.Module] = {}

    def read(name: str, index: tuple[slice, ...] | None) -> torch.Tensor:
        try:
            return read_tensor(handles[weight_map[name]], name, index)
        except Exception as e:
            raise CheckpointError(f"tensor {name} in {where(name)} could not be read (corrupt shard?): {e}") from None

    for name, (slot, companion) in tqdm(plan.items(), desc="loading", unit="tensor", file=sys.stderr,
                                        disable=None, leave=False):
        full = _full_shape(slot)
        tensor = read(name, _slice(slot, full))
        scale = read(companion, _slice(slot, full, scale=True)) if companion is not None else None
        if slot.attr == "e_score_correction_bias":
            tensor = tensor.float()
        elif scale is not None and dtype is not None:
            tensor, scale = kernels.dequant_fp8_block(tensor, scale, out_dtype=dtype), None
        elif dtype is not None:
            tensor = tensor.to(dtype)
        modules[id(slot.module)] = slot.module
        targets = [(slot.attr, tensor)] + ([("weight_scale_inv", scale)] if scale is not None else [])
        for attr, t in targets:
            key = (id(slot.module), attr)
            if slot.expert is None:
                fresh[key] = t.to(device)
            else:
                if key not in fresh:
                    fresh[key] = torch.empty((stacks[id(slot.module)], *t.shape), dtype=t.dtype, device=device)
                fresh[key][slot.expert] = t

    for (mid, attr), t in fresh.items():
        module = modules[mid]
        if attr in module._buffers:
            module._buffers[attr] = t
        else:
            module._parameters[attr] = nn.Parameter(t, requires_grad=False)


def read_tensor(handle, name: str, index: tuple[slice, ...] | None) -> torch.Tensor:
    """Tensor ``name`` of an open shard, or only its slice ``index`` (read from disk alone)."""
    if index is None:
        return handle.get_tensor(name)
    return handle.get_slice(name)[index].contiguous()


def _check_stacks(plan: dict[str, tuple[Slot, str | None]], where) -> dict[int, int]:
    """Stacked expert weights must all be FP8 or all high precision: returns stack sizes."""
    kinds: dict[int, tuple[str, bool]] = {}
    sizes: dict[int, int] = {}
    for name, (slot, companion) in plan.items():
        if slot.expert is None:
            continue
        mid = id(slot.module)
        sizes[mid] = slot.module.weight.shape[0]
        first = kinds.setdefault(mid, (name, companion is not None))
        if first[1] != (companion is not None):
            raise CheckpointError(f"tensor {name} in {where(name)} is {'FP8' if companion else 'not FP8'} but {first[0]} is "
                                  f"{'FP8' if first[1] else 'not FP8'}: experts of one layer must match")
    return sizes
