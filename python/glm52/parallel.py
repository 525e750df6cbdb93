"""Tensor, expert and attention-data parallelism over ``torch.distributed`` (DESIGN §6).

World size ``N = tp × dp``; rank ``r`` is in data-parallel group ``r // tp`` with ``tp_rank = r % tp``
(vLLM/SGLang layout). Context-parallel groups are ``cp`` consecutive ranks of a TP group
(``cp_rank = tp_rank % cp``); they split the caches instead of replicating them (:mod:`glm52.context_parallel`).
Expert-parallel groups are ``ep`` consecutive ranks (``ep_rank = r % ep``), so an
EP group is a union of whole TP groups (``ep`` is 1 or a multiple of ``tp``) and global expert ``e``
lives on ``ep_rank e // (E / ep)``.

The parallel model is the single-process model with some modules swapped for shards of themselves
(:func:`build_parallel_model`); the layers keep no parallel logic. Per MoE layer the combine is:

- ``ep = 1``: experts replicated (``tp = 1``) or each expert's intermediate dim split over TP; routed
  and shared partial sums meet in one fp32 all-reduce over the TP group.
- ``ep = tp > 1``: tokens are on every rank of the EP (= TP) group; each rank runs its experts and the
  same single all-reduce combines routed and shared partials.
- ``ep > tp``: the EP group spans data-parallel groups. Each TP rank takes a slice of its group's tokens
  and sends every (token, slot) pair to the expert's owner with ``all_to_all_single`` (rows travel as
  bytes, so FP8 and BF16 both pass gloo); outputs come back to the home rank, which sums the ``k``
  slots in slot order in fp32 exactly as the single-process ``Experts`` does (``moe_unpermute``; so
  DP×EP is bit-identical to one process). Exact splits (``dispatch="exact"``, one host read of the counts) or a
  fixed capacity (``dispatch="capacity"``: no host read, static shapes, CUDA-graph friendly).

A rank whose data-parallel group has run out of work must keep answering its EP peers until every
one of them is done: :func:`serve_experts` does that. Every dispatch round starts with a small
header exchange (active flag, layer, mode, row count) so that a rank can serve the rows of a peer
that is at another layer. The engine prefills with exact dispatch and decodes in lockstep with
capacity dispatch (:mod:`glm52.lockstep`).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import GLM52Config
from .layers import FP8_BLOCK, MLP, Experts, Linear, MoE

BACKEND = "cpu:gloo,cuda:nccl"  # gloo alone where no GPU is visible (NCCL refuses to start without one)
DISPATCH_MODES = ("exact", "capacity")


# ---- layout -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Sizes of the parallel layout; ``cp`` (context parallelism) divides ``tp``."""

    tp: int = 1
    dp: int = 1
    ep: int = 1
    cp: int = 1

    def __post_init__(self) -> None:
        for name in ("tp", "dp", "ep", "cp"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ParallelConfig.{name} must be a positive integer; got {v!r}")
        if self.tp % self.cp:
            raise ValueError(f"ParallelConfig.cp ({self.cp}) must divide tp ({self.tp}): the caches are split over "
                             f"the cp ranks of a tensor-parallel group")
        if self.ep > 1 and self.ep % self.tp:
            raise ValueError(f"ParallelConfig.ep ({self.ep}) must be 1 or a multiple of tp ({self.tp}): "
                             f"an expert-parallel group holds whole tensor-parallel groups")
        if self.world_size % self.ep:
            raise ValueError(f"ParallelConfig.ep ({self.ep}) must divide the world size tp x dp = {self.world_size}")

    @property
    def world_size(self) -> int:
        return self.tp * self.dp

    @property
    def moe_mode(self) -> str:
        """``"replicated"``, ``"tp_split"`` (each expert's intermediate dim over TP), ``"reduce"``
        (experts over the TP group, tokens everywhere) or ``"dispatch"`` (all-to-all across DP groups)."""
        if self.ep == 1:
            return "replicated" if self.tp == 1 else "tp_split"
        return "reduce" if self.ep == self.tp else "dispatch"

    def check_world(self, world_size: int) -> None:
        if self.world_size != world_size:
            raise ValueError(f"ParallelConfig tp ({self.tp}) x dp ({self.dp}) = {self.world_size} must equal the "
                             f"world size ({world_size}, WORLD_SIZE from torchrun)")

    def check_model(self, config: GLM52Config) -> None:
        """Every split this layout makes must be even: a clear error naming the field otherwise."""
        c, tp = config, self.tp
        checks = [("num_attention_heads", c.num_attention_heads, "tp", tp), ("vocab_size", c.vocab_size, "tp", tp),
                  ("intermediate_size", c.intermediate_size, "tp", tp),
                  ("moe_intermediate_size x n_shared_experts", c.moe_intermediate_size * c.n_shared_experts, "tp", tp),
                  ("n_routed_experts", c.n_routed_experts, "ep", self.ep)]
        if self.ep == 1:
            checks.append(("moe_intermediate_size", c.moe_intermediate_size, "tp (ep = 1 splits each expert)", tp))
        for name, size, by, parts in checks:
            if size % parts:
                raise ValueError(f"{name} ({size}) is not divisible by {by} ({parts})")


@dataclasses.dataclass
class ParallelHandle:
    """One rank's place in the layout, and its process groups (None when built without
    ``torch.distributed``, e.g. to size a shard on the meta device)."""

    config: ParallelConfig
    rank: int
    tp_group: object = None
    dp_group: object = None  # the ranks with this tp_rank, one per data-parallel group
    ep_group: object = None
    cp_group: object = None  # cp consecutive ranks of the TP group (None when cp = 1)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.config.world_size:
            raise ValueError(f"rank must be in [0, {self.config.world_size}); got {self.rank}")

    world_size = property(lambda self: self.config.world_size)
    tp_rank = property(lambda self: self.rank % self.config.tp)
    dp_rank = property(lambda self: self.rank // self.config.tp)
    ep_rank = property(lambda self: self.rank % self.config.ep)
    cp_rank = property(lambda self: self.rank % self.config.cp)

    def experts(self, n_routed: int) -> tuple[int, int]:
        """(first global expert, count) held by this rank."""
        per = n_routed // self.config.ep
        return self.ep_rank * per, per


def init_parallel(config: ParallelConfig, timeout_s: float = 600.0) -> ParallelHandle:
    """Join the job torchrun started (RANK, WORLD_SIZE, MASTER_ADDR, ... from the environment),
    create the TP, DP, EP (and CP) process groups and return this rank's handle. Validates the layout
    against the world size before any group is made."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(f"init_parallel: {', '.join(missing)} not set; launch with torchrun "
                             f"(torchrun --nproc-per-node {config.world_size} -m glm52 ...)")
        config.check_world(int(os.environ["WORLD_SIZE"]))
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend=BACKEND if torch.cuda.is_available() else "gloo", timeout=timeout)
    config.check_world(dist.get_world_size())
    rank = dist.get_rank()
    handle = ParallelHandle(config, rank)
    n, tp, ep, cp = config.world_size, config.tp, config.ep, config.cp
    # new_group is collective: every rank creates every group, in the same order.
    for first in range(0, n, tp):
        g = dist.new_group(list(range(first, first + tp)), timeout=timeout)
        if rank in range(first, first + tp):
            handle.tp_group = g
    for j in range(tp):
        g = dist.new_group(list(range(j, n, tp)), timeout=timeout)
        if rank % tp == j:
            handle.dp_group = g
    for first in range(0, n, ep):
        g = dist.new_group(list(range(first, first + ep)), timeout=timeout)
        if rank in range(first, first + ep):
            handle.ep_group = g
    if cp > 1:
        for first in range(0, n, cp):
            g = dist.new_group(list(range(first, first + cp)), timeout=timeout)
            if rank in range(first, first + cp):
                handle.cp_group = g
    return handle


def from_cli(args) -> ParallelHandle | None:
    """The handle for ``glm52 generate --tp/--dp/--ep/--cp`` (None for one process outside torchrun)."""
    config = ParallelConfig(tp=args.tp, dp=args.dp, ep=args.ep, cp=args.cp)
    if config.world_size == 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    return init_parallel(config)


def rank_device(device: str) -> str:
    """``cuda`` means this rank's GPU (LOCAL_RANK) under torchrun."""
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if device == "cuda" else device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- collectives ----------------------------------------------------------------------------------
def all_reduce_fp32(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """Sum of ``x`` over ``group`` in fp32 (gloo would round BF16 at every step), cast back."""
    if size == 1:
        return x
    y = x.float().clone() if x.dtype == torch.float32 else x.float()
    dist.all_reduce(y, group=group)
    return y.to(x.dtype)


def all_gather_rows(x: torch.Tensor, group, size: int, dim: int) -> torch.Tensor:
    """Concatenation along ``dim`` of every rank's equally shaped ``x``."""
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _bytes(x: torch.Tensor) -> torch.Tensor:
    """``x [R, ...]`` as ``uint8 [R, bytes]``: what all-to-all moves (gloo rejects float8)."""
    return x.contiguous().view(torch.uint8).reshape(x.shape[0], math.prod(x.shape[1:]) * x.element_size())


def _all_to_all(rows: torch.Tensor, out_rows: int, send: list[int] | None, recv: list[int] | None,
                group) -> torch.Tensor:
    out = torch.empty(out_rows, rows.shape[1], dtype=rows.dtype, device=rows.device)
    dist.all_to_all_single(out, rows.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
    return out


# ---- shard modules --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ShardSlice:
    """Which slice of a checkpoint tensor a module's weight is: part ``index`` of ``parts`` along
    ``dim`` (of the per-expert ``[out, in]`` tensor), in whole units of ``unit`` rows/columns."""

    dim: int
    index: int
    parts: int
    unit: int = 1

    def bounds(self, full: int) -> tuple[int, int]:
        step = full // self.parts
        return self.index * step, (self.index + 1) * step

    def grid_parts(self, full: int) -> list[int]:
        """Part counts whose slices stay on the FP8 128-block grid."""
        return [p for p in range(1, full // self.unit + 1)
                if (full // self.unit) % p == 0 and (p == 1 or (full // p) % FP8_BLOCK == 0)]


def _shard(module: nn.Module, dim: int, index: int, parts: int, unit: int = 1) -> nn.Module:
    if parts > 1:
        module.shard = ShardSlice(dim, index, parts, unit)
    return module


class RowParallelLinear(Linear):
    """A Linear holding a slice of the input columns; the partial outputs are summed over the group."""

    def __init__(self, in_features: int, out_features: int, handle: ParallelHandle) -> None:
        super().__init__(in_features, out_features)
        self.handle = handle

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        return all_reduce_fp32(super().forward(x, expert), self.handle.tp_group, self.handle.config.tp)


class VocabParallelLMHead(Linear):
    """``lm_head`` rows of this rank's vocab slice; logits gathered so every rank holds full rows."""

    def __init__(self, in_features: int, out_features: int, handle: ParallelHandle) -> None:
        super().__init__(in_features, out_features)
        self.handle = handle

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        return all_gather_rows(super().forward(x, expert), self.handle.tp_group, self.handle.config.tp, dim=-1)


class VocabParallelEmbedding(nn.Embedding):
    """Embedding rows ``[first, first + n)``; other ids give zeros and the TP sum fills them in (exact)."""

    def __init__(self, rows: int, dim: int, first: int, handle: ParallelHandle) -> None:
        super().__init__(rows, dim, _weight=torch.empty(rows, dim), _freeze=True)
        self.first, self.handle = first, handle

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.first
        mine = (local >= 0) & (local < self.num_embeddings)
        out = F.embedding(local.clamp(0, self.num_embeddings - 1), self.weight)
        out = torch.where(mine[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        return all_reduce_fp32(out, self.handle.tp_group, self.handle.config.tp)


class ParallelMoE(MoE):
    """One MoE layer's shard: router replicated, shared expert split over TP, routed experts split
    by the layout's :attr:`ParallelConfig.moe_mode` (see the module docstring)."""

    def __init__(self, config: GLM52Config, handle: ParallelHandle, registry: list | None = None) -> None:
        """``registry``: the model's MoE layers in order (shared by them; this layer appends itself),
        so a rank can serve a peer's rows for any layer."""
        pc = handle.config
        first, count = handle.experts(config.n_routed_experts)
        super().__init__(config, count, first)
        h, tp, t = config.hidden_size, pc.tp, handle.tp_rank
        self.handle, self.mode = handle, pc.moe_mode
        if self.mode == "tp_split":
            self.experts = Experts(h, config.moe_intermediate_size // tp, count, first)
            for proj, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
                _shard(getattr(self.experts, proj), dim, t, tp)
        if self.shared_experts is not None:
            self.shared_experts = _split_mlp(MLP(h, config.moe_intermediate_size * config.n_shared_experts // tp),
                                             t, tp)
        self.dispatch, self.capacity = "exact", 0
        self.registry = [] if registry is None else registry
        self.index = len(self.registry)
        self.registry.append(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "replicated":
            return super().forward(x)
        pc, flat = self.handle.config, x.reshape(-1, x.shape[-1])
        weights, ids = self.gate(flat)
        shared = self.shared_experts(flat) if self.shared_experts is not None else None
        if self.mode in ("tp_split", "reduce"):
            partial = self.experts(flat, weights, ids).float()
            if shared is not None:
                partial = partial + shared.float()
            return all_reduce_fp32(partial, self.handle.tp_group, pc.tp).to(x.dtype).view_as(x)
        # dispatch: each TP rank sends a slice of the group's tokens; the group gathers them back.
        t, tp = flat.shape[0], pc.tp
        chunk = -(-t // tp)
        if self.dispatch == "capacity":
            _check_capacity(self, chunk)  # the TP-shared chunk: the same verdict on every TP rank
        rows = slice(min(self.handle.tp_rank * chunk, t), min((self.handle.tp_rank + 1) * chunk, t))
        routed = dispatch_combine(self, flat[rows], weights[rows], ids[rows])
        if tp > 1:
            routed = all_gather_rows(F.pad(routed, (0, 0, 0, chunk - routed.shape[0])), self.handle.tp_group, tp, 0)[:t]
        if shared is not None:
            routed = routed + all_reduce_fp32(shared, self.handle.tp_group, tp)
        return routed.view_as(x)


def _split_mlp(mlp: MLP, index: int, parts: int) -> MLP:
    """Column-parallel gate/up, row-parallel down (the caller does the reduce)."""
    _shard(mlp.gate_proj, 0, index, parts)
    _shard(mlp.up_proj, 0, index, parts)
    _shard(mlp.down_proj, 1, index, parts)
    return mlp


# ---- expert dispatch -------------------------------------------------------------------------------
# Header each rank sends to every EP peer at the start of a dispatch round.
_ACTIVE, _LAYER, _MODE, _ROWS, _HEADER = 0, 1, 2, 3, 4


def _exchange_header(handle: ParallelHandle, active: int, layer: int, mode: int, rows: torch.Tensor,
                     device: torch.device) -> torch.Tensor:
    ep = handle.config.ep
    send = torch.zeros(ep, _HEADER, dtype=torch.int64, device=device)
    send[:, _ACTIVE], send[:, _LAYER], send[:, _MODE], send[:, _ROWS] = active, layer, mode, rows
    return _all_to_all(send, ep, None, None, handle.ep_group)


def _pack(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.cat((_bytes(x), _bytes(ids.long()[:, None])), dim=1)


def _unpack(rows: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = like.shape[1] * like.element_size()
    x = rows[:, :width].contiguous().view(like.dtype).view(-1, like.shape[1])
    ids = rows[:, width:].contiguous().view(torch.int64).view(-1)
    return x, ids


def _serve(registry: list, rows: torch.Tensor, like: torch.Tensor, layers: list[int],
           splits: list[int]) -> torch.Tensor:
    """Expert outputs (unweighted) for received ``rows``; the rows from peer ``j`` (``splits[j]`` of
    them) are for MoE layer ``layers[j]``; padding rows carry expert id −1 and give zeros."""
    x, ids = _unpack(rows, like)
    ids = ids.int()[:, None]  # the router's id dtype
    ones = torch.ones(ids.shape, dtype=torch.float32, device=x.device)
    if len(set(layers)) == 1:
        return registry[layers[0]].experts(x, ones, ids)
    out, start = [], 0
    for layer, n in zip(layers, splits):
        part = slice(start, start + n)
        out.append(registry[layer].experts(x[part], ones[part], ids[part]))
        start += n
    return torch.cat(out)


def dispatch_combine(moe: ParallelMoE, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Routed-expert output for this rank's tokens ``x [T, H]`` (routing ``weights``/``ids [T, k]``),
    computed on the experts' owners across the EP group and summed here (see module docstring)."""
    handle, pc = moe.handle, moe.handle.config
    t, k = ids.shape
    per = moe.experts.num_experts
    dest = (ids.long() // per).flatten()  # pair p = token * k + slot
    pair_x = x.repeat_interleave(k, dim=0)
    payload = _pack(pair_x, ids.flatten())
    if moe.dispatch == "exact":
        order = torch.argsort(dest, stable=True)
        # scatter_add, not bincount: bincount reads the value range on the host.
        counts = torch.zeros(pc.ep, dtype=torch.long, device=x.device).scatter_add_(0, dest, torch.ones_like(dest))
        header = _exchange_header(handle, 1, moe.index, 0, counts, x.device)
        flat_head = torch.cat((header.flatten(), counts)).tolist()  # the one host read of this mode
        head = [flat_head[i: i + header.shape[1]] for i in range(0, header.numel(), header.shape[1])]
        _check_modes(head, "exact")
        send, recv = flat_head[header.numel():], [r[_ROWS] for r in head]
        got = _all_to_all(payload[order], sum(recv), send, recv, handle.ep_group)
        y = _serve(moe.registry, got, x, [r[_LAYER] if r[_ACTIVE] else moe.index for r in head], recv)
        back = _all_to_all(_bytes(y), t * k, recv, send, handle.ep_group)
        pair_y = torch.empty_like(pair_x)
        pair_y[order] = back.view(x.dtype).view(-1, x.shape[1])
    else:
        cap = _capacity_rows(moe, t, k, per)
        slot = _capacity_slots(dest, pc.ep, cap)
        buf = _pack(torch.zeros(pc.ep * cap, x.shape[1], dtype=x.dtype, device=x.device),
                    torch.full((pc.ep * cap,), -1, dtype=torch.int64, device=x.device))
        buf[slot] = payload
        header = _exchange_header(handle, 1, moe.index, 1, torch.full((pc.ep,), cap, device=x.device), x.device)
        # No host read: peers must be at this layer in the same mode (lockstep decode); checked on the device.
        torch._assert_async(((header[:, _LAYER] == moe.index) & (header[:, _MODE] == 1)
                             & (header[:, _ROWS] == cap) | (header[:, _ACTIVE] == 0)).all(),
                            "capacity dispatch: every EP peer must be at the same MoE layer with the same capacity")
        got = _all_to_all(buf, pc.ep * cap, None, None, handle.ep_group)
        y = _serve(moe.registry, got, x, [moe.index] * pc.ep, [cap] * pc.ep)
        back = _all_to_all(_bytes(y), pc.ep * cap, None, None, handle.ep_group)
        pair_y = back.view(x.dtype).view(-1, x.shape[1])[slot]
    return _combine(pair_y.view(t, k, x.shape[1]), weights, x.dtype)


def _check_modes(head: list[list[int]], mode: str) -> None:
    modes = {r[_MODE] for r in head if r[_ACTIVE]}
    if modes - {DISPATCH_MODES.index(mode)}:
        raise RuntimeError(f"EP peers mix dispatch modes {sorted(DISPATCH_MODES[m] for m in modes)}: set one "
                           f"mode on every rank (set_dispatch)")


def _check_capacity(moe: ParallelMoE, tokens: int) -> None:
    if tokens > moe.capacity:
        raise ValueError(f"capacity dispatch: {tokens} tokens per rank exceed the capacity ({moe.capacity} tokens "
                         f"per rank) given to set_dispatch")


def _capacity_rows(moe: ParallelMoE, t: int, k: int, per: int) -> int:
    _check_capacity(moe, t)  # direct dispatch_combine callers; ParallelMoE.forward checked its chunk already
    return moe.capacity * min(k, per)  # a token sends at most min(k, experts per rank) rows to one peer


def _capacity_slots(dest: torch.Tensor, ep: int, cap: int) -> torch.Tensor:
    """Row of each pair in the ``[ep, cap]`` send buffer: its peer, then its rank among the pairs for
    that peer (pair order). Device arithmetic only."""
    onehot = (dest[:, None] == torch.arange(ep, device=dest.device)).long()  # F.one_hot checks bounds: a sync
    before = (onehot.cumsum(0) - onehot).gather(1, dest[:, None]).view(-1)
    return dest * cap + before


def _combine(pair_y: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``Σ_slots w · y`` per token: fp32 products added in slot order from zero, rounded to ``dtype``
    once at the end: the order and roundings of ``moe_unpermute``, which combines the single-process
    ``Experts`` (so DP×EP stays bit-identical to one process)."""
    terms = pair_y.float() * weights[..., None]
    out = torch.zeros_like(terms[:, 0])
    for j in range(terms.shape[1]):
        out = out + terms[:, j]
    return out.to(dtype)


def set_dispatch(model: nn.Module, mode: str, capacity: int = 0) -> None:
    """Dispatch mode of every MoE layer: ``"exact"`` (prefill; reads the row counts on the host) or
    ``"capacity"`` (decode: at most ``capacity`` tokens per rank, no host read; every EP peer must
    use the same mode and capacity and be in the same forward)."""
    set_layers_dispatch([m for m in model.modules() if isinstance(m, ParallelMoE)], mode, capacity)


def set_layers_dispatch(layers: list[ParallelMoE], mode: str, capacity: int = 0) -> None:
    """:func:`set_dispatch` of the given MoE layers (a model's registry: no walk over its modules,
    which the engine would pay before every decode forward)."""
    if mode not in DISPATCH_MODES:
        raise ValueError(f"mode must be one of {DISPATCH_MODES}; got {mode!r}")
    if mode == "capacity" and capacity < 1:
        raise ValueError(f"capacity must be a positive token count for capacity dispatch; got {capacity}")
    for layer in layers:
        layer.dispatch, layer.capacity = mode, capacity


@torch.no_grad()
def serve_experts(model: nn.Module) -> int:
    """Answer EP peers' dispatch rounds with no tokens of our own until every peer of the EP group
    is here too; returns the number of rounds served. A no-op unless the layout dispatches."""
    handle = getattr(model, "parallel", None)
    if handle is None or handle.config.moe_mode != "dispatch":
        return 0
    registry = next(m for m in model.modules() if isinstance(m, ParallelMoE)).registry
    weight = model.model.embed_tokens.weight
    device = weight.device
    empty = torch.empty(0, model.config.hidden_size, dtype=weight.dtype, device=device)
    ep, rounds = handle.config.ep, 0
    while True:
        head = _exchange_header(handle, 0, -1, 0, torch.zeros(ep, dtype=torch.int64, device=device), device).tolist()
        active = [r for r in head if r[_ACTIVE]]
        if not active:
            return rounds
        rounds += 1
        if active[0][_MODE] == 0:
            recv = [r[_ROWS] if r[_ACTIVE] else 0 for r in head]
            nothing = _pack(empty, torch.empty(0, dtype=torch.int64, device=device))
            got = _all_to_all(nothing, sum(recv), [0] * ep, recv, handle.ep_group)
            layers = [r[_LAYER] if r[_ACTIVE] else active[0][_LAYER] for r in head]
            y = _serve(registry, got, empty, layers, recv)
            _all_to_all(_bytes(y), 0, recv, [0] * ep, handle.ep_group)
        else:
            _serve_capacity_round(registry, active[0][_LAYER], active[0][_ROWS], empty)


def _serve_capacity_round(registry: list, layer: int, cap: int, empty: torch.Tensor) -> None:
    """The data half of a capacity round, from a rank with no tokens of its own: send ``cap`` padding
    rows to every peer, compute MoE layer ``layer``'s experts on the rows received, send them back."""
    handle = registry[layer].handle
    ep, device = handle.config.ep, empty.device
    buf = _pack(torch.zeros(ep * cap, empty.shape[1], dtype=empty.dtype, device=device),
                torch.full((ep * cap,), -1, dtype=torch.int64, device=device))
    got = _all_to_all(buf, ep * cap, None, None, handle.ep_group)
    y = _serve(registry, got, empty, [layer] * ep, [cap] * ep)
    _all_to_all(_bytes(y), ep * cap, None, None, handle.ep_group)


# ---- the parallel model ------------------------------------------------------------------------------
def build_parallel_model(config: GLM52Config, handle: ParallelHandle):
    """This rank's shard of :class:`glm52.model.GLM52ForCausalLM`, parameters on the meta device
    (fill it with :func:`glm52.loader.load_checkpoint`). Needs no process group: a handle made as
    ``ParallelHandle(ParallelConfig(...), rank)`` sizes any rank's shard."""
    from .model import GLM52ForCausalLM

    pc = handle.config
    pc.check_model(config)
    registry: list[ParallelMoE] = []
    tp, t = pc.tp, handle.tp_rank
    c = config
    with torch.device("meta"):
        model = GLM52ForCausalLM(config)
        if pc.world_size == 1:
            model.parallel = handle
            return model
        heads = c.num_attention_heads // tp
        for layer in model.model.layers:
            attn = layer.self_attn
            new = type(attn)(c, attn.layer_idx, num_heads=heads)
            _shard(new.q_b_proj, 0, t, tp, c.qk_head_dim)
            _shard(new.kv_b_proj, 0, t, tp, c.qk_nope_head_dim + c.v_head_dim)
            new.o_proj = _shard(RowParallelLinear(heads * c.v_head_dim, c.hidden_size, handle), 1, t, tp, c.v_head_dim)
            layer.self_attn = new
            if isinstance(layer.mlp, MoE):
                layer.mlp = ParallelMoE(c, handle, registry)
            else:
                mlp = _split_mlp(MLP(c.hidden_size, c.intermediate_size // tp), t, tp)
                mlp.down_proj = _shard(RowParallelLinear(c.intermediate_size // tp, c.hidden_size, handle), 1, t, tp)
                layer.mlp = mlp
        rows = c.vocab_size // tp
        model.model.embed_tokens = _shard(VocabParallelEmbedding(rows, c.hidden_size, t * rows, handle), 0, t, tp)
        model.lm_head = _shard(VocabParallelLMHead(c.hidden_size, rows, handle), 0, t, tp)
    if pc.cp > 1:
        from .context_parallel import ContextParallel

        model.model.context_parallel = ContextParallel(handle)
    if c.fp8_compute == "fp8":
        for module in model.modules():
            if isinstance(module, Linear):
                module.fp8_compute = True
    model.parallel = handle
    return model


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds (what one rank's shard costs)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes_as_loaded(model: nn.Module, weights: str) -> int:
    """Bytes ``model`` (on meta) would hold once loaded from a ``weights`` ("bf16" or "fp8") release:
    FP8-eligible linears as e4m3 with their shard's block scales, the rest BF16, router bias fp32."""
    from .checkpoint import fp8_quantizable
    from .loader import checkpoint_layout, scale_shape

    total = 0
    for name, slot in checkpoint_layout(model).items():
        numel = math.prod(slot.shape)
        if slot.attr == "e_score_correction_bias":
            total += 4 * numel
        elif weights == "fp8" and fp8_quantizable(name, slot.shape):
            total += numel + 4 * math.prod(scale_shape(slot.shape))
        else:
            total += 2 * numel
    return total


# ---- SPMD generation -----------------------------------------------------------------------------------
_GOLDEN_64 = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads data-parallel groups' Philox keys apart


def share(n: int, handle: ParallelHandle) -> range:
    """The requests (of ``n``) this rank's data-parallel group serves: a contiguous, balanced slice."""
    dp = handle.config.dp
    return range(handle.dp_rank * n // dp, (handle.dp_rank + 1) * n // dp)


def generate(engine, prompts: list[list[int]], max_new_tokens: int, sampling=None):
    """:meth:`glm52.engine.Engine.generate` on every rank of the job: each data-parallel group
    generates for its share of ``prompts``; rank 0 returns every request's result in request order
    (other ranks return None). Single-process models pass straight through.

    Each data-parallel group samples from its own Philox key (``sampling.seed`` mixed with the
    group's index), so no two groups draw the same random numbers; greedy output equals one
    process's, sampled output is a different (equally distributed) draw. An error on any rank is
    raised on every rank, as a ``ValueError`` (bad input), ``CacheFullError`` or ``RuntimeError``."""
    from .engine import GenerationResult
    from .kv_cache import CacheFullError

    handle = getattr(engine.model, "parallel", None)
    if handle is None or handle.world_size == 1:
        return engine.generate(prompts, max_new_tokens, sampling)
    if sampling is not None and handle.dp_rank:
        sampling = dataclasses.replace(sampling, seed=(sampling.seed + handle.dp_rank * _GOLDEN_64) % (1 << 63))
    mine = share(len(prompts), handle)
    error = None
    try:
        if len(mine):
            result = engine.generate([prompts[i] for i in mine], max_new_tokens, sampling)
        else:
            result = None
            engine.serve_peers()
    except Exception as e:  # every rank must still reach the collectives below, or its peers hang
        kind = "value" if isinstance(e, ValueError) else "cache" if isinstance(e, CacheFullError) else "runtime"
        result, error = None, (kind, f"rank {handle.rank}: {type(e).__name__}: {e}")
    gathered = [None] * handle.world_size
    dist.all_gather_object(gathered, (handle.dp_rank, handle.tp_rank, result, error))
    errors = [e for *_, e in gathered if e]
    if errors:  # the same error on every rank: bad input first, then a full cache
        kinds = {kind for kind, _ in errors}
        cls = ValueError if "value" in kinds else CacheFullError if kinds == {"cache"} else RuntimeError
        raise cls("; ".join(message for _, message in errors))
    if handle.rank:
        return None
    parts = [r for dp_rank, tp_rank, r, _ in sorted(gathered, key=lambda g: g[0]) if tp_rank == 0 and r is not None]
    return GenerationResult([t for r in parts for t in r.tokens], max(r.verify_steps for r in parts),
                            sum(r.emitted for r in parts), max(r.seconds for r in parts),
                            [s for r in parts for s in r.per_step])
