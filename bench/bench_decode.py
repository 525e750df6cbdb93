"""The decode step's costs (DESIGN §6b): host syncs per step, non-view ops per layer, tokens/s.

CPU figures (deterministic counts from glm52.counters plus wall-clock tokens/s):

- host syncs per plain decode step and per speculative round (MTP x3), and non-view dispatcher
  ops per decoder layer per step, on a GLM-5.x-shaped model: the kernels' 576-wide latent and
  128-wide FP8 indexer, FP8 weights through ``fp8_compute="fp8"``, the kernel caches, greedy;
- the tiny demo model's (fp32) ops per layer, plain-decode tokens/s, and the speedup of speculative
  decoding (MTP x3) with a perfect drafter (glm52.synthetic.bigram_model) over plain decoding;
  eager, and (not with --quick) with the decode forwards compiled (``Engine(compiled_decode=True)``),
  whose compile seconds (the first request's time beyond a warm one's; inductor's on-disk cache
  makes later processes faster) are a column of their own, outside tokens/s.

With ``--device cuda``: the step time of plain decoding eager vs CUDA-graph replay at batch 1, 8,
64 and 256 on the GLM-5.x-shaped model.

    python bench/bench_decode.py [--device cpu|cuda] [--out bench/out] [--quick]

Targets (issue 11): <= 1 sync per plain step, <= 2 per speculative round, <= 60 ops per layer on
the GLM-5.x-shaped model, tiny model >= 4x the plain tokens/s measured before the work (about 20 ms
per token on 2 cores, i.e. 50 tokens/s) and speculation with a perfect drafter >= 2.5x plain. The
speculative rows also give the speedup this machine allows, from the same run's forward times:
``4 x plain step / (4-token verification + draft of 3 tokens)``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, parse_args, progress, report, time_ms  # noqa: E402

from glm52 import GLM52Config, GLM52ForCausalLM  # noqa: E402
from glm52.checkpoint import init_random_, quantize_checkpoint, save_checkpoint  # noqa: E402
from glm52.counters import OpCounter  # noqa: E402
from glm52.engine import Engine, SamplingParams, _Sequence  # noqa: E402
from glm52.synthetic import bigram_model  # noqa: E402

BASELINE_TINY_TOKENS_PER_S = 50.0  # plain decoding before issue 11 (~20 ms per token, 2 CPU cores)
GLM5_SHAPED = dict(kv_lora_rank=512, qk_rope_head_dim=64, index_head_dim=128, index_n_heads=32, qk_nope_head_dim=64,
                   v_head_dim=64, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=128, hidden_size=256,
                   intermediate_size=256, moe_intermediate_size=128, n_routed_experts=8, num_experts_per_tok=2,
                   num_hidden_layers=4, first_k_dense_replace=1, indexer_precision="fp8")


def glm5_shaped_model(device: str) -> GLM52ForCausalLM:
    """BF16 with FP8 block-scaled projections and experts, sized for the attention kernels."""
    config = GLM52Config.preset("tiny").replace(**GLM5_SHAPED)
    model = init_random_(GLM52ForCausalLM(config), 0)
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as work:
        fp8 = quantize_checkpoint(save_checkpoint(model, Path(work) / "bf16"), Path(work) / "fp8")
        model = GLM52ForCausalLM.from_pretrained(fp8, fp8_compute="fp8", indexer_precision="fp8")
    return model.to(device)


def prompts(config: GLM52Config, batch: int, length: int = 24, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, config.vocab_size, (length,), generator=g).tolist() for _ in range(batch)]


def step_costs(model: GLM52ForCausalLM, spec_steps: int, steps: int = 3) -> tuple[float, float, float]:
    """(host syncs per step, non-view ops per main decoder layer per step, microseconds per step
    while counting), decode steps only."""
    engine = Engine(model, spec_steps=spec_steps, cache_bytes=32 << 20)
    engine.count_step_ops = True
    result = engine.generate(prompts(model.config, 1), 1 + steps * (spec_steps + 1))
    counts = engine.step_counts[:steps]
    main = list(range(model.config.num_hidden_layers))
    return (sum(c.syncs for c in counts) / len(counts), sum(c.ops_per_layer(main) for c in counts) / len(counts),
            1e6 * result.seconds / max(result.verify_steps, 1))


def _timed(engine: Engine, name: str, spent: dict[str, list[float]]) -> None:
    """Record the seconds of every call of ``engine.<name>`` in ``spent[name]``."""
    method = getattr(engine, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = method(*args, **kwargs)
        spent.setdefault(name, []).append(time.perf_counter() - start)
        return out
    setattr(engine, name, timed)


def tokens_per_second(model: GLM52ForCausalLM, spec_steps: int, batch: int, new_tokens: int,
                      compiled: bool = False) -> tuple[float, float, float, dict[str, float]]:
    """(tokens/s, seconds per token, compile seconds, mean seconds of a target decode forward
    (``_target``: the plain step or the verification) and of a round's draft (``_draft``: the MTP
    catch-up and the later draft steps, one forward)). The warm-up
    is the timed request itself, so it meets every shape the timed run does; compile seconds are
    its time beyond the timed run's."""
    engine = Engine(model, spec_steps=spec_steps, cache_bytes=64 << 20, compiled_decode=compiled)
    batch_prompts = prompts(model.config, batch)
    start = time.perf_counter()
    engine.generate(batch_prompts, new_tokens)  # warm-up (and compilation)
    warm_up = time.perf_counter() - start
    spent: dict[str, list[float]] = {}
    for name in ("_target", "_draft"):
        _timed(engine, name, spent)
    start = time.perf_counter()
    result = engine.generate(batch_prompts, new_tokens)
    seconds = time.perf_counter() - start
    produced = sum(len(t) for t in result.tokens)
    forwards = {name: sum(t) / len(t) for name, t in spent.items()}
    return produced / seconds, seconds / produced, warm_up - seconds if compiled else float("nan"), forwards


