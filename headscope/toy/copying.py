"""``toy-copying``: a hand-set 2-layer, 2-heads-per-layer GPT-2 with one copying head.

Planted heads: ``copying = (1, 1)``.

Residual stream (d_model = 392, d_head = 196; V = 132 tokens, P = 128 positions):

* ``tok`` (V dims): one-hot token embedding, ``W_E[t] = e_tok[t]``;
* ``pos`` (P dims): one-hot learned position embedding, ``W_pos[p] = e_pos[p]``;
* ``out`` (V dims): written by the heads; the only subspace the unembedding reads,
  ``logit[t] = 10 * resid[out[t]]``.

Every head reads values from ``tok`` and writes into ``out``, so its token-level OV circuit is
``W_E @ W_V[h] @ W_O[h] @ W_U`` = ``10 * M_h`` with ``M_h`` the (V, V) map below.

* **0.0 permutation head (non-copying).** Uniform causal attention (``W_Q = W_K = 0``).
  OV: ``M = 0.5 * P_pi`` where ``pi`` is a seeded single V-cycle (no fixed points), so each token
  raises the logit of a *different* token and the OV diagonal is zero.
* **0.1 unrelated.** Attends to position 0 (BOS sink, score 24); seeded random OV, entries of
  std 0.02.
* **1.0 unrelated.** BOS sink as 0.1; another seeded random OV, std 0.02.
* **1.1 copying head.** QK: constant query bias against a key that reads ``pos[0]`` with score
  -24, so it attends uniformly to the earlier non-BOS tokens (and itself). OV: ``M = I``: the
  token at each attended position has its own logit raised; the OV matrix has its maximum on
  the diagonal for every token.

MLPs are zero; LayerNorms pass clean residuals through (tok, pos and about one unit of head
output; see :func:`~headscope.toy.weights.passthrough_layernorm`). The model's prediction at
position ``i`` is therefore (mostly) "one of the tokens seen so far".
"""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from headscope.toy.tokenizer import build_tokenizer
from headscope.toy.vocab import VOCAB
from headscope.toy.weights import (
    ResidualLayout,
    passthrough_layernorm,
    set_avoid_bos_qk,
    set_bos_sink_qk,
    set_one_hot_embeddings,
    set_random_ov,
    set_readout_unembed,
    set_token_ov,
    zeroed_gpt2,
)

__all__ = ["NAME", "N_CTX", "PLANTED", "build_copying", "cyclic_permutation"]

NAME = "toy-copying"
N_CTX = 128
PLANTED: dict[str, tuple[tuple[int, int], ...]] = {"copying": ((1, 1),)}
SCORE = 24.0
LOGIT_SCALE = 10.0
NOISE_STD = 0.02
PERMUTATION_SEED = 7


def cyclic_permutation(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` that is a single n-cycle (so no fixed points).

    Returns:
        ``pi`` of shape (n,), dtype long, with ``pi[order[k]] = order[(k + 1) % n]`` for a
        seeded random ``order``.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pi = torch.empty(n, dtype=torch.long)
    pi[order] = order.roll(-1)
    return pi


def build_copying() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Build ``toy-copying``: the hand-set GPT-2 described in the module docstring.

    Returns:
        ``(model, tokenizer)``; the model is float32, in eval mode, with d_model 392,
        2 layers, 2 heads of d_head 196, n_ctx 128 and the shared 132-token vocabulary.
    """
    n_vocab = len(VOCAB)
    layout = ResidualLayout(n_heads=2)
    layout.add("tok", n_vocab)
    layout.add("pos", N_CTX)
    layout.add("out", n_vocab)
    d_model = layout.d_model
    model = zeroed_gpt2(layout, n_layers=2, n_ctx=N_CTX, n_inner=4, name=NAME)
    eye = torch.eye(n_vocab)

    with torch.no_grad():
        set_one_hot_embeddings(model, layout)
        set_readout_unembed(model, layout, LOGIT_SCALE)
        block0, block1 = model.transformer.h

        # 0.0 permutation head: uniform attention, OV = 0.5 * permutation without fixed points.
        set_token_ov(block0, 0, layout, 0.5 * eye[cyclic_permutation(n_vocab, PERMUTATION_SEED)])
        # 0.1 and 1.0 unrelated: BOS sink + small random OV.
        set_bos_sink_qk(block0, 1, layout, SCORE)
        set_random_ov(block0, 1, layout, std=NOISE_STD, seed=303)
        set_bos_sink_qk(block1, 0, layout, SCORE)
        set_random_ov(block1, 0, layout, std=NOISE_STD, seed=404)
        # 1.1 copying head: attend to earlier non-BOS tokens, OV = identity.
        set_avoid_bos_qk(block1, 1, layout, SCORE)
        set_token_ov(block1, 1, layout, eye)

        passthrough_layernorm(block0.ln_1, [1, 1], d_model)
        passthrough_layernorm(block0.ln_2, [1, 1, 0.5], d_model)
        passthrough_layernorm(block1.ln_1, [1, 1, 0.5], d_model)
        passthrough_layernorm(block1.ln_2, [1, 1, 0.5, 1], d_model)
        passthrough_layernorm(model.transformer.ln_f, [1, 1, 0.5, 1], d_model)

    return model, build_tokenizer(NAME)
