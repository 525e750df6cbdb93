"""``glm52 demo``: a tiny random GLM-5.2-architecture checkpoint written in Hugging Face format (BF16,
then FP8 through our quantizer), loaded back with ``from_pretrained``, then greedy generation on
each through the engine, plain and with MTP speculative decoding (which must emit the same
tokens). Runs on a CPU in seconds.

The weights are random, so the MTP layer agrees with the target only by chance: expect about one
token per step (real GLM-5.2 weights accept ~3.5 tokens per step with 3 drafts). A last run uses
:func:`glm52.synthetic.bigram_model`, whose MTP layer drafts well, to show what acceptance buys.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from .checkpoint import init_random_, quantize_checkpoint, save_checkpoint
from .config import GLM52Config
from .engine import Engine
from .model import GLM52ForCausalLM
from .synthetic import bigram_model


def run(out_dir: str | None = None, preset: str = "tiny", seed: int = 0, prompt_len: int = 24,
        new_tokens: int = 12, spec_steps: int = 3) -> dict[str, list[int]]:
    import glm52_ext

    try:
        info = glm52_ext.build_info()
    except Exception as e:  # the compiled module is optional for the model on CPU
        info = f"unavailable ({type(e).__name__}: {e})"
    print(f"glm52_ext build: {info}")
    torch.manual_seed(seed)
    config = GLM52Config.preset(preset)
    work = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="glm52-demo-"))
    start = time.perf_counter()
    model = init_random_(GLM52ForCausalLM(config), seed)
    for p in model.parameters():  # a BF16 release: weights BF16, router biases stay fp32 buffers
        p.data = p.data.to(torch.bfloat16)
    bf16_dir = save_checkpoint(model, work / "bf16", max_shard_bytes=2**20)
    fp8_dir = quantize_checkpoint(bf16_dir, work / "fp8", max_shard_bytes=2**20)
    print(f"wrote {preset} checkpoints ({sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{config.num_hidden_layers} layers + {config.num_nextn_predict_layers} MTP, "
          f"indexer on layers {[i for i, t in enumerate(config.indexer_types) if t == 'full']}) "
          f"to {work} in {time.perf_counter() - start:.2f} s")

    prompt = torch.randint(0, config.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    print(f"prompt ({prompt_len} tokens, index_topk {config.index_topk}): {prompt}")
    results = {}
    for name, path in (("bf16", bf16_dir), ("fp8", fp8_dir)):
        start = time.perf_counter()
        loaded = GLM52ForCausalLM.from_pretrained(path)
        load = time.perf_counter() - start
        plain = Engine(loaded, spec_steps=0).generate([prompt], new_tokens)
        spec = Engine(loaded, spec_steps=spec_steps).generate([prompt], new_tokens)
        results[name] = spec.tokens[0]
        print(f"[{name}] load {load:.2f} s; plain: {plain.tokens_per_second:.1f} tok/s; "
              f"MTP x{spec_steps}: {spec.tokens_per_second:.1f} tok/s, {spec.accepted_per_step:.2f} tokens/step, "
              f"same tokens as plain: {spec.tokens == plain.tokens}")
        print(f"[{name}] {new_tokens} greedy tokens: {results[name]}")
        if spec.tokens != plain.tokens:
            raise RuntimeError(f"{name}: speculative decoding emitted different tokens than plain decoding")
    agree = sum(a == b for a, b in zip(results["bf16"], results["fp8"]))
    print(f"bf16 and fp8 agree on {agree}/{new_tokens} generated tokens")

    drafter = bigram_model(config, seed, draft_noise=0.0)
    plain = Engine(drafter, spec_steps=0).generate([prompt], new_tokens)
    spec = Engine(drafter, spec_steps=spec_steps).generate([prompt], new_tokens)
    print(f"[synthetic drafter, fp32] plain {plain.tokens_per_second:.1f} tok/s; MTP x{spec_steps} "
          f"{spec.tokens_per_second:.1f} tok/s ({spec.tokens_per_second / plain.tokens_per_second:.2f}x), "
          f"{spec.accepted_per_step:.2f} tokens/step, same tokens as plain: {spec.tokens == plain.tokens}")
    return results
