"""Batched generation with paged KV caches and MTP speculative decoding (DESIGN §2.1).

One round per step for every live sequence, whose committed tokens are ``x_0 .. x_{L-1}`` with the
target cache holding positions ``0 .. L-2``:

1. *Draft* (``spec_steps = n > 0``): the MTP layer first catches up on the positions whose target
   hidden states are new (position t takes ``h_t`` and ``x_{t+1}``), its last output drafts
   ``d_1``; then ``n - 1`` single steps each feed the MTP layer's own output and the previous
   draft. With ``index_share_for_mtp_iteration`` those steps reuse the first step's top-k. The
   whole draft is one forward of device tensors (one graph replay per round), drafts sampled on
   the device.
2. *Verify*: one target forward over ``[x_{L-1}, d_1 .. d_n]`` at positions ``L-1 .. L-1+n``, then
   ``spec_verify_greedy`` or ``spec_verify_sampling`` emits 1 .. n+1 tokens.
3. *Roll back*: rejected drafts stay in the cache past the committed length, are never attended
   to (queries only see positions up to their own) and are overwritten by the next round; blocks
   no longer needed go back to the pool.

``spec_steps = 0`` is plain decoding (one target token per step).

Prefill runs in chunks of ``prefill_chunk_tokens`` prompt tokens: each chunk's queries see the
cached prefix and the chunk's own causal keys, so peak memory is the caches plus one chunk's
activations whatever the prompt length. The MTP layer catches up chunk by chunk too (position t
pairs ``h_t`` with ``x_{t+1}``, all known inside the prompt), so no sequence keeps the target hidden
states of its whole prompt; only the last prompt position waits for the first generated token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from . import kernels
from .counters import OpCounter, OpCounts
from .graphs import CompiledStep, DecodeGraphs, GraphReplay
from .kv_cache import BLOCK_SIZE, BlockAllocator, CacheFullError, CacheView, PagedKVCache
from .lockstep import LockstepDecode
from .model import GLM52ForCausalLM


@dataclass
class SamplingParams:
    """``temperature == 0`` is greedy; otherwise top-k (0: off) and top-p filter the target."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated tokens per request (EOS included when hit)
    verify_steps: int  # target forwards after the prefill
    emitted: int  # tokens emitted by those steps
    seconds: float
    per_step: list[float] = field(default_factory=list)  # mean emitted per sequence per step

    @property
    def accepted_per_step(self) -> float:
        """Mean tokens emitted per sequence per target forward (1.0 for plain decoding)."""
        return sum(self.per_step) / len(self.per_step) if self.per_step else 0.0

    @property
    def tokens_per_second(self) -> float:
        return sum(len(t) for t in self.tokens) / self.seconds if self.seconds else 0.0


@dataclass
class _Sequence:
    seq_id: int
    tokens: list[int]  # committed: prompt + generated
    prompt_len: int
    fresh_hidden: torch.Tensor | None = None  # target hidden states of positions the MTP has not seen
    fresh_from: int = 0  # position of fresh_hidden[0]
    done: bool = False
    eos_checked: int = 0  # generated tokens already scanned for an end-of-sequence id

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]


