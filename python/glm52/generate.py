"""``glm52 generate``: load a checkpoint, render prompts (ids, or text through a tokenizer's chat
template with the thinking-effort settings), run the engine, print tokens (and text)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import parallel
from .engine import Engine, SamplingParams
from .model import GLM52ForCausalLM


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise ValueError("--prompt-ids is empty")
    return ids


def load_tokenizer(path: str | Path):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError("--prompt needs the transformers package for the tokenizer (pip install transformers)")
    if not (Path(path) / "tokenizer_config.json").exists() and not (Path(path) / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer in {path} (pass --tokenizer DIR)")
    return AutoTokenizer.from_pretrained(str(path))


def render(tokenizer, text: str, reasoning_effort: str, thinking: bool) -> list[int]:
    """The chat template's rendering of one user turn, ready for the assistant's reply."""
    if tokenizer.chat_template is None:
        return tokenizer(text)["input_ids"]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=True, reasoning_effort=reasoning_effort,
                                             enable_thinking=thinking)
    return list(rendered["input_ids"] if isinstance(rendered, dict) or hasattr(rendered, "keys") else rendered)


def run_cli(args: argparse.Namespace) -> dict:
    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be a positive integer")
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    handle = parallel.from_cli(args)
    try:
        return _run(args, dtype, handle)
    finally:
        if handle is not None:
            parallel.shutdown()


def _run(args: argparse.Namespace, dtype: torch.dtype | None, handle) -> dict | None:
    device = parallel.rank_device(args.device) if handle is not None else args.device
    model = GLM52ForCausalLM.from_pretrained(args.checkpoint, dtype=dtype, device=device, parallel=handle)
    tokenizer = None
    if args.prompt:
        tokenizer = load_tokenizer(args.tokenizer or args.checkpoint)
        prompts = [render(tokenizer, text, args.reasoning_effort, not args.no_thinking) for text in args.prompt]
    else:
        prompts = [parse_ids(text) for text in args.prompt_ids]
    eos = model.config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
    engine = Engine(model, cache_bytes=args.cache_mb << 20, spec_steps=args.spec_steps, eos_token_ids=eos,
                    cache_format=args.kv_format)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    result = parallel.generate(engine, prompts, args.max_new_tokens, params)
    if result is None:  # not rank 0: rank 0 prints for the whole job
        return None
    out = {"tokens": result.tokens, "accepted_per_step": result.accepted_per_step,
           "tokens_per_second": result.tokens_per_second, "verify_steps": result.verify_steps,
           "spec_steps": args.spec_steps, "prompt_ids": prompts}
    if tokenizer is not None:
        out["text"] = [tokenizer.decode(t) for t in result.tokens]
    if args.json:
        print(json.dumps(out))
    else:
        for i, tokens in enumerate(result.tokens):
            print(f"[{i}] {tokens}" + (f"\n    {out['text'][i]!r}" if tokenizer is not None else ""))
        print(f"{result.verify_steps} target steps, {result.accepted_per_step:.2f} tokens per step, "
              f"{result.tokens_per_second:.1f} tokens/s")
    return out
