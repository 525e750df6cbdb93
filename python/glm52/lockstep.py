"""Lockstep decode under expert dispatch across data-parallel groups (``ep > tp``, DESIGN §6).

Every MoE layer then trades tokens with EP peers in other data-parallel groups. The exact
dispatch reads the peers' row counts on the host at every MoE layer; the capacity dispatch reads
nothing, but needs every peer in the same forward with the same capacity. The engine gets there
by running its decode steps in lockstep across the EP group:

1. Prefill dispatches exactly. A rank whose prompts are in answers its peers' rounds
   (:func:`glm52.parallel.serve_experts`) until every peer's prefill is done: a barrier.
2. Before each decode step the peers agree on the largest live batch among them, rounded up to
   a power of two (the batch bucket), and on the widest block table the step may need (and check
   that they speculate alike) with one all-reduce of host integers. It travels over the group's
   CPU side (gloo): no device value is read.
3. Each forward of the step dispatches by capacity, sized from that bucket and the forward's tokens
   per sequence (:meth:`LockstepDecode.forwards`), so every peer runs the same MoE layers with the
   same capacities in the same order. With CUDA graphs or compiled forwards the peers also prepare
   the same shapes (bucket, table width, capacity) at the same forward.
4. A rank with no live sequence (all done, none given, or its step failed) keeps answering: it runs
   the step's capacity rounds with no tokens of its own, from the same schedule, until every peer
   reports an empty batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .graphs import batch_bucket
from .parallel import (_ACTIVE, _LAYER, _MODE, _ROWS, ParallelMoE, _exchange_header, _serve_capacity_round,
                       serve_experts, set_layers_dispatch)

__all__ = ["LockstepDecode"]


class LockstepDecode:
    """The engine's side of the protocol above for ``model`` (a dispatching parallel model) decoding
    with ``spec_steps`` MTP drafts per round. Phases: ``idle`` -> :meth:`begin` (prefill, exact
    dispatch) -> :meth:`prefill_done` (decode: :meth:`agree` per step, :meth:`dispatch` per forward)
    -> :meth:`finish` (serve until every peer is done, back to ``idle``)."""

    def __init__(self, model: torch.nn.Module, spec_steps: int) -> None:
        config = model.config
        self.model, self.spec_steps, self.handle = model, spec_steps, model.parallel
        self.registry: list[ParallelMoE] = next(m for m in model.modules() if isinstance(m, ParallelMoE)).registry
        main = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
        self.target_layers = list(range(main))  # registry indices of the target forward's MoE layers
        self.mtp_layers = list(range(main, len(self.registry)))[:1]  # the first MTP layer's, if it has experts
        self.phase = "idle"
        self.batch = 0  # batch bucket of the largest live batch among the peers in the current step
        self.blocks = 0  # the widest block table any peer's step needs (a power of two)
        self.next_forward = 0  # forwards of the current step this rank has dispatched
        self.forwards_run = self.forwards_served = 0  # decode forwards run with tokens / served without

    # ---- the schedule every peer follows -------------------------------------------------------
    def forwards(self) -> list[tuple[list[int], int]]:
        """A decode step's forwards in order: (registry indices of the MoE layers they run, in order;
        tokens per sequence at most, which sizes their capacity). Speculative rounds: the draft (the
        MTP catch-up over up to ``n + 1`` fresh positions, then ``n - 1`` single steps, all at the
        catch-up's capacity) and the verification of ``n + 1`` tokens."""
        n = self.spec_steps
        if n == 0:
            return [(self.target_layers, 1)]
        return [(self.mtp_layers * n, n + 1), (self.target_layers, n + 1)]

    def capacity(self, width: int) -> int:
        """Tokens per rank of a forward with ``width`` tokens per sequence: each TP rank dispatches
        its slice of the group's ``batch x width`` tokens."""
        return -(-self.batch * width // self.handle.config.tp)

    def rounds(self, width: int, layers: list[int]) -> list[tuple[int, int]]:
        """(registry index, capacity rows) of the capacity rounds of a forward."""
        k = self.model.config.num_experts_per_tok
        return [(layer, self.capacity(width) * min(k, self.registry[layer].experts.num_experts)) for layer in layers]

    # ---- phases -----------------------------------------------------------------------------------
    def begin(self) -> None:
        self.phase = "prefill"
        set_layers_dispatch(self.registry, "exact")

    def prefill_done(self) -> None:
        """Serve the peers' prefill rounds until every peer is here."""
        serve_experts(self.model)
        self.phase, self.batch = "decode", 0  # no step under way yet

    def agree(self, batch: int, blocks: int = 0) -> int:
        """This rank's live ``batch`` and the block-table width its step needs -> the batch bucket of
        the largest batch among the EP peers (0: every peer is done)."""
        mine = torch.tensor([batch, blocks, self.spec_steps, -self.spec_steps], dtype=torch.int64)  # host memory: gloo
        dist.all_reduce(mine, op=dist.ReduceOp.MAX, group=self.handle.ep_group)
        largest, widest, spec_max, spec_min = mine[0].item(), mine[1].item(), mine[2].item(), -mine[3].item()
        if spec_max != spec_min:
            raise RuntimeError(f"lockstep decode: EP peers speculate with different spec_steps ({spec_min} .. "
                               f"{spec_max}); every rank's Engine must use the same spec_steps")
        self.batch, self.blocks, self.next_forward = batch_bucket(largest) if largest else 0, widest, 0
        return self.batch

    def dispatch(self, width: int) -> int:
        """Capacity dispatch for the step's next forward, of ``width`` tokens per sequence at most;
        -> its capacity (tokens per rank)."""
        capacity = self.capacity(width)
        set_layers_dispatch(self.registry, "capacity", capacity)
        self.next_forward += 1
        self.forwards_run += 1
        return capacity

    def finish(self) -> None:
        """Answer the peers until every one of them is done (after this rank's last step, or after
        it failed: the rounds its current step still owed come first)."""
        if self.phase == "prefill":
            serve_experts(self.model)
        elif self.phase == "decode" and self.batch:
            self._serve(self.forwards()[self.next_forward:])
        if self.phase != "idle":
            while self.agree(0):
                self._serve(self.forwards())
        self.phase = "idle"
        set_layers_dispatch(self.registry, "exact")

    def _serve(self, forwards: list[tuple[list[int], int]]) -> None:
        handle, weight = self.handle, self.model.model.embed_tokens.weight
        empty = torch.empty(0, weight.shape[1], dtype=weight.dtype, device=weight.device)
        idle = torch.zeros(handle.config.ep, dtype=torch.int64, device=weight.device)
        for layers, width in forwards:
            for layer, cap in self.rounds(width, layers):
                head = _exchange_header(handle, 0, -1, 0, idle, weight.device)
                torch._assert_async(((head[:, _ACTIVE] == 0) | (head[:, _LAYER] == layer) & (head[:, _MODE] == 1)
                                     & (head[:, _ROWS] == cap)).all(),
                                    "lockstep decode: an EP peer is not at the MoE layer and capacity of the schedule")
                _serve_capacity_round(self.registry, layer, cap, empty)
            self.forwards_served += 1