class Engine:
    """Generates for a batch of requests with a paged cache sized from ``cache_bytes``.

    ``cache_format``: ``"bf16"`` or ``"fp8"`` (the attention kernels' MLA layouts; GLM-5.x sizes in
    BF16 with the FP8 indexer) or ``"model"``; by default the kernels' BF16 layout where it fits.

    A decode step reads device values on the host once: the emitted tokens (the engine needs them
    to stop). Slots are looked up on the device from a block table the host builds from its own
    bookkeeping, ids are not range-checked on the device, and sampling, drafting and verification
    stay on the device with their Philox ``seed``/``offset`` as device tensors (the offset advances
    on the device after every draw). ``cuda_graphs`` (default: on for CUDA) captures the decode
    target forward (the plain step and the verification) and the draft forward (the MTP catch-up
    over the fresh positions and every later draft step) per (batch bucket, input shapes) and replays
    them (:mod:`glm52.graphs`); under expert dispatch across DP groups, per the batch bucket and
    block-table width all EP peers agreed on for the step (:mod:`glm52.lockstep`).
    ``compiled_decode`` runs the same forwards, per the same buckets,
    compiled by ``torch.compile`` instead (``True``: inductor, or a backend's name): the CPU
    analogue of graph replay, off by default because the first step of each new shape compiles
    (one to two minutes per shape for the tiny demo model on 2 cores; later processes reuse inductor's
    on-disk cache).
    ``count_step_ops = True`` records every decode step's ops and host syncs
    (:class:`glm52.counters.OpCounts`) in ``step_counts``.
    """

    def __init__(self, model: GLM52ForCausalLM, cache_bytes: int = 256 << 20, spec_steps: int = 3,
                 eos_token_ids: tuple[int, ...] | list[int] = (), cache_format: str | None = None,
                 cuda_graphs: bool | None = None, prefill_chunk_tokens: int = 8192,
                 compiled_decode: bool | str | None = None) -> None:
        config = model.config
        if spec_steps < 0:
            raise ValueError(f"spec_steps must be >= 0, got {spec_steps}")
        if prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens must be >= 1, got {prefill_chunk_tokens}")
        self.prefill_chunk_tokens = prefill_chunk_tokens
        if spec_steps and config.num_nextn_predict_layers < 1:
            raise ValueError(f"spec_steps = {spec_steps} needs an MTP layer, but the model has "
                             f"num_nextn_predict_layers = {config.num_nextn_predict_layers}")
        self.model, self.config, self.spec_steps = model, config, spec_steps
        self.eos = set(eos_token_ids)
        weight = model.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        cp = model.model.context_parallel  # this rank holds a stripe of the caches (glm52.context_parallel)
        if cp is None:
            self.cache = PagedKVCache.from_budget(config, cache_bytes, self.dtype, self.device, cache_format)
            self.allocator = BlockAllocator(self.cache.num_blocks)
        else:
            self.cache, self.allocator = cp.paged_cache(config, cache_bytes, self.dtype, self.device, cache_format)
        handle = getattr(model, "parallel", None)
        dispatching = handle is not None and handle.config.moe_mode == "dispatch"
        # Expert dispatch across DP groups: decode steps in lockstep with capacity rounds (glm52.lockstep).
        self.lockstep = LockstepDecode(model, spec_steps) if dispatching else None
        # Context parallelism's collectives are not captured (its decode forwards read nothing on the
        # host, but its paged cache is striped: not written for CUDA graphs). Expert dispatch is:
        # lockstep decode gives every EP peer the same shapes at the same forward.
        uncaptured = "context parallelism" if cp is not None else None
        backend = "inductor" if compiled_decode is True else compiled_decode or None
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and uncaptured is None and backend is None
        for name, on in (("cuda_graphs", cuda_graphs), ("compiled_decode", backend)):
            if on and uncaptured is not None:
                raise ValueError(f"{name}={on!r} is not supported with {uncaptured}: its collectives are not "
                                 f"captured; pass {name}=False")
        if cuda_graphs and backend:
            raise ValueError(f"cuda_graphs and compiled_decode={compiled_decode!r} are exclusive: pass one of them")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a model on a CUDA device, got {self.device}")

        def graphs(forward, pads):
            if not (cuda_graphs or backend):
                return None
            return DecodeGraphs(CompiledStep(forward, backend) if backend else GraphReplay(forward), pads)
        self.graphs = graphs(self._decode_forward, (0, -1, -1))
        self.draft_graphs = graphs(self._draft_forward, (0, 0, -1, -1))
        self._sampling = SamplingParams(temperature=0.0)  # what the draft forward samples with
        # Philox key and stream of every draw, on the device (CUDA graphs replay the same pointers).
        self._seed = torch.zeros((), dtype=torch.int64, device=self.device)
        self._offset = torch.zeros((), dtype=torch.int64, device=self.device)
        self.count_step_ops = False  # True: count each decode step's ops and host syncs into step_counts
        self.step_counts: list[OpCounts] = []

    # ---- one forward over chosen positions ------------------------------------------------
    def _table(self, seqs: list[_Sequence], positions: list[list[int]], width: int = 0, beyond: int = 0,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reserve blocks for ``positions[i]`` of ``seqs[i]`` (and ``beyond`` positions past them) and
        return the device ``positions`` (ragged, −1 padded to at least ``width`` columns) and block
        table, its width rounded up to a power of two (few shapes for CUDA graphs and compilation;
        under lockstep decode with them, the width every EP peer agreed on). Host values only."""
        width = max(width, *(len(p) for p in positions))
        padded = torch.full((len(seqs), width), -1, dtype=torch.int64)
        for row, (seq, pos) in enumerate(zip(seqs, positions)):
            self.allocator.reserve(seq.seq_id, pos[-1] + 1 + beyond)
            padded[row, : len(pos)] = torch.tensor(pos)
        blocks = max(len(self.allocator.tables[s.seq_id]) for s in seqs)
        blocks = 1 << (blocks - 1).bit_length()
        if self._shared_shapes:
            blocks = max(blocks, self.lockstep.blocks)
        table = self.allocator.block_table([s.seq_id for s in seqs], blocks)
        return self._upload(padded), self._upload(table)

    @property
    def _shared_shapes(self) -> bool:
        """Lockstep decode with prepared forwards: every EP peer must prepare the same shapes."""
        return self.lockstep is not None and self.graphs is not None and self.lockstep.phase == "decode"

    def _dispatch(self, width: int) -> dict:
        """Before a decode forward of ``width`` tokens per sequence: under lockstep decode, its
        capacity dispatch; -> the options of its :class:`DecodeGraphs` call (the shared batch
        bucket, and the capacity its graph holds)."""
        if self.lockstep is None:
            return {}
        return dict(bucket=self.lockstep.batch, key=(self.lockstep.dispatch(width),))

    def _upload(self, host: torch.Tensor) -> torch.Tensor:
        """A host-built tensor on the model's device. On CUDA through pinned memory without blocking:
        a pageable copy would synchronize the stream (a hidden host sync per step)."""
        if self.device.type != "cuda":
            return host.to(self.device)
        return host.pin_memory().to(self.device, non_blocking=True)

    def _view(self, seqs: list[_Sequence], positions: list[list[int]]) -> CacheView:
        padded, table = self._table(seqs, positions)
        last = tuple(max(p[t] for p in positions if t < len(p)) for t in range(padded.shape[1]))
        return CacheView.from_block_table(self.cache, table, padded, table.shape[1] * BLOCK_SIZE, last)

    def _ids(self, rows: list[list[int]], width: int) -> torch.Tensor:
        out = torch.zeros(len(rows), width, dtype=torch.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return self._upload(out)

    def _target(self, seqs: list[_Sequence], start: list[int], new: list[list[int]] | torch.Tensor,
                decode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Target forward of tokens ``new[i]`` (host lists, or a device ``[B, T]`` tensor) at
        positions ``start[i]..`` -> (hidden, logits) ``[B, T, ...]``. ``decode``: a decode-shaped
        forward (the plain step, the verification), replayed from CUDA graphs or compiled when on."""
        lengths = [len(n) for n in new] if isinstance(new, list) else [new.shape[1]] * len(seqs)
        positions, table = self._table(seqs, [list(range(s, s + n)) for s, n in zip(start, lengths)])
        ids = self._ids(new, positions.shape[1]) if isinstance(new, list) else new
        if decode:
            options = self._dispatch(positions.shape[1])
            if self.graphs is not None:
                return self.graphs(ids, positions, table, **options)
        return self._decode_forward(ids, positions, table)

    def _decode_forward(self, ids: torch.Tensor, positions: torch.Tensor, table: torch.Tensor,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The target forward as a function of device tensors only (what CUDA graphs capture and
        ``torch.compile(fullgraph=True)`` traces): ``ids``/``positions [B, T]`` (−1: padding),
        ``table [B, W]`` -> (hidden ``[B, T, hidden]``, logits ``[B, T, V]``)."""
        view = CacheView.from_block_table(self.cache, table, positions, table.shape[1] * BLOCK_SIZE)
        hidden = self.model.hidden_states(ids, view, check_values=False)
        return hidden, self.model.lm_head(hidden)

    def _draft_forward(self, hidden: torch.Tensor, next_ids: torch.Tensor, positions: torch.Tensor,
                       table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole draft of a round as a function of device tensors only (captured like
        :meth:`_decode_forward`): the MTP catch-up over ``hidden [B, T, hidden]`` (h_t of the fresh
        positions), ``next_ids``/``positions [B, T]`` (−1: padding), then ``spec_steps - 1`` single
        steps at the positions after each row's last fresh one (reserved in ``table [B, W]``), each
        token drawn with :attr:`_sampling` -> (drafts ``[B, n]`` int64, their distributions
        ``[B, n, V]``, or ``[B, 0]`` when greedy)."""
        n, sp = self.spec_steps, self._sampling
        span = table.shape[1] * BLOCK_SIZE
        view = CacheView.from_block_table(self.cache, table, positions, span)
        out, logits, topk = self.model.mtp(hidden, next_ids, view=view, check_values=False)
        last = (positions >= 0).sum(dim=1).clamp_min(1) - 1  # each row's last fresh position (padding rows: 0)
        rows = torch.arange(positions.shape[0], device=positions.device)
        h, step_logits, shared = out[rows, last][:, None], logits[rows, last], topk[rows, last][:, None]
        at = positions[rows, last]
        drafts, probs = [], []
        for j in range(n):
            if j:
                step = torch.where(at >= 0, at + j, -1)[:, None]  # padding rows stay padding
                view = CacheView.from_block_table(self.cache, table, step, span)
                share = shared if self.config.index_share_for_mtp_iteration else None
                h, step_logits, _ = self.model.mtp(h, drafts[-1][:, None], view=view, shared_topk=share,
                                                   check_values=False)
                step_logits = step_logits[:, 0]
            token, q = self._next_tokens(step_logits, sp)
            drafts.append(token)
            probs.append(q)
        if sp.temperature == 0:
            return torch.stack(drafts, dim=1), logits.new_empty(positions.shape[0], 0)
        return torch.stack(drafts, dim=1), torch.stack(probs, dim=1)

    # ---- sampling -------------------------------------------------------------------------------
    def _probs(self, logits: torch.Tensor, sp: SamplingParams) -> torch.Tensor:
        return kernels.sampling_probs(logits.reshape(-1, logits.shape[-1]), sp.temperature, sp.top_k,
                                      sp.top_p).view(logits.shape)

    def _next_tokens(self, logits: torch.Tensor, sp: SamplingParams) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One token per row of ``logits [R, V]`` on the device (int64) and the distribution it was
        drawn from (None when greedy: the argmax, ties to the lowest id)."""
        if sp.temperature == 0:
            return logits.argmax(dim=-1), None
        probs = self._probs(logits, sp)
        tokens = kernels.sample_probs(probs, self._seed, self._offset).long()
        self._offset.add_(1)
        return tokens, probs

    # ---- drafting ------------------------------------------------------------------------------
    def _draft(self, seqs: list[_Sequence], sp: SamplingParams):
        """-> (drafts ``[B, n]`` int64 on the device, draft probabilities ``[B, n, V]`` or None when greedy)."""
        n = self.spec_steps
        # Catch-up over the fresh positions (position t pairs h_t with x_{t+1}); the later draft
        # steps' positions are reserved too. At most n + 1 fresh positions: every EP peer prepares
        # that width when shapes are shared.
        positions = [list(range(s.fresh_from, s.fresh_from + s.fresh_hidden.shape[0])) for s in seqs]
        padded, table = self._table(seqs, positions, n + 1 if self._shared_shapes else 0, beyond=n - 1)
        width = padded.shape[1]
        hidden = torch.zeros(len(seqs), width, self.config.hidden_size, dtype=self.dtype, device=self.device)
        next_ids = []
        for row, s in enumerate(seqs):
            hidden[row, : s.fresh_hidden.shape[0]] = s.fresh_hidden
            next_ids.append(s.tokens[s.fresh_from + 1: s.fresh_from + 1 + s.fresh_hidden.shape[0]])
        self._sampling = sp
        options = self._dispatch(n + 1)
        inputs = (hidden, self._ids(next_ids, width), padded, table)
        if self.draft_graphs is None:
            drafts, probs = self._draft_forward(*inputs)
        else:  # one prepared forward per sampling rule too: its scalars are constants of the graph
            options["key"] = options.get("key", ()) + (sp.temperature, sp.top_k, sp.top_p)
            drafts, probs = self.draft_graphs(*inputs, **options)
        return drafts, probs if sp.temperature > 0 else None

    # ---- the loop ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int,
                 sampling: SamplingParams | None = None) -> GenerationResult:
        """Generate up to ``max_new_tokens`` for each prompt. Under expert dispatch across DP
        groups every rank of the EP group must call this (or :meth:`serve_peers`) together: it
        returns when every peer is done (:mod:`glm52.lockstep`)."""
        if self.lockstep is None:
            return self._generate(prompts, max_new_tokens, sampling)
        self.lockstep.begin()
        try:
            return self._generate(prompts, max_new_tokens, sampling)
        finally:
            self.lockstep.finish()

    @torch.no_grad()
    def serve_peers(self) -> None:
        """For a rank with no requests: answer the EP peers' expert dispatch until every one of
        them is done generating (a no-op unless the model dispatches experts across DP groups)."""
        if self.lockstep is not None:
            self.lockstep.begin()
            self.lockstep.finish()

    def _generate(self, prompts: list[list[int]], max_new_tokens: int,
                  sampling: SamplingParams | None) -> GenerationResult:
        sp = sampling or SamplingParams(temperature=0.0)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompts:
            raise ValueError("prompts must be a non-empty list of non-empty token lists, got an empty list")
        vocab = self.config.vocab_size
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
            bad = next((t for t in p if not 0 <= t < vocab), None)
            if bad is not None:
                raise ValueError(f"prompt {i} has token id {bad} outside [0, {vocab}) (vocab_size)")
        self._check_fits(prompts, max_new_tokens)
        self._seed.fill_(sp.seed)
        self._offset.zero_()
        seqs = [_Sequence(seq_id=i, tokens=list(p), prompt_len=len(p)) for i, p in enumerate(prompts)]
        start = time.perf_counter()
        try:
            self._prefill(seqs, sp)
            if self.lockstep is not None:
                self.lockstep.prefill_done()
            for s in seqs:
                self._finish_if_done(s, max_new_tokens)
            steps, emitted, per_step = 0, 0, []
            self.step_counts = []
            while live := [s for s in seqs if not s.done]:
                if self.lockstep is not None:  # host integers between steps, not a device read
                    need = self.allocator.blocks_for(max(len(s.tokens) for s in live) + self.spec_steps)
                    self.lockstep.agree(len(live), 1 << (need - 1).bit_length())
                n_out = self._counted_step(live, sp)
                steps += 1
                emitted += sum(n_out)
                per_step.append(sum(n_out) / len(n_out))
                for s in live:
                    self._finish_if_done(s, max_new_tokens)
        finally:
            for s in seqs:
                if s.seq_id in self.allocator.tables:
                    self.allocator.release(s.seq_id)
        return GenerationResult([s.generated[:max_new_tokens] for s in seqs], steps, emitted,
                                time.perf_counter() - start, per_step)

    def _check_fits(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        """Refuse, before anything is allocated, a request whose context (prompt, new tokens and the
        drafts in flight) passes ``max_position_embeddings`` or whose prompts the cache cannot hold."""
        limit = self.config.max_position_embeddings
        for i, p in enumerate(prompts):
            context = len(p) + max_new_tokens + self.spec_steps
            if context > limit:
                raise ValueError(f"prompt {i}: {len(p)} prompt tokens + {max_new_tokens} new tokens + {self.spec_steps} "
                                 f"draft tokens = {context} positions, past max_position_embeddings = {limit}")
        free = self.allocator.num_free
        need = sum(self.allocator.blocks_for(len(p) + 1 + self.spec_steps) for p in prompts)
        if need > free:
            raise CacheFullError(f"{len(prompts)} prompts of {sum(map(len, prompts))} tokens need {need} more blocks "
                                 f"({BLOCK_SIZE} tokens each) than the cache budget's {free} free blocks; raise cache_bytes "
                                 f"or send fewer/shorter prompts")

    def _prefill(self, seqs: list[_Sequence], sp: SamplingParams) -> None:
        """Target forward over the prompts in chunks against the cached prefix (module docstring);
        samples each sequence's first token from its last prompt position."""
        chunk = self.prefill_chunk_tokens
        # Each sequence's last prompt hidden state, copied out (a view would keep its chunk's activations alive).
        last = torch.empty(len(seqs), self.config.hidden_size, dtype=self.dtype, device=self.device)
        for c0 in range(0, max(s.prompt_len for s in seqs), chunk):
            rows = [i for i, s in enumerate(seqs) if s.prompt_len > c0]
            part = [seqs[i] for i in rows]
            new = [s.tokens[c0: min(c0 + chunk, s.prompt_len)] for s in part]
            view = self._view(part, [list(range(c0, c0 + len(n))) for n in new])
            hidden = self.model.hidden_states(self._ids(new, view.positions.shape[1]), view,
                                              check_values=False)
            for j, (i, s) in enumerate(zip(rows, part)):
                if c0 + len(new[j]) == s.prompt_len:
                    last[i] = hidden[j, len(new[j]) - 1]
            if self.spec_steps:
                self._mtp_catch_up(part, c0, hidden, [len(n) for n in new])
        first, _ = self._next_tokens(self.model.lm_head(last), sp)
        for row, (s, token) in enumerate(zip(seqs, first.tolist())):
            s.tokens.append(token)
            s.fresh_hidden, s.fresh_from = last[row: row + 1], s.prompt_len - 1

    def _mtp_catch_up(self, seqs: list[_Sequence], start: int, hidden: torch.Tensor, counts: list[int]) -> None:
        """MTP layer over prompt positions ``start..start+counts[i]-1`` whose next token is in the
        prompt (h_t with x_{t+1}): fills the MTP cache so the first draft only needs the last position."""
        usable = [min(n, s.prompt_len - 1 - start) for s, n in zip(seqs, counts)]
        rows = [i for i, n in enumerate(usable) if n > 0]
        if not rows:
            return
        part = [seqs[i] for i in rows]
        view = self._view(part, [list(range(start, start + usable[i])) for i in rows])
        width = view.positions.shape[1]
        h = hidden[rows, :width]
        next_ids = [s.tokens[start + 1: start + 1 + usable[i]] for i, s in zip(rows, part)]
        self.model.mtp(h, self._ids(next_ids, width), view=view, check_values=False)

    def _counted_step(self, seqs: list[_Sequence], sp: SamplingParams) -> list[int]:
        if not self.count_step_ops:
            return self._step(seqs, sp)
        with OpCounter(self.model) as counter:
            n_out = self._step(seqs, sp)
        self.step_counts.append(counter.counts)
        return n_out

    def _step(self, seqs: list[_Sequence], sp: SamplingParams) -> list[int]:
        """One draft + verify round (or one plain token); returns tokens emitted per sequence.
        Reads the device once: the emitted tokens."""
        lengths = [len(s.tokens) for s in seqs]
        if not self.spec_steps:
            _, logits = self._target(seqs, [n - 1 for n in lengths], [[s.tokens[-1]] for s in seqs], decode=True)
            tokens, _ = self._next_tokens(logits[:, 0], sp)
            for s, token in zip(seqs, tokens.tolist()):
                s.tokens.append(token)
                self.allocator.truncate(s.seq_id, len(s.tokens))
            return [1] * len(seqs)
        drafts, draft_probs = self._draft(seqs, sp)
        last = self._ids([[s.tokens[-1]] for s in seqs], 1)
        hidden, logits = self._target(seqs, [n - 1 for n in lengths], torch.cat((last, drafts), dim=1), decode=True)
        if sp.temperature == 0:
            tokens, counts = kernels.spec_verify_greedy(drafts, logits)
        else:
            tokens, counts = kernels.spec_verify_sampling(drafts, draft_probs, self._probs(logits, sp), self._seed,
                                                          self._offset)
            self._offset.add_(1)
        out = []
        for row, (s, emitted) in enumerate(zip(seqs, torch.cat((counts[:, None], tokens), dim=1).tolist())):
            m = emitted[0]
            s.tokens.extend(emitted[1: m + 1])
            # The target saw x_{L-1} and the m-1 accepted drafts: their hidden states are new for the MTP.
            # (With CUDA graphs a view of the graph's output buffer: the next round's drafting reads it
            # before the next verification replay overwrites it.)
            s.fresh_hidden, s.fresh_from = hidden[row, :m], lengths[row] - 1
            self.allocator.truncate(s.seq_id, len(s.tokens))
            out.append(m)
        return out

    def _finish_if_done(self, s: _Sequence, max_new_tokens: int) -> None:
        # Only the tokens emitted since the last check are scanned (a whole scan per step is quadratic).
        start = s.prompt_len + s.eos_checked
        hit = next((i for i in range(start, len(s.tokens)) if s.tokens[i] in self.eos), None)
        s.eos_checked = len(s.tokens) - s.prompt_len
        if hit is not None:
            s.tokens = s.tokens[: hit + 1]
        if hit is not None or len(s.tokens) - s.prompt_len >= max_new_tokens:
            s.done = True
            self.allocator.release(s.seq_id)
