"""``glm52 generate``: a saved checkpoint, prompt ids or chat-templated text, JSON output."""

from __future__ import annotations

import json

import pytest
from test_engine import bigram_model, plain_greedy

from glm52.checkpoint import save_checkpoint
from glm52.cli import main

TEMPLATE = (
    "{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> "
    "{% if enable_thinking is defined and not enable_thinking %}<nothink>"
    "{% else %}<think:{{ reasoning_effort | default('max') }}>{% endif %}{% endif %}"
)
SPECIALS = ["<|user|>", "<|assistant|>", "<nothink>", "<think:max>", "<think:high>"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = bigram_model(0, draft_noise=0.02)
    path = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny")
    return model, path


def write_tokenizer(path, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + [f"w{i}" for i in range(vocab_size - len(SPECIALS))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", additional_special_tokens=SPECIALS)
    fast.chat_template = TEMPLATE
    fast.save_pretrained(path)
    return {w: i for i, w in enumerate(words)}


def run_json(capsys, *args):
    assert main(["generate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_prompt_ids_greedy_matches_plain_decoding(checkpoint, capsys):
    model, path = checkpoint
    out = run_json(capsys, "--checkpoint", str(path), "--prompt-ids", "5,9,200,31", "--prompt-ids", "7",
                   "--max-new-tokens", "8", "--spec-steps", "3", "--temperature", "0")
    assert set(out) >= {"tokens", "accepted_per_step", "tokens_per_second"}
    eos = model.config.eos_token_id
    for prompt, tokens in zip(([5, 9, 200, 31], [7]), out["tokens"]):
        want = plain_greedy(model, prompt, 8)
        if eos in want:
            want = want[: want.index(eos) + 1]
        assert tokens == want
    assert out["accepted_per_step"] > 1.0  # the drafter here is close to the target


def test_generate_text_uses_the_chat_template_and_thinking_effort(checkpoint, capsys, tmp_path):
    model, path = checkpoint
    vocab = write_tokenizer(tmp_path / "tok", model.config.vocab_size)
    common = ["--checkpoint", str(path), "--tokenizer", str(tmp_path / "tok"), "--prompt", "w3 w4",
              "--max-new-tokens", "4", "--seed", "3"]
    out = run_json(capsys, *common)
    assert out["prompt_ids"][0] == [vocab[w] for w in ("<|user|>", "w3", "w4", "<|assistant|>", "<think:max>")]
    assert isinstance(out["text"][0], str) and len(out["tokens"][0]) >= 1
    high = run_json(capsys, *common, "--reasoning-effort", "high")
    assert high["prompt_ids"][0][-1] == vocab["<think:high>"]
    off = run_json(capsys, *common, "--no-thinking")
    assert off["prompt_ids"][0][-1] == vocab["<nothink>"]
    assert run_json(capsys, *common)["tokens"] == out["tokens"]  # same seed, same sample


@pytest.mark.parametrize("args,message", [
    (["--prompt-ids", "1,x"], "comma-separated integers"),
    (["--prompt-ids", "1", "--max-new-tokens", "0"], "max-new-tokens"),
    (["--prompt", "hello"], "no tokenizer"),
])
def test_generate_rejects_bad_arguments(checkpoint, capsys, args, message):
    _, path = checkpoint
    assert main(["generate", "--checkpoint", str(path), *args]) == 2
    assert message in capsys.readouterr().err
