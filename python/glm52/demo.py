"""``glm52 demo``: a tiny random GLM-5.2-architecture checkpoint written in Hugging Face format (BF16,
then FP8 through our quantizer), loaded back with ``from_pretrained``, a prefill and a greedy
generation on each. Runs on a CPU in seconds.

Generation recomputes the full prefix each step (there is no KV cache in the model yet).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from .checkpoint import init_random_, quantize_checkpoint, save_checkpoint
from .config import GLM52Config
from .model import GLM52ForCausalLM


@torch.no_grad()
def greedy(model: GLM52ForCausalLM, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float, float]:
    """-> (generated ids ``[B, new_tokens]``, prefill seconds, generation seconds)."""
    start = time.perf_counter()
    logits = model(prompt)
    prefill = time.perf_counter() - start
    ids, out = prompt, []
    start = time.perf_counter()
    for _ in range(new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        ids = torch.cat((ids, nxt), dim=1)
        logits = model(ids)
    return torch.cat(out, dim=1), prefill, time.perf_counter() - start


def run(out_dir: str | None = None, preset: str = "tiny", seed: int = 0, prompt_len: int = 24,
        new_tokens: int = 12) -> dict[str, list[int]]:
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

    prompt = torch.randint(0, config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    print(f"prompt ({prompt_len} tokens, index_topk {config.index_topk}): {prompt[0].tolist()}")
    results = {}
    for name, path in (("bf16", bf16_dir), ("fp8", fp8_dir)):
        start = time.perf_counter()
        loaded = GLM52ForCausalLM.from_pretrained(path)
        load = time.perf_counter() - start
        tokens, prefill, gen = greedy(loaded, prompt, new_tokens)
        results[name] = tokens[0].tolist()
        print(f"[{name}] load {load:.2f} s, prefill {prefill * 1e3:.1f} ms, {new_tokens} greedy tokens in "
              f"{gen:.2f} s ({new_tokens / gen:.1f} tok/s): {results[name]}")
    agree = sum(a == b for a, b in zip(results["bf16"], results["fp8"]))
    print(f"bf16 and fp8 agree on {agree}/{new_tokens} generated tokens")
    return results
