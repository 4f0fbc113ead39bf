"""Linear read-outs use the model's real norms: DLA, the logit lens, OV circuits, effective
embeddings. The reference applies the raw HF norm modules themselves (so Gemma's ``1 + weight``,
LayerNorm centring and every eps come from Hugging Face), with per-position scales frozen
where a decomposition needs them (:meth:`raw_hf.RawHF.frozen_norm`).
"""

from __future__ import annotations

import pytest
import torch

from headscope.analyzers.direct_logit_attribution import direct_logit_attribution_values
from headscope.lens.core import final_logits, head_vectors, lens_logits
from headscope.lens.ov_circuit import effective_embedding, ov_logits
from headscope.trace.stream import capture_stream

from .conftest import REFUSED, assert_close
from .raw_hf import end_rows, logit_diff

TOKEN_IDS = torch.tensor([0, 4, 9, 17, 30, 41, 58, 77, 96, 120, 131])


def _head_contrib(raw, layer: int, z: torch.Tensor, run, pos: torch.Tensor | None = None) -> torch.Tensor:
    """What each head adds to the residual (..., H, d_model): ``z_h W_O^h``, then on sandwich /
    post-norm families the post-attention norm with its scale frozen at the whole attention
    output's."""
    out = raw.head_out(layer, z)
    if not raw.post_norms:
        return out
    whole = run.attn_pre_norm[layer]
    whole = end_rows(whole, pos) if pos is not None else whole
    return raw.frozen_norm(raw.post_attn_norm(layer), out, whole.unsqueeze(-2))


@pytest.mark.capability("dla")
def test_dla(family, pair, prompts, hs_call):
    """Per-head DLA = hand computation from raw z, W_O, the real (frozen) final norm and, on
    sandwich/post-norm families, the post-attention norm; embeddings + heads + b_O + MLPs +
    norm bias sum to the logit difference before final-logit soft-capping."""
    raw, batch = pair.raw, prompts.batch
    out = hs_call(lambda: direct_logit_attribution_values(pair.hs, batch))
    if out is REFUSED:
        return
    run = raw.run(batch.clean)
    end = batch.end
    direction = raw.unembed_rows(batch.answer) - raw.unembed_rows(batch.wrong)  # (n, d_model)
    x_final = end_rows(run.resid_final, end)  # (n, d_model)

    def read(v: torch.Tensor) -> torch.Tensor:  # (n, ..., d_model) -> (n, ...) direct logit-diff share
        x = x_final.view(x_final.shape[0], *([1] * (v.dim() - 2)), -1)
        d = direction.view(direction.shape[0], *([1] * (v.dim() - 2)), -1)
        return (raw.frozen_norm(raw.final_norm, v, x) * d).sum(-1)

    pre_cap = logit_diff(run.logits_pre_cap, end, batch.answer, batch.wrong)
    bias = raw.norm_bias(raw.final_norm)
    bias_term = (bias * direction).sum(-1) if bias is not None else torch.zeros(batch.n)
    # the reference checks itself first (raw HF only): the residual is the sum of what the
    # embedding and every sublayer add, and reading it through the frozen final norm gives
    # the logit difference before soft-capping
    emb = end_rows(run.emb, end)
    attn = [end_rows(run.attn_add[layer], end) for layer in range(raw.n_layers)]
    mlp = [end_rows(run.mlp_add[layer], end) for layer in range(raw.n_layers)]
    torch.testing.assert_close(emb + sum(attn) + sum(mlp), x_final, atol=1e-4, rtol=1e-5, msg="reference decomposition")
    torch.testing.assert_close(read(x_final) + bias_term, pre_cap, atol=1e-4, rtol=1e-5, msg="reference read-out")
    head_terms = [_head_contrib(raw, layer, end_rows(run.z[layer], end), run, end) for layer in range(raw.n_layers)]
    for layer in range(raw.n_layers):
        b_o_layer = 0.0 if raw.post_norms else raw.out_bias(layer)
        torch.testing.assert_close(head_terms[layer].sum(-2) + b_o_layer, attn[layer], atol=1e-4, rtol=1e-5,
                                   msg=f"reference heads + b_O = attention output, layer {layer}")

    assert_close(out["logit_diff"], logit_diff(run.logits, end, batch.answer, batch.wrong), "model logit difference")
    heads = torch.stack([read(term) for term in head_terms])
    assert_close(out["dla"], heads.permute(0, 2, 1), "per-head DLA (layer, head, row)")
    assert_close(out["resid_dla"] + bias_term, pre_cap, "whole-residual DLA + final-norm bias vs pre-soft-cap logit difference")
    b_o = sum(read(attn[layer] - raw.head_out(layer, end_rows(run.z[layer], end)).sum(-2))
              for layer in range(raw.n_layers)) if not raw.post_norms else 0.0
    others = read(emb) + sum(read(m) for m in mlp) + b_o + bias_term
    assert_close(others + out["dla"].sum((0, 1)), pre_cap,
                 "embeddings + headscope's head DLA + b_O + MLPs + norm bias vs pre-soft-cap logit difference")


