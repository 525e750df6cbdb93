"""The ``glm52`` command: ``plan`` (memory planner), ``generate`` (speculative decoding from a checkpoint),
``demo`` (tiny checkpoint round trip), ``selfcheck``.

Results go to stdout, errors to stderr (exit status 2 for bad input).
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import PRESETS, GLM52Config
from .planner import KV_FORMATS, WEIGHT_FORMATS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm52", description="GLM-5.2 model runtime and kernels")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="parameter count, weight and KV-cache memory per GPU")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), default="glm-5.2")
    source.add_argument("--config", metavar="DIR", help="a checkpoint directory with config.json")
    p.add_argument("--weights", choices=WEIGHT_FORMATS, default="fp8")
    p.add_argument("--kv", choices=KV_FORMATS, default="fp8")
    p.add_argument("--context", type=int, help="tokens per sequence (default: max_position_embeddings)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--dp", type=int, help="data-parallel groups (default: ep / tp, at least 1); GPUs = tp x dp")
    p.add_argument("--cp", type=int, default=1, help="context-parallel ranks per tp group (divides --tp): the "
                   "caches are block-striped over them")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    d = sub.add_parser("demo", help="write a tiny random checkpoint (BF16 and FP8), load it, generate")
    d.add_argument("--out", metavar="DIR", help="where to write the checkpoints (default: a temporary dir)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--prompt-len", type=int, default=24)
    d.add_argument("--tokens", type=int, default=12, help="greedy tokens to generate")
    d.add_argument("--spec-steps", type=int, default=3, help="MTP draft tokens per step")

    g = sub.add_parser("generate", help="generate from a checkpoint with MTP speculative decoding")
    g.add_argument("--checkpoint", required=True, metavar="DIR")
    prompt = g.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt-ids", action="append", metavar="1,2,3", help="token ids (repeat for a batch)")
    prompt.add_argument("--prompt", action="append", metavar="TEXT", help="text, rendered with the chat template "
                        "of --tokenizer (repeat for a batch)")
    g.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the checkpoint's)")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--spec-steps", type=int, default=3, help="MTP draft tokens per step; 0: plain decoding")
    g.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--reasoning-effort", choices=("max", "high"), default="max")
    g.add_argument("--no-thinking", action="store_true", help="enable_thinking=False in the chat template")
    g.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    g.add_argument("--device", default="cpu")
    g.add_argument("--cache-mb", type=int, default=256, help="KV-cache budget")
    g.add_argument("--kv-format", choices=("bf16", "fp8", "model"), help="cache layout (default: the "
                   "attention kernels' bf16 rows where the model fits them, else 'model')")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (launch with torchrun)")
    g.add_argument("--dp", type=int, default=1, help="attention data-parallel groups; world size = tp x dp")
    g.add_argument("--ep", type=int, default=1, help="expert-parallel ranks (1 or a multiple of tp, dividing tp x dp)")
    g.add_argument("--cp", type=int, default=1, help="context-parallel ranks per tp group (divides --tp): the "
                   "caches are block-striped over them")

    sub.add_parser("selfcheck", help="check the installed kernels (glm52_ext.selfcheck)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "plan":
            from .planner import format_plan, plan

            config = GLM52Config.from_pretrained(args.config) if args.config else GLM52Config.preset(args.preset)
            result = plan(config, weights=args.weights, kv=args.kv, context=args.context, batch=args.batch,
                          tp=args.tp, ep=args.ep, dp=args.dp, cp=args.cp)
            print(json.dumps(result) if args.json else format_plan(result))
        elif args.command == "generate":
            from .generate import run_cli

            run_cli(args)
        elif args.command == "demo":
            from . import demo

            for name in ("prompt_len", "tokens"):
                if getattr(args, name) < 1:
                    raise ValueError(f"--{name.replace('_', '-')} must be a positive integer")
            demo.run(out_dir=args.out, seed=args.seed, prompt_len=args.prompt_len, new_tokens=args.tokens,
                     spec_steps=args.spec_steps)
        else:
            from glm52_ext import selfcheck

            return selfcheck.main()
    except (ValueError, FileNotFoundError) as e:
        print(f"glm52 {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