def cpu_rows(device: str, quick: bool) -> list[dict]:
    rows = []
    progress("GLM-5.x-shaped model: syncs and ops per step")
    glm5 = glm5_shaped_model(device)
    for spec_steps in (0, 3):
        syncs, ops, step_us = step_costs(glm5, spec_steps)
        rows.append({"figure": f"glm5-shaped {'plain step' if not spec_steps else 'spec round (MTP x3)'}",
                     "syncs_per_step": syncs, "ops_per_layer": ops, "time_us": step_us, "tokens/s": float("nan"),
                     "compile_s": float("nan"), "baseline": "issue 11: 17 / 66 syncs, 137 ops per layer", "frac_of_target":
                     (1 if not spec_steps else 2) / max(syncs, 1e-9)})
    tiny = bigram_model(GLM52Config.preset("tiny"), 0, draft_noise=0.0).to(device)
    progress("tiny model: ops per step and tokens/s")
    syncs, ops, _ = step_costs(tiny, 0)
    new_tokens = 8 if quick else 48
    # Compiled steps (torch.compile, inductor) take minutes to compile cold: not in --quick.
    for compiled in (False,) if quick or device != "cpu" else (False, True):
        how = ", compiled" if compiled else ""
        progress(f"tiny model{how}: plain and speculative decoding")
        plain_tps, plain_s, plain_compile, plain_fwd = tokens_per_second(tiny, 0, 1, new_tokens, compiled)
        rows.append({"figure": f"tiny plain decode{how}", "syncs_per_step": syncs if not compiled else float("nan"),
                     "ops_per_layer": ops if not compiled else float("nan"), "time_us": 1e6 * plain_s,
                     "tokens/s": plain_tps, "compile_s": plain_compile, "baseline": "50 tokens/s (before issue 11)",
                     "frac_of_target": plain_tps / (4 * BASELINE_TINY_TOKENS_PER_S)})
        spec_tps, spec_s, spec_compile, spec_fwd = tokens_per_second(tiny, 3, 1, new_tokens, compiled)
        # What this machine allows: a round emits 4 tokens for one 4-token verification and a draft
        # (3 MTP forwards), against 4 plain steps (a GPU's memory-bound decode makes the verification
        # cost about one plain step; a CPU's compute on a tiny model does not).
        verify, plain, draft = spec_fwd["_target"], plain_fwd["_target"], spec_fwd["_draft"]
        ceiling = 4 * plain / (verify + draft)
        rows.append({"figure": f"tiny spec MTP x3, perfect drafter{how}", "syncs_per_step": float("nan"),
                     "ops_per_layer": float("nan"), "time_us": 1e6 * spec_s, "tokens/s": spec_tps,
                     "compile_s": spec_compile, "baseline": f"tiny plain decode{how}",
                     "speedup": spec_tps / plain_tps, "verify_over_plain_step": verify / plain,
                     "draft_over_plain_step": draft / plain, "speedup_ceiling": ceiling,
                     "frac_of_ceiling": spec_tps / plain_tps / ceiling, "frac_of_target": spec_tps / plain_tps / 2.5})
    return rows


def gpu_rows(args) -> list[dict]:
    """Plain decode step time (greedy, one token per sequence) eager vs CUDA-graph replay."""
    model = glm5_shaped_model("cuda")
    rows = []
    for batch in (1, 8) if args.quick else (1, 8, 64, 256):
        times = {}
        for graphs in (False, True):
            progress(f"decode step batch={batch} cuda_graphs={graphs}")
            engine = Engine(model, spec_steps=0, cache_bytes=1 << 30, cuda_graphs=graphs)
            seqs = [_Sequence(i, list(p), len(p)) for i, p in enumerate(prompts(model.config, batch))]
            sp = SamplingParams(temperature=0.0)
            engine._prefill(seqs, sp)
            times[graphs] = time_ms(lambda _: engine._step(seqs, sp), "cuda", args.iters, args.warmup, 1)
            for s in seqs:
                engine.allocator.release(s.seq_id)
        rows.append({"figure": f"glm5-shaped plain step batch={batch}", "eager_ms": times[False],
                     "graph_ms": times[True], "time_us": 1e3 * times[True], "baseline": "eager step",
                     "frac_of_eager": times[True] / times[False]})
    return rows


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    meta = environment(args.device)
    report("decode", cpu_rows(args.device, args.quick), meta, args.out)
    if args.device == "cuda":
        report("decode_graphs", gpu_rows(args), meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
