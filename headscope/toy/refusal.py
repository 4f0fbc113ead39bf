"""``toy-refusal``: a hand-set 2-layer, 2-heads-per-layer GPT-2 with one "refusal" head.

Planted heads: ``refusal = (1, 1)``; ground truth for Ships and Sahara (Zhou et al. 2024).

A prompt is "harmful" when it contains the trigger word :data:`TRIGGER` (``"Sunday"``); the
refusal head then writes a large logit for the "refuse" token :data:`REFUSE` (``"no"`` is not in
the shared vocabulary, so the token ``"Monday"`` plays that role).

Residual stream (d_model = 328, d_head = 164; V = 132 tokens, P = 64 positions): one-hot
``tok`` (V dims) and ``pos`` (P dims), and ``out`` (V dims), the only subspace the unembedding
reads (``logit[t] = 10 * resid[out[t]]``).

* **0.0 permutation head.** Uniform causal attention with ``W_Q = W_K = 0`` and no query bias,
  so scaling its query changes nothing; OV ``0.5 * P_pi`` (a seeded V-cycle).
* **0.1 unrelated.** BOS sink (score 24); seeded random OV, entries of std 0.02.
* **1.0 copying head.** Attends uniformly to earlier non-BOS tokens; OV ``0.5 * I``, so the
  model predicts "one of the tokens seen so far" (a non-trivial base distribution).
* **1.1 refusal head.** A constant query bias against a key that reads ``tok[TRIGGER]``
  (score 24): it attends to the trigger when there is one (to the BOS otherwise, via a
  weaker BOS key of score 12). OV reads ``tok[TRIGGER]`` and writes :data:`REFUSAL_GAIN` into
  ``out[REFUSE]``. Query scaling by a small ``eps`` makes its attention near-uniform, so the
  trigger's weight drops to ``1/n`` and the refusal logit collapses: on harmful prompts its
  ablation moves the last-token distribution far more than any other head's.

MLPs are zero; LayerNorms pass clean residuals through (see
:func:`~headscope.toy.weights.passthrough_layernorm`).
"""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from headscope.toy.copying import cyclic_permutation
from headscope.toy.tokenizer import build_tokenizer
from headscope.toy.vocab import VOCAB
from headscope.toy.weights import (
    ResidualLayout,
    gain_for_score,
    passthrough_layernorm,
    set_avoid_bos_qk,
    set_bos_sink_qk,
    set_head_ov,
    set_head_qk,
    set_one_hot_embeddings,
    set_random_ov,
    set_readout_unembed,
    set_token_ov,
    zeroed_gpt2,
)

__all__ = ["NAME", "N_CTX", "PLANTED", "REFUSE", "TRIGGER", "build_refusal"]

NAME = "toy-refusal"
N_CTX = 64
PLANTED: dict[str, tuple[tuple[int, int], ...]] = {"refusal": ((1, 1),)}
TRIGGER = "Sunday"
REFUSE = "Monday"
SCORE = 24.0
REFUSAL_GAIN = 1.0
LOGIT_SCALE = 10.0


def build_refusal() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Build ``toy-refusal`` (see the module docstring): float32, eval mode, 2 layers x 2 heads."""
    n_vocab = len(VOCAB)
    layout = ResidualLayout(n_heads=2)
    layout.add("tok", n_vocab)
    layout.add("pos", N_CTX)
    layout.add("out", n_vocab)
    d_model, d_head = layout.d_model, layout.d_head
    model = zeroed_gpt2(layout, n_layers=2, n_ctx=N_CTX, n_inner=4, name=NAME)
    eye = torch.eye(n_vocab)
    trig, refuse = VOCAB[TRIGGER], VOCAB[REFUSE]

    with torch.no_grad():
        set_one_hot_embeddings(model, layout)
        set_readout_unembed(model, layout, LOGIT_SCALE)
        block0, block1 = model.transformer.h
        set_token_ov(block0, 0, layout, 0.5 * eye[cyclic_permutation(n_vocab, 11)])
        set_bos_sink_qk(block0, 1, layout, SCORE)
        set_random_ov(block0, 1, layout, std=0.02, seed=505)
        set_avoid_bos_qk(block1, 0, layout, SCORE)
        set_token_ov(block1, 0, layout, 0.5 * eye)

        # 1.1 refusal head: query bias g on dim 0; keys: trigger token g (score 24), BOS g/2 (12).
        g = gain_for_score(SCORE, d_head)
        w_k = torch.zeros(d_model, d_head)
        w_k[layout["tok"].start + trig, 0] = g
        w_k[layout["pos"].start, 0] = g / 2
        b_q = torch.zeros(d_head)
        b_q[0] = g
        set_head_qk(block1, 1, torch.zeros(d_model, d_head), w_k, b_q=b_q)
        w_v = torch.zeros(d_model, d_head)
        w_o = torch.zeros(d_head, d_model)
        w_v[layout["tok"].start + trig, 0] = 1.0
        w_o[0, layout["out"].start + refuse] = REFUSAL_GAIN
        set_head_ov(block1, 1, w_v, w_o)

        passthrough_layernorm(block0.ln_1, [1, 1], d_model)
        passthrough_layernorm(block0.ln_2, [1, 1, 0.5], d_model)
        passthrough_layernorm(block1.ln_1, [1, 1, 0.5], d_model)
        passthrough_layernorm(block1.ln_2, [1, 1, 0.5, 0.5, 1], d_model)
        passthrough_layernorm(model.transformer.ln_f, [1, 1, 0.5, 0.5, 1], d_model)

    return model, build_tokenizer(NAME)
