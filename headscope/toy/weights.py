"""Helpers for writing hand-set weights into a tiny HF ``GPT2LMHeadModel``.

All the hand-built toys share one recipe:

* The residual stream (``d_model`` dims) is cut into named, disjoint *subspaces*
  (:class:`ResidualLayout`): e.g. ``tok`` (one dim per vocabulary token), ``pos`` (one dim per
  position), ``out`` (one dim per token, the only subspace the unembedding reads).
* Token and position embeddings are one-hot (value 1) in ``tok`` and ``pos``.
* Every parameter starts at zero (:func:`zeroed_gpt2`); each head's Q/K/V/O blocks are then
  written per head (:func:`set_head_qk`, :func:`set_head_ov`), in TransformerLens shapes:
  ``W_Q, W_K, W_V`` are (d_model, d_head), ``W_O`` is (d_head, d_model), biases (d_head,).
* LayerNorms are made to pass "clean" residual vectors through unchanged
  (:func:`passthrough_layernorm`): a clean residual has the same few unit entries at every
  position, hence the same mean ``mu`` and standard deviation ``sigma``, and setting
  ``weight = sigma`` and ``bias = mu`` (uniform over dims) turns ``LN(x) = (x - mu) / sigma *
  weight + bias`` into the identity. Residuals that differ a little (soft attention) are only
  rescaled by a factor close to one and shifted by a tiny uniform offset.

GPT-2 stores attention as ``Conv1D`` layers: ``c_attn.weight`` is (d_model, 3 * d_model) with
columns ``[Q | K | V]`` and head ``h`` at columns ``h * d_head : (h + 1) * d_head`` of each
third; ``c_proj.weight`` is (d_model, d_model) with head ``h`` at rows
``h * d_head : (h + 1) * d_head``. Attention scores are scaled by ``1 / sqrt(d_head)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.initialization import no_init_weights
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from headscope.toy.vocab import BOS, EOS, PAD, VOCAB

__all__ = [
    "LN_EPS",
    "ResidualLayout",
    "gain_for_score",
    "passthrough_layernorm",
    "random_matrix",
    "set_avoid_bos_qk",
    "set_bos_sink_qk",
    "set_head_ov",
    "set_head_qk",
    "set_one_hot_embeddings",
    "set_random_ov",
    "set_readout_unembed",
    "set_token_ov",
    "zeroed_gpt2",
]

LN_EPS = 1e-5
"""LayerNorm epsilon used by every GPT-2 toy (and included in the pass-through calibration)."""


class ResidualLayout:
    """Named, disjoint slices of the residual stream, allocated in order.

    Example: ``layout = ResidualLayout(n_heads=2); tok = layout.add("tok", 132)`` returns the
    slice of ``tok``; :attr:`d_model` is the total size rounded up to a multiple of ``n_heads``
    (the padding dims are never read or written).
    """

    def __init__(self, n_heads: int) -> None:
        """Start an empty layout for a model with ``n_heads`` heads per layer."""
        self.n_heads = n_heads
        self.slices: dict[str, slice] = {}
        self._used = 0

    def add(self, name: str, size: int) -> slice:
        """Allocate ``size`` dims named ``name`` after the previous subspaces; return the slice."""
        if name in self.slices:
            raise ValueError(f"subspace {name!r} already allocated")
        sl = slice(self._used, self._used + size)
        self.slices[name] = sl
        self._used += size
        return sl

    def __getitem__(self, name: str) -> slice:
        """The slice of subspace ``name``."""
        return self.slices[name]

    @property
    def d_model(self) -> int:
        """Residual width: the allocated dims rounded up to a multiple of ``n_heads``."""
        return -(-self._used // self.n_heads) * self.n_heads

    @property
    def d_head(self) -> int:
        """Per-head width, ``d_model // n_heads``."""
        return self.d_model // self.n_heads


