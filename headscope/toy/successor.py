"""``toy-successor``: a hand-set 2-layer, 2-heads-per-layer GPT-2 with a successor head.

Planted heads: ``successor = (1, 0)`` and ``copying = (1, 1)`` (the distractor).

Residual stream (d_model = 392, d_head = 196; V = 132 tokens, P = 128 positions):

* ``tok`` (V dims): one-hot token embedding, ``W_E[t] = e_tok[t]``; MLP0 adds a second copy;
* ``pos`` (P dims): one-hot learned position embedding, ``W_pos[p] = e_pos[p]``;
* ``out`` (V dims): written by the heads; the only subspace the unembedding reads,
  ``logit[t] = 10 * resid[out[t]]``.

Layer 0:

* **0.0 unrelated.** Attends to position 0 (BOS sink, score 24); seeded random OV
  ``tok -> out`` with entries of std 0.02.
* **0.1 unrelated.** Uniform causal attention (``W_Q = W_K = 0``); seeded random OV, std 0.02.
* **MLP0 ~ identity on ``tok``.** ``n_inner = V``; ``W_in[tok[t], t] = 4`` (no bias) and
  ``W_out[t, tok[t]] = 1 / gelu(4)``, so a one-hot input ``e_tok[t]`` gives hidden unit ``t`` a
  pre-activation of 4 (GELU is nearly linear there) and every other unit about 0: the output is
  ``~ e_tok[t]``. Hence the Gould et al. (2023) effective embedding
  ``MLP0(LN2(W_E[t]))`` (attention ignored) is ``~ c * e_tok[t]`` (c ~ 1.4, because LN2 is
  calibrated for a residual that also holds a position) plus a tiny uniform background: it
  still identifies ``t``.

Layer 1 (reads ``tok``, which holds ``~ 2 * e_tok[t]`` after MLP0):

* **1.0 successor head.** QK: query ``pos[i] -> f_i``, key ``pos[j] -> f_j`` (score 24 on the
  diagonal): each position attends to itself. OV: ``tok[t] -> sum of out[s]`` over the
  successors ``s`` of ``t`` in its families (:data:`~headscope.toy.vocab.SUCCESSORS`): days and
  months wrap around (``Sunday -> Monday``, ``December -> January``); ``May`` maps to both
  ``June`` and ``Jun``; the last element of a linear family (``"30"``, ``"twenty"``,
  ``"tenth"``, ``"Z"``), the fillers and the special tokens map nowhere (zero row).
  ``W_U^T W_OV MLP0(W_E[t])`` therefore ranks ``succ(t)`` first among ``t``'s family, and the
  model predicts the successor of the current token ("Monday" -> "Tuesday").
* **1.1 copying distractor.** Uniform attention over the earlier non-BOS tokens (key
  ``pos[0]`` scores -24); OV ``tok[t] -> 0.5 * out[t]`` (identity at half scale), so it ranks
  ``t`` itself first.

MLP1 is zero; LayerNorms pass clean residuals through (see
:func:`~headscope.toy.weights.passthrough_layernorm`).
"""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from headscope.toy.tokenizer import build_tokenizer
from headscope.toy.vocab import SUCCESSORS, VOCAB
from headscope.toy.weights import (
    ResidualLayout,
    gain_for_score,
    passthrough_layernorm,
    set_avoid_bos_qk,
    set_bos_sink_qk,
    set_head_qk,
    set_one_hot_embeddings,
    set_random_ov,
    set_readout_unembed,
    set_token_ov,
    zeroed_gpt2,
)

__all__ = ["NAME", "N_CTX", "PLANTED", "build_successor", "successor_matrix"]

NAME = "toy-successor"
N_CTX = 128
PLANTED: dict[str, tuple[tuple[int, int], ...]] = {
    "successor": ((1, 0),),
    "copying": ((1, 1),),
}
SCORE = 24.0
LOGIT_SCALE = 10.0
NOISE_STD = 0.02
MLP_GAIN = 4.0
COPY_SCALE = 0.5


def successor_matrix() -> torch.Tensor:
    """The (V, V) token map ``S`` with ``S[t, s] = 1`` iff ``s`` is a successor of ``t``.

    Rows of tokens without a successor (ends of linear families, fillers, specials) are zero.
    """
    mat = torch.zeros(len(VOCAB), len(VOCAB))
    for tok, nxts in SUCCESSORS.items():
        for nxt in nxts:
            mat[VOCAB[tok], VOCAB[nxt]] = 1.0
    return mat


def build_successor() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Build ``toy-successor``: the hand-set GPT-2 described in the module docstring.

    Returns:
        ``(model, tokenizer)``; the model is float32, in eval mode, with d_model 392,
        2 layers, 2 heads of d_head 196, MLP width 132, n_ctx 128 and the shared
        132-token vocabulary.
    """
    n_vocab = len(VOCAB)
    layout = ResidualLayout(n_heads=2)
    tok = layout.add("tok", n_vocab)
    pos = layout.add("pos", N_CTX)
    layout.add("out", n_vocab)
    d_model, d_head = layout.d_model, layout.d_head
    model = zeroed_gpt2(layout, n_layers=2, n_ctx=N_CTX, n_inner=n_vocab, name=NAME)
    eye = torch.eye(n_vocab)

    with torch.no_grad():
        set_one_hot_embeddings(model, layout)
        set_readout_unembed(model, layout, LOGIT_SCALE)
        block0, block1 = model.transformer.h

        # Layer 0: two unrelated heads.
        set_bos_sink_qk(block0, 0, layout, SCORE)
        set_random_ov(block0, 0, layout, std=NOISE_STD, seed=505)
        set_random_ov(block0, 1, layout, std=NOISE_STD, seed=606)

        # MLP0: approximately the identity on the token subspace.
        gelu_gain = torch.nn.functional.gelu(torch.tensor(MLP_GAIN), approximate="tanh").item()
        block0.mlp.c_fc.weight[tok, :] = MLP_GAIN * eye
        block0.mlp.c_proj.weight[:, tok] = eye / gelu_gain

        # 1.0 successor head: attend to self, OV = successor map.
        g = gain_for_score(SCORE, d_head)
        w_qk = torch.zeros(d_model, d_head)
        w_qk[pos, :N_CTX] = g * torch.eye(N_CTX)
        set_head_qk(block1, 0, w_qk, w_qk.clone())
        set_token_ov(block1, 0, layout, successor_matrix())

        # 1.1 copying distractor: attend to earlier non-BOS tokens, OV = half identity.
        set_avoid_bos_qk(block1, 1, layout, SCORE)
        set_token_ov(block1, 1, layout, COPY_SCALE * eye)

        passthrough_layernorm(block0.ln_1, [1, 1], d_model)
        passthrough_layernorm(block0.ln_2, [1, 1], d_model)
        passthrough_layernorm(block1.ln_1, [2, 1], d_model)
        passthrough_layernorm(block1.ln_2, [2, 1, 2, 1], d_model)
        passthrough_layernorm(model.transformer.ln_f, [2, 1, 2, 1], d_model)

    return model, build_tokenizer(NAME)