@pytest.mark.capability("logit_lens")
def test_logit_lens(family, pair, prompts, hs_call):
    raw, tokens = pair.raw, prompts.plain
    heads = [(layer, head) for layer in range(raw.n_layers) for head in range(raw.n_heads)]
    got = hs_call(lambda: head_vectors(pair.hs, tokens, heads))
    if got is REFUSED:
        return
    vectors, scale = got
    run = raw.run(tokens)
    # what each head writes into the residual: z_h W_O^h, through the frozen post-attention norm
    # on sandwich / post-norm families
    want = torch.cat([_head_contrib(raw, layer, run.z[layer], run) for layer in range(raw.n_layers)], dim=2)
    assert_close(vectors, want, "head writes into the residual (b, p, L*H, d)")
    assert_close(scale, raw.norm_scale(raw.final_norm, run.resid_final), "final-norm scale of the residual")
    w_u = raw.lm_head.weight.detach()
    bias = raw.norm_bias(raw.final_norm)
    residual = raw.frozen_norm(raw.final_norm, want, run.resid_final.unsqueeze(2)) @ w_u.T
    assert_close(lens_logits(pair.hs, want, scale, ln="residual"), residual, "lens logits, ln=residual")
    with torch.inference_mode():
        alone = raw.final_norm(want) - (bias if bias is not None else 0.0)
    assert_close(lens_logits(pair.hs, want, scale, ln="recompute"), alone @ w_u.T, "lens logits, ln=recompute")
    normalized = capture_stream(pair.hs, tokens, ["ln_final.hook_normalized"])["ln_final.hook_normalized"]
    assert_close(final_logits(pair.hs, normalized), run.logits, "final_logits(ln_final.hook_normalized) vs model logits")


def _multiplier(raw, module, v: torch.Tensor) -> torch.Tensor:
    """The norm's linear part applied to v, per-token scale and bias dropped, read through the HF
    module itself: ``(module(v) - bias) * scale(v)`` (RMSNorm: the real multiplier, ``1 + weight``
    on Gemma; LayerNorm: centring, then the weight)."""
    bias = raw.norm_bias(module)
    with torch.inference_mode():
        out = module(v) - (bias if bias is not None else 0.0)
        return out * raw.norm_scale(module, v)


@pytest.mark.capability("ov_circuit")
def test_ov_circuit(family, pair, hs_call):
    """``W_U^T W_OV e``: the head's own input norm (HF module), W_V of its KV head, W_O, the
    post-attention norm's linear part on sandwich/post-norm families, the final norm's linear
    part (LayerNorm centres), W_U; per-token scales, biases dropped."""
    raw = pair.raw
    emb = raw.embed_weight()[TOKEN_IDS]
    w_u = raw.lm_head.weight.detach()
    for layer in range(raw.n_layers):
        norm = raw.input_norm(layer)
        with torch.inference_mode():
            x = norm(emb) if norm is not None else emb
        for head in range(raw.n_heads):
            got = hs_call(lambda layer=layer, head=head: ov_logits(pair.hs, layer, head, emb, ln=True))
            if got is REFUSED:
                return
            z = torch.zeros(len(TOKEN_IDS), raw.n_heads, raw.d_head)
            z[:, head] = x @ raw.w_v(layer, head // raw.group)
            o = raw.head_out(layer, z)[:, head]
            if raw.post_norms:
                o = _multiplier(raw, raw.post_attn_norm(layer), o)
            o = _multiplier(raw, raw.final_norm, o)
            assert_close(got, o @ w_u.T, f"OV logits of head {layer}.{head}")


@pytest.mark.capability("effective_embedding")
def test_effective_embedding(family, pair, hs_call):
    """``embed_mlp0`` = what block 0 leaves in the residual without attention (the embedding
    module's output + what MLP0 adds, post-MLP norm included); ``mlp0`` = that MLP term."""
    raw = pair.raw
    got = hs_call(lambda: {r: effective_embedding(pair.hs, TOKEN_IDS, r) for r in ("mlp0", "embed_mlp0")})
    if got is REFUSED:
        return
    with torch.inference_mode():
        e = raw.model.get_input_embeddings()(TOKEN_IDS)
        norm = raw.pre_mlp_norm(0)
        m = raw.mlp(0)(norm(e) if norm is not None else e)
        if raw.post_norms:
            m = raw.post_mlp_norm(0)(m)
    assert_close(got["mlp0"], m, "mlp0 effective embedding")
    assert_close(got["embed_mlp0"], e + m, "embed_mlp0 effective embedding")