def zeroed_gpt2(
    layout: ResidualLayout, *, n_layers: int, n_ctx: int, n_inner: int, name: str
) -> GPT2LMHeadModel:
    """A float32 ``GPT2LMHeadModel`` (eval mode) over the shared vocabulary, every weight zero.

    Args:
        layout: gives ``d_model`` (``n_embd``) and ``n_heads``.
        n_layers: number of blocks.
        n_ctx: number of learned positions (``n_positions``).
        n_inner: MLP hidden width.
        name: recorded as the config's ``name_or_path``.

    Returns:
        The model with untied, all-zero embedding, attention, MLP, LayerNorm and unembedding
        parameters. Building it leaves the global torch RNG state untouched.
    """
    config = GPT2Config(
        vocab_size=len(VOCAB),
        n_positions=n_ctx,
        n_embd=layout.d_model,
        n_layer=n_layers,
        n_head=layout.n_heads,
        n_inner=n_inner,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=LN_EPS,
        bos_token_id=VOCAB[BOS],
        eos_token_id=VOCAB[EOS],
        pad_token_id=VOCAB[PAD],
        tie_word_embeddings=False,
        architectures=["GPT2LMHeadModel"],
    )
    config.name_or_path = name
    # Skip the random init (every weight is overwritten) and keep the global RNG untouched.
    with torch.random.fork_rng(devices=[]), no_init_weights():
        model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    return model.to(torch.float32).eval()


def gain_for_score(score: float, d_head: int) -> float:
    """Weight ``g`` such that a query ``g * e`` and key ``g * e`` give attention score ``score``.

    GPT-2 divides ``q . k`` by ``sqrt(d_head)``, so ``g = sqrt(score * sqrt(d_head))``.
    """
    return math.sqrt(score * math.sqrt(d_head))


def _head_cols(block: GPT2Block, head: int) -> tuple[int, int]:
    d_head = block.attn.head_dim
    return head * d_head, (head + 1) * d_head


@torch.no_grad()
def set_head_qk(
    block: GPT2Block,
    head: int,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    b_q: torch.Tensor | None = None,
    b_k: torch.Tensor | None = None,
) -> None:
    """Write one head's query/key weights into a GPT-2 block.

    Args:
        block: the ``GPT2Block`` (``model.transformer.h[layer]``).
        head: head index.
        w_q: W_Q of the head, shape (d_model, d_head).
        w_k: W_K of the head, shape (d_model, d_head).
        b_q: optional b_Q, shape (d_head,).
        b_k: optional b_K, shape (d_head,).
    """
    d_model = block.attn.embed_dim
    lo, hi = _head_cols(block, head)
    weight, bias = block.attn.c_attn.weight, block.attn.c_attn.bias
    weight[:, lo:hi] = w_q
    weight[:, d_model + lo : d_model + hi] = w_k
    if b_q is not None:
        bias[lo:hi] = b_q
    if b_k is not None:
        bias[d_model + lo : d_model + hi] = b_k


@torch.no_grad()
def set_head_ov(block: GPT2Block, head: int, w_v: torch.Tensor, w_o: torch.Tensor) -> None:
    """Write one head's value/output weights into a GPT-2 block.

    Args:
        block: the ``GPT2Block``.
        head: head index.
        w_v: W_V of the head, shape (d_model, d_head).
        w_o: W_O of the head, shape (d_head, d_model).
    """
    d_model = block.attn.embed_dim
    lo, hi = _head_cols(block, head)
    block.attn.c_attn.weight[:, 2 * d_model + lo : 2 * d_model + hi] = w_v
    block.attn.c_proj.weight[lo:hi, :] = w_o


@torch.no_grad()
def passthrough_layernorm(
    ln: torch.nn.LayerNorm, entries: Sequence[float], d_model: int, eps: float = LN_EPS
) -> None:
    """Set a LayerNorm so that it maps a residual with the given non-zero ``entries`` to itself.

    A residual of shape (d_model,) whose non-zero values are ``entries`` (e.g. ``[1, 1]`` for a
    one-hot token plus a one-hot position) has mean ``mu = sum(entries) / d_model`` and variance
    ``var = sum(e**2) / d_model - mu**2``; with ``weight = sqrt(var + eps)`` and ``bias = mu``
    on every dim, ``LN(x) = x`` for every such residual.
    """
    total = float(sum(entries))
    sumsq = float(sum(e * e for e in entries))
    mu = total / d_model
    var = sumsq / d_model - mu * mu
    ln.weight.fill_(math.sqrt(var + eps))
    ln.bias.fill_(mu)


