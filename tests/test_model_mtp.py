"""The MTP layer against DESIGN §2.1 restated in plain PyTorch around transformers' own decoder layer.

transformers drops the MTP weights (``model.layers.78.*``) when loading, so its model cannot be the
peer; its ``GlmMoeDsaDecoderLayer`` (built at index N with a full indexer) is the decoder part.
"""

from __future__ import annotations

import torch
import transformers
from model_testing import add_tensors, hf_model, max_rel_err, mtp_tensors, read_checkpoint
from transformers.models.glm_moe_dsa import modeling_glm_moe_dsa as hf_mod

from glm52 import GLM52ForCausalLM


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_mtp_matches_restatement(tmp_path):
    hf = hf_model(7, index_topk_freq=2, index_skip_topk_offset=2, num_nextn_predict_layers=1, n_group=2,
                  topk_group=1)
    ckpt = tmp_path / "ckpt"
    hf.save_pretrained(ckpt, max_shard_size="60KB")
    add_tensors(ckpt, mtp_tensors(ckpt, 7))
    ours = GLM52ForCausalLM.from_pretrained(ckpt)
    cfg = hf.config
    n = cfg.num_hidden_layers
    w = {k[len(f"model.layers.{n}."):]: v for k, v in read_checkpoint(ckpt).items() if k.startswith(f"model.layers.{n}.")}

    # transformers' decoder layer at index n, with its own (full) indexer, loaded with the MTP weights.
    peer_cfg = transformers.GlmMoeDsaConfig(**{**cfg.to_dict(), "num_hidden_layers": n + 1,
                                               "indexer_types": list(cfg.indexer_types) + ["full"],
                                               "mlp_layer_types": None, "layer_types": None})
    peer_cfg._attn_implementation = "eager"
    layer = hf_mod.GlmMoeDsaDecoderLayer(peer_cfg, n).eval()
    e = cfg.n_routed_experts
    state = {k: v for k, v in w.items() if ".experts." not in k and k.split(".")[0] not in
             ("enorm", "hnorm", "eh_proj", "shared_head")}
    state["mlp.experts.gate_up_proj"] = torch.stack(
        [torch.cat((w[f"mlp.experts.{i}.gate_proj.weight"], w[f"mlp.experts.{i}.up_proj.weight"])) for i in range(e)])
    state["mlp.experts.down_proj"] = torch.stack([w[f"mlp.experts.{i}.down_proj.weight"] for i in range(e)])
    layer.load_state_dict(state, strict=True)
    rotary = hf_mod.GlmMoeDsaRotaryEmbedding(peer_cfg)

    g = torch.Generator().manual_seed(1)
    b, t = 2, 36
    ids = torch.randint(0, cfg.vocab_size, (b, t + 1), generator=g)
    with torch.no_grad():
        h = ours.hidden_states(ids[:, :t])
        ref_h = hf.model(ids[:, :t]).last_hidden_state  # DESIGN §2.1: h_t after the final norm
        assert max_rel_err(h, ref_h) < 1e-5
        mtp_h, logits, _ = ours.mtp(h, ids[:, 1:])

        eps = cfg.rms_norm_eps
        emb = hf.model.embed_tokens(ids[:, 1:])
        z = torch.cat((_rms(emb, w["enorm.weight"], eps), _rms(ref_h, w["hnorm.weight"], eps)), -1) @ w["eh_proj.weight"].T
        positions = torch.arange(t)[None]
        mask = torch.full((t, t), float("-inf")).triu(1)[None, None].expand(b, 1, t, t)
        ref_out, _ = layer(z, attention_mask=mask, position_embeddings=rotary(z, positions), position_ids=positions)
        ref_logits = _rms(ref_out, w["shared_head.norm.weight"], eps) @ hf.lm_head.weight.T

    assert max_rel_err(mtp_h, ref_out) <= 1e-4
    assert max_rel_err(logits, ref_logits) <= 1e-4
    # Draft step 2 feeds the MTP layer's own output back in.
    with torch.no_grad():
        h2, logits2, _ = ours.mtp(mtp_h[:, :-1], ids[:, 2:])
    assert logits2.shape == (b, t - 1, cfg.vocab_size) and torch.isfinite(logits2).all()


def test_mtp_rejects_bad_arguments(tmp_path):
    from glm52 import GLM52Config
    from glm52.checkpoint import init_random_

    model = init_random_(GLM52ForCausalLM(GLM52Config.preset("tiny")), 0)
    h = torch.randn(1, 5, 128)
    for kwargs, message in ((dict(depth=1), "depth"), (dict(next_ids=torch.zeros(1, 4, dtype=torch.long)), "hidden"),
                            (dict(next_ids=torch.full((1, 5), 5000)), "next_ids")):
        args = dict(hidden=h, next_ids=torch.zeros(1, 5, dtype=torch.long)) | kwargs
        try:
            model.mtp(**args)
        except ValueError as e:
            assert message in str(e)
        else:
            raise AssertionError(f"mtp accepted {kwargs}")
