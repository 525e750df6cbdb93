"""Engine benchmark on the tiny model: tokens/s and acceptance of MTP speculative decoding against
plain decoding (the baseline), greedy, for an untrained drafter (random weights) and synthetic
drafters of known quality (glm52.synthetic.bigram_model).

    python bench/bench_engine.py [--device cpu|cuda] [--out bench/out] [--quick]

``frac_of_max_acceptance`` is tokens per step over its ceiling ``spec_steps + 1``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, parse_args, progress, report  # noqa: E402

from glm52 import GLM52Config, GLM52ForCausalLM  # noqa: E402
from glm52.checkpoint import init_random_  # noqa: E402
from glm52.engine import Engine  # noqa: E402
from glm52.synthetic import bigram_model  # noqa: E402


def drafters(config: GLM52Config):
    yield "random", init_random_(GLM52ForCausalLM(config), 0).eval()
    yield "synthetic-perfect", bigram_model(config, 0, draft_noise=0.0)
    yield "synthetic-fair", bigram_model(config, 0, draft_noise=0.02)


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    config = GLM52Config.preset("tiny")
    batches, new_tokens = ((1,), 6) if args.quick else ((1, 8), 32)
    spec_choices = (0, 1) if args.quick else (0, 1, 3)
    rows = []
    for name, model in drafters(config):
        model = model.to(args.device)
        for batch in batches:
            g = torch.Generator().manual_seed(batch)
            prompts = [torch.randint(0, config.vocab_size, (24,), generator=g).tolist() for _ in range(batch)]
            baseline_s = None
            for n in spec_choices:
                progress(f"engine {name} batch={batch} spec_steps={n}")
                engine = Engine(model, spec_steps=n, cache_bytes=64 << 20)
                engine.generate(prompts, 2)  # warm-up
                start = time.perf_counter()
                result = engine.generate(prompts, new_tokens)
                seconds = time.perf_counter() - start
                produced = sum(len(t) for t in result.tokens)
                baseline_s = seconds if n == 0 else baseline_s
                rows.append({"drafter": name, "batch": batch, "spec_steps": n, "time_us": 1e6 * seconds / produced,
                             "tokens/s": produced / seconds, "tokens_per_step": result.accepted_per_step,
                             "frac_of_max_acceptance": result.accepted_per_step / (n + 1),
                             "baseline": "plain decoding", "speedup": baseline_s / seconds})
    report("engine", rows, environment(args.device), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