def random_matrix(rows: int, cols: int, *, std: float, seed: int) -> torch.Tensor:
    """A seeded Gaussian matrix of shape (rows, cols) with entry std ``std`` (global RNG untouched)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen, dtype=torch.float32) * std


@torch.no_grad()
def set_one_hot_embeddings(model: GPT2LMHeadModel, layout: ResidualLayout) -> None:
    """One-hot token embeddings in subspace ``tok`` and position embeddings in ``pos``.

    ``W_E`` (d_vocab, d_model) gets ``W_E[t, tok[t]] = 1``; ``W_pos`` (n_ctx, d_model) gets
    ``W_pos[p, pos[p]] = 1``.
    """
    tok, pos = layout["tok"], layout["pos"]
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    wte[:, tok] = torch.eye(wte.shape[0])
    wpe[:, pos] = torch.eye(wpe.shape[0])


@torch.no_grad()
def set_readout_unembed(model: GPT2LMHeadModel, layout: ResidualLayout, scale: float) -> None:
    """Unembedding that reads only subspace ``out``: ``logit[t] = scale * resid[out[t]]``.

    Sets ``lm_head.weight`` (d_vocab, d_model), i.e. ``W_U`` (d_model, d_vocab) is ``scale``
    times the identity from ``out`` to the vocabulary and zero elsewhere.
    """
    out = layout["out"]
    weight = model.lm_head.weight
    weight[:, out] = scale * torch.eye(weight.shape[0])


def set_bos_sink_qk(
    block: GPT2Block, head: int, layout: ResidualLayout, score: float, dim: int = 0
) -> None:
    """Make a head attend to position 0 (the BOS sink) with score ``score`` above any other key.

    The query is a constant bias ``g * e_dim`` (shape (d_head,)); the key reads the position-0
    one-hot, ``W_K[pos[0], dim] = g``, so only key 0 scores ``score`` and all others score 0.
    """
    d_model, d_head = layout.d_model, layout.d_head
    g = gain_for_score(score, d_head)
    w_q = torch.zeros(d_model, d_head)
    w_k = torch.zeros(d_model, d_head)
    w_k[layout["pos"].start, dim] = g
    b_q = torch.zeros(d_head)
    b_q[dim] = g
    set_head_qk(block, head, w_q, w_k, b_q=b_q)


def set_random_ov(
    block: GPT2Block, head: int, layout: ResidualLayout, *, std: float, seed: int
) -> None:
    """A seeded random OV circuit from subspace ``tok`` to subspace ``out``.

    ``W_V`` reads ``tok`` into the first ``d_head`` head dims with N(0, std^2) entries and
    ``W_O`` writes them into ``out`` with N(0, 1/d_head) entries, so the token-to-token OV
    matrix ``W_V[tok] @ W_O[:, out]`` (d_vocab, d_vocab) has entries of std about ``std``.
    """
    d_model, d_head = layout.d_model, layout.d_head
    tok, out = layout["tok"], layout["out"]
    n_tok, n_out = tok.stop - tok.start, out.stop - out.start
    w_v = torch.zeros(d_model, d_head)
    w_o = torch.zeros(d_head, d_model)
    w_v[tok] = random_matrix(n_tok, d_head, std=std, seed=seed)
    w_o[:, out] = random_matrix(d_head, n_out, std=d_head**-0.5, seed=seed + 1)
    set_head_ov(block, head, w_v, w_o)


def set_token_ov(
    block: GPT2Block, head: int, layout: ResidualLayout, token_map: torch.Tensor
) -> None:
    """Give a head the token-level OV map ``token_map`` from subspace ``tok`` to ``out``.

    Args:
        block: the ``GPT2Block``.
        head: head index.
        layout: residual layout with ``tok`` and ``out`` subspaces of V dims each.
        token_map: (V, V); row ``t`` is what the head writes into ``out`` when it attends to
            token ``t``. ``W_V`` copies ``tok`` into head dims ``0..V-1`` and ``W_O`` applies
            ``token_map`` (needs ``d_head >= V``).
    """
    n_vocab = token_map.shape[0]
    w_v = torch.zeros(layout.d_model, layout.d_head)
    w_o = torch.zeros(layout.d_head, layout.d_model)
    w_v[layout["tok"], :n_vocab] = torch.eye(n_vocab)
    w_o[:n_vocab, layout["out"]] = token_map
    set_head_ov(block, head, w_v, w_o)


def set_avoid_bos_qk(block: GPT2Block, head: int, layout: ResidualLayout, score: float) -> None:
    """Uniform causal attention except that key position 0 scores ``-score`` (BOS avoided)."""
    d_model, d_head = layout.d_model, layout.d_head
    g = gain_for_score(score, d_head)
    w_k = torch.zeros(d_model, d_head)
    w_k[layout["pos"].start, 0] = -g
    b_q = torch.zeros(d_head)
    b_q[0] = g
    set_head_qk(block, head, torch.zeros(d_model, d_head), w_k, b_q=b_q)
