"""Sweep: what the parallel layouts (DESIGN §6) move per token per layer, and what it costs.

Two tables. The counted one (printed, and stored in ``parallel_layer.json`` under
``glm52_bytes_per_token_per_layer``): for GLM-5.2 at each layout, the bytes one rank sends per token per
layer, counted from the shard plan (:func:`layer_bytes`): the row-parallel all-reduces of attention
and of the dense MLP or shared expert (fp32, ring: ``2 (n-1)/n`` of the row), the expert all-reduce
or the all-to-all dispatch and combine (``k`` rows of the hidden state, a ``(ep-1)/ep`` share
remote, plus the 8-byte expert id on the way out) and the TP all-gather of dispatched results; with
context parallelism (``cp``) the attention's query all-gather, partial-output all-to-all (fp32 rows
and their lse) and, on a layer with its own indexer, the top-k candidate all-gather (int32 position
+ fp32 score per candidate), each sent ``cp - 1`` times (ring).
``parallel_layer``: ranks started here (gloo on CPU, NCCL on GPUs) run one MoE layer shard of a
model preset per layout and token count; the row gives the layer's collectives alone (``time_us``),
its expert compute alone (``compute_us``, the baseline) and the whole sharded layer (``layer_us``).
CPU numbers say nothing about NCCL; they keep the sweep from rotting.

    python bench/bench_parallel.py [--device cuda] [--out bench/out] [--quick]
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, parse_args, progress, report  # noqa: E402

from glm52 import GLM52Config  # noqa: E402
from glm52.parallel import ParallelConfig  # noqa: E402

GLM52_LAYOUTS = [dict(tp=8), dict(tp=8, ep=8), dict(tp=4, dp=2, ep=8), dict(tp=2, dp=4, ep=8), dict(dp=8, ep=8),
                 dict(tp=8, dp=2, ep=16), dict(tp=8, ep=8, cp=8)]


def _ring_all_reduce(n: int, row_bytes: float) -> float:
    return 2 * (n - 1) / n * row_bytes if n > 1 else 0.0


def layer_bytes(config: GLM52Config, layout: ParallelConfig, moe: bool, act_bytes: int = 2) -> dict[str, float]:
    """Bytes one rank sends per token of its data-parallel group in one layer, by collective."""
    h, k, tp, ep = config.hidden_size, config.num_experts_per_tok, layout.tp, layout.ep
    out = {"attn_allreduce": _ring_all_reduce(tp, 4 * h)}
    if layout.cp > 1:  # glm52.context_parallel: per token, this rank's heads and k candidates to each peer
        heads, peers = config.num_attention_heads // tp, layout.cp - 1
        out["cp_query_allgather"] = peers * heads * (config.kv_lora_rank + config.qk_rope_head_dim) * act_bytes
        out["cp_partials_alltoall"] = peers * heads * (config.kv_lora_rank + 1) * 4
        out["cp_topk_allgather"] = peers * config.index_topk * 8
    if not moe:
        out["mlp_allreduce"] = _ring_all_reduce(tp, 4 * h)
        return out
    if layout.moe_mode in ("tp_split", "reduce"):
        out["moe_allreduce"] = _ring_all_reduce(tp, 4 * h)
    elif layout.moe_mode == "dispatch":
        remote = (ep - 1) / ep / tp  # each TP rank dispatches 1/tp of the group's tokens
        out["dispatch"] = k * (h * act_bytes + 8) * remote
        out["combine"] = k * h * act_bytes * remote
        out["tp_allgather"] = (tp - 1) / tp * h * act_bytes
        out["shared_allreduce"] = _ring_all_reduce(tp, 4 * h)
    return out


def bytes_rows(config: GLM52Config) -> list[dict]:
    rows = []
    for spec in GLM52_LAYOUTS:
        layout = ParallelConfig(**spec)
        for kind, moe in (("dense", False), ("moe", True)):
            parts = layer_bytes(config, layout, moe)
            rows.append({"layout": _name(spec), "gpus": layout.world_size, "layer": kind,
                         "moe_mode": layout.moe_mode if moe else "",
                         "bytes_per_token": int(sum(parts.values())),
                         **{k: int(v) for k, v in parts.items()}})
    return rows


def _name(spec: dict) -> str:
    return "x".join(f"{k}{v}" for k, v in spec.items() if v > 1) or "single"


def _median_us(fn, group, iters: int, warmup: int, device: str) -> float:
    samples = []
    for i in range(warmup + iters):
        dist.barrier(group=group)
        if device == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            samples.append(1e6 * (time.perf_counter() - begin))
    return statistics.median(samples)


def _worker(rank: int, world: int, port: int, out: str, preset: str, layouts: list[dict], tokens: list[int],
            device: str, iters: int, warmup: int) -> None:
    from glm52.parallel import ParallelHandle, ParallelMoE, _all_to_all, all_reduce_fp32, init_parallel

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config = GLM52Config.preset(preset).replace(num_hidden_layers=config_layers(preset))
    dev = torch.device(f"cuda:{rank}" if device == "cuda" else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    for spec in layouts:
        handle: ParallelHandle = init_parallel(ParallelConfig(**spec), timeout_s=120)
        with torch.device("meta"):
            layer = ParallelMoE(config, handle)
        layer = layer.to_empty(device=dev).to(dtype).eval()
        torch.manual_seed(rank)
        for p in layer.parameters():
            p.data.normal_(0, p.shape[-1] ** -0.5)
        layer.gate.e_score_correction_bias = 0.1 * torch.randn(config.n_routed_experts, device=dev)
        h, k, ep = config.hidden_size, config.num_experts_per_tok, handle.config.ep
        for t in tokens:
            x = torch.randn(t, h, generator=torch.Generator().manual_seed(rank)).to(dev, dtype)
            weights, ids = layer.gate(x)
            with torch.no_grad():
                compute = _median_us(lambda: layer.experts(x, weights, ids), handle.tp_group, iters, warmup, device)
                total = _median_us(lambda: layer(x), None, iters, warmup, device)
                mode = handle.config.moe_mode
                if mode == "dispatch":
                    share = -(-t // handle.config.tp) * k
                    split = [share // ep + (j < share % ep) for j in range(ep)]
                    rows_out = torch.zeros(share, h * x.element_size() + 8, dtype=torch.uint8, device=dev)
                    header = torch.zeros(ep, 4, dtype=torch.int64, device=dev)

                    def comm():
                        _all_to_all(header, ep, None, None, handle.ep_group)
                        got = _all_to_all(rows_out, share, split, split, handle.ep_group)
                        _all_to_all(got[:, :-8].contiguous(), share, split, split, handle.ep_group)
                        all_reduce_fp32(x, handle.tp_group, handle.config.tp)
                else:
                    def comm():
                        all_reduce_fp32(x, handle.tp_group, handle.config.tp)
                coll = _median_us(comm, None, iters, warmup, device)
            moe_bytes = sum(layer_bytes(config, handle.config, True, x.element_size()).values())
            rows.append({"preset": preset, "layout": _name(spec), "moe_mode": mode, "tokens": t,
                         "bytes_per_token": int(moe_bytes), "time_us": coll, "compute_us": compute,
                         "layer_us": total, "frac_of_layer": coll / total,
                         "baseline": "compute_us: this rank's expert compute alone"})
        del layer
    if rank == 0:
        torch.save(rows, f"{out}/rows.pt")
    dist.destroy_process_group()


def config_layers(preset: str) -> int:
    return GLM52Config.preset(preset).first_k_dense_replace + 1


def measured_rows(args, world: int) -> list[dict]:
    preset = "tiny" if args.device != "cuda" else "glm-5.2"
    layouts = [s for s in ([dict(tp=2), dict(tp=2, ep=2), dict(dp=2, ep=2)] if world == 2 else
                           [dict(tp=world), dict(tp=world, ep=world), dict(tp=2, dp=world // 2, ep=world),
                            dict(dp=world, ep=world)])]
    tokens = [4] if args.quick else [1, 16, 256]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(world, free_port(), out, preset, layouts, tokens, args.device, args.iters,
                                          args.warmup), nprocs=world, start_method="spawn")
        return torch.load(f"{out}/rows.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_table(title: str, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(c for r in rows for c in r))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print(f"\n== {title} ==")
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).rjust(widths[c]) for c in columns))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    meta = environment(args.device)
    counted = bytes_rows(GLM52Config.preset("glm-5.2"))
    print_table("GLM-5.2 bytes sent per rank per token per layer (counted from the shard plan)", counted)
    meta["glm52_bytes_per_token_per_layer"] = counted  # in parallel_layer.json next to the measured rows
    world = torch.cuda.device_count() if args.device == "cuda" else (2 if args.quick else 4)
    if world < 2:
        progress("parallel_layer: needs 2 or more ranks; skipped")
        return
    progress(f"parallel_layer: {world} ranks ({'NCCL' if args.device == 'cuda' else 'gloo'})")
    report("parallel_layer", measured_rows(args, world), meta, args.out)


if __name__ == "__main__":
    main()
