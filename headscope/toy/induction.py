"""``toy-induction``: a hand-set 2-layer, 2-heads-per-layer GPT-2 with an induction circuit.

Planted heads: ``previous_token = (0, 0)`` and ``induction = (1, 0)``.

Residual stream (d_model = 524, d_head = 262; V = 132 tokens, P = 128 positions):

* ``tok``  (V dims): one-hot token embedding, ``W_E[t] = e_tok[t]``;
* ``pos``  (P dims): one-hot learned position embedding, ``W_pos[p] = e_pos[p]``;
* ``prev`` (V dims): written by head 0.0, holds the identity of the previous token;
* ``out``  (V dims): written by the layer-1 heads; the only subspace the unembedding reads,
  ``logit[t] = 10 * resid[out[t]]``.

Heads (scores are after GPT-2's ``1 / sqrt(d_head)`` scaling):

* **0.0 previous-token head.** QK: query ``pos[i] -> f_i``, key ``pos[j] -> f_{j+1}``, each with
  gain ``g`` so that key ``i - 1`` scores 24 and every other key 0. OV: ``tok[t] -> f_t ->
  prev[t]`` (identity, scale 1), so position ``i`` receives ``e_prev[x_{i-1}]``.
  (Position 0 can only attend to itself and records ``prev = <bos>``.)
* **0.1 unrelated.** Attends to position 0 (BOS sink, score 24); seeded random OV ``tok -> out``
  with entries of std 0.02.
* **1.0 induction head.** QK: query ``tok[t] -> f_t``, key ``prev[t] -> f_t`` (score 24 where the
  key's previous token equals the query's token), plus a BOS fallback (constant query bias,
  key ``pos[0]``, score 12) used when the current token has not occurred before. OV:
  ``tok[t] -> out[t]`` (identity, scale 1) for every token except ``<bos>``, whose value is
  zero: the head copies the token that followed the earlier occurrence of the current token
  into the logits, and writes nothing when it falls back to BOS (near-uniform prediction).
* **1.1 unrelated.** ``W_Q = W_K = 0`` (uniform causal attention); seeded random OV ``tok -> out``
  with entries of std 0.02.

MLPs are zero. Each LayerNorm is set to pass clean residuals through unchanged (see
:func:`~headscope.toy.weights.passthrough_layernorm`): two unit entries (tok, pos) before layer
0, three (plus prev) before layer 1, four (plus out) at the final LN. On ``[bos] + R + R`` the
model predicts every token of the second copy of ``R`` after its first one.
"""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from headscope.toy.tokenizer import build_tokenizer
from headscope.toy.vocab import BOS, VOCAB
from headscope.toy.weights import (
    ResidualLayout,
    gain_for_score,
    passthrough_layernorm,
    set_bos_sink_qk,
    set_head_ov,
    set_head_qk,
    set_one_hot_embeddings,
    set_random_ov,
    set_readout_unembed,
    zeroed_gpt2,
)

__all__ = ["NAME", "N_CTX", "PLANTED", "build_induction"]

NAME = "toy-induction"
N_CTX = 128
PLANTED: dict[str, tuple[tuple[int, int], ...]] = {
    "previous_token": ((0, 0),),
    "induction": ((1, 0),),
}
SCORE = 24.0  # attention score of an intended key over the others
FALLBACK_SCORE = 12.0  # induction head's BOS score when there is no earlier occurrence
LOGIT_SCALE = 10.0
NOISE_STD = 0.02


def build_induction() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Build ``toy-induction``: the hand-set GPT-2 described in the module docstring.

    Returns:
        ``(model, tokenizer)``; the model is float32, in eval mode, with d_model 524,
        2 layers, 2 heads of d_head 262, n_ctx 128 and the shared 132-token vocabulary.
    """
    n_vocab = len(VOCAB)
    layout = ResidualLayout(n_heads=2)
    tok = layout.add("tok", n_vocab)
    pos = layout.add("pos", N_CTX)
    prev = layout.add("prev", n_vocab)
    out = layout.add("out", n_vocab)
    d_model, d_head = layout.d_model, layout.d_head
    model = zeroed_gpt2(layout, n_layers=2, n_ctx=N_CTX, n_inner=4, name=NAME)
    g = gain_for_score(SCORE, d_head)
    eye = torch.eye(n_vocab)

    with torch.no_grad():
        set_one_hot_embeddings(model, layout)
        set_readout_unembed(model, layout, LOGIT_SCALE)
        block0, block1 = model.transformer.h

        # 0.0 previous-token head: key j carries f_{j+1}, query i carries f_i.
        w_q = torch.zeros(d_model, d_head)
        w_k = torch.zeros(d_model, d_head)
        w_q[pos, :N_CTX] = g * torch.eye(N_CTX)
        w_k[pos, 1:N_CTX] = g * torch.eye(N_CTX)[:, : N_CTX - 1]
        set_head_qk(block0, 0, w_q, w_k)
        w_v = torch.zeros(d_model, d_head)
        w_o = torch.zeros(d_head, d_model)
        w_v[tok, :n_vocab] = eye
        w_o[:n_vocab, prev] = eye
        set_head_ov(block0, 0, w_v, w_o)

        # 0.1 unrelated: BOS sink + small random OV.
        set_bos_sink_qk(block0, 1, layout, SCORE)
        set_random_ov(block0, 1, layout, std=NOISE_STD, seed=101)

        # 1.0 induction head: query token t matches key whose previous token is t.
        w_q = torch.zeros(d_model, d_head)
        w_k = torch.zeros(d_model, d_head)
        w_q[tok, :n_vocab] = g * eye
        w_k[prev, :n_vocab] = g * eye
        g_bos = gain_for_score(FALLBACK_SCORE, d_head)
        b_q = torch.zeros(d_head)
        b_q[n_vocab] = g_bos
        w_k[pos.start, n_vocab] = g_bos
        set_head_qk(block1, 0, w_q, w_k, b_q=b_q)
        w_v = torch.zeros(d_model, d_head)
        w_o = torch.zeros(d_head, d_model)
        w_v[tok, :n_vocab] = eye
        w_v[tok.start + VOCAB[BOS]] = 0.0
        w_o[:n_vocab, out] = eye
        set_head_ov(block1, 0, w_v, w_o)

        # 1.1 unrelated: uniform attention (zero QK) + small random OV.
        set_random_ov(block1, 1, layout, std=NOISE_STD, seed=202)

        passthrough_layernorm(block0.ln_1, [1, 1], d_model)
        passthrough_layernorm(block0.ln_2, [1, 1, 1], d_model)
        passthrough_layernorm(block1.ln_1, [1, 1, 1], d_model)
        passthrough_layernorm(block1.ln_2, [1, 1, 1, 1], d_model)
        passthrough_layernorm(model.transformer.ln_f, [1, 1, 1, 1], d_model)

    return model, build_tokenizer(NAME)
