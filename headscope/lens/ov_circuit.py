"""The effective OV circuit of a head, shared by the successor and copying scorers.

For a token ``t`` and a head ``(L, h)`` the effective OV circuit (Gould et al. 2023,
"Successor Heads: Recurring, Interpretable Attention Heads In The Wild", Sec. 2) is::

    logits(t) = W_U^T . W_OV^h . e(t)        shape (d_vocab,)  (or the selected output tokens)

where ``e(t)`` is an *effective embedding* of ``t`` and ``W_OV^h = W_V^{kv(h)} W_O^h``.

Effective-embedding recipes (``EMBEDDING_RECIPES``), all ignoring layer-0 attention:

- ``"mlp0"``: ``MLP0(LN2_0(E[t]))`` -- the first MLP's output alone (Gould et al.'s choice);
- ``"embed_mlp0"``: ``E[t] + MLP0(LN2_0(E[t]))`` -- the residual after block 0 without
  attention (what a later head actually reads);
- ``"embed"``: ``E[t]`` -- the embedding (the classic OV circuit of Elhage et al. 2021).

``E[t]`` is the token's embedding as it enters the residual stream: ``W_E[t]`` times the
model's embedding scale (``sqrt(d_model)`` on Gemma; :func:`headscope.trace.embedding.embedding_scale`).

``ln=True`` applies the model's real norms, as in the forward pass (bridge components, so
Gemma's ``1 + weight`` and OLMo-2's post-norms are what the model computes): block 0's ``ln2``
before MLP0 and ``ln2_post`` after it where present; the head's block ``ln1`` before ``W_V``
where present; the linear part of the post-attention norm ``ln1_post`` on the head's output
where present (Gemma-2/3, OLMo-2); and the final norm's linear part before ``W_U``
(mean-centring for LayerNorm models and the effective elementwise weight;
:mod:`headscope.models.norms`). The per-input scales of those two norms and their biases are
dropped: a positive per-input scale does not change rankings, and a bias adds the same offset
for every input token. ``ln=False`` uses the raw vectors everywhere (MLP0 still
receives ``E[t]``). ``ln="fold"`` is TransformerLens's processed-weights view (``fold_ln``,
``center_writing_weights``), which MAPS's reference code reads: the head's ``ln1`` weight
multiplies its input instead of the whole norm (no centring, no normalisation), the rest as
``ln=True``. Attention biases (``b_V``, ``b_O``) are excluded. Positional embeddings
(GPT-2) are not added.

GQA: bridge ``W_V`` holds only the KV heads (``(n_kv_heads, d_model, d_head)``); query head
``h`` reads KV head ``model.kv_head(h)`` (HF ``repeat_kv`` order), and ``W_O`` is per query head.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from headscope.errors import HeadscopeError
from headscope.models.norms import block_norm, final_norm
from headscope.trace.embedding import embedding_scale

EMBEDDING_RECIPES: tuple[str, ...] = ("mlp0", "embed_mlp0", "embed")


def _check_recipe(recipe: str) -> None:
    if recipe not in EMBEDDING_RECIPES:
        from headscope.errors import suggest

        raise HeadscopeError(
            f"unknown effective_embedding '{recipe}'.{suggest(recipe, EMBEDDING_RECIPES)} "
            f"Choose from {', '.join(EMBEDDING_RECIPES)}."
        )


def _block_part(model: Any, layer: int, name: str) -> Any | None:
    """Block ``layer``'s bridge component ``name`` (``ln1``, ``ln2_post``, ...) or None."""
    block = model.bridge.blocks[layer]
    return getattr(block, name) if name in dict(block.named_children()) else None


LN_MODES: tuple[object, ...] = (True, False, "fold")


def _head_input(model: Any, layer: int, emb: torch.Tensor, ln: bool | str) -> torch.Tensor:
    """What the head's ``W_V`` reads: ``ln1(emb)`` (``ln=True``), ``emb * w_ln1`` (``"fold"``:
    TransformerLens ``fold_ln``, the norm's weight folded into ``W_V``, no normalisation) or
    ``emb`` (``ln=False``)."""
    if ln is False:
        return emb
    if ln == "fold":
        spec = block_norm(model, layer, "ln1")
        return emb if spec is None else emb * spec.weight.to(emb.device, emb.dtype)
    pre = _block_part(model, layer, "ln1")
    return pre(emb.unsqueeze(0))[0] if pre is not None else emb


def check_ln(ln: object) -> None:
    """One-line error for an unknown norm convention."""
    if ln not in LN_MODES or isinstance(ln, int) and not isinstance(ln, bool):
        raise HeadscopeError(f"unknown ln {ln!r}: use true (real norms), false (none) or fold (norm weights folded).")


def final_readout(model: Any, w_u: torch.Tensor, ln: bool | str = True) -> torch.Tensor:
    """``W_U`` (d_model, n_out) with the final norm's linear part folded in (``ln=True``).

    ``centre(x) * w`` as a matrix: rows scaled by the effective weight ``w``, then (LayerNorm)
    each column's mean over ``d_model`` removed. ``ln="fold"`` gives the same matrix (it is what
    TransformerLens's ``fold_ln`` plus ``center_writing_weights`` compute for the final norm).
    """
    if ln is False:
        return w_u
    spec = final_norm(model)
    out = spec.weight.to(w_u.device, w_u.dtype).unsqueeze(1) * w_u
    return out - out.mean(0, keepdim=True) if spec.centred else out


def w_v(model: Any, layer: int) -> torch.Tensor:
    """Value weights per KV head, (n_kv_heads, d_model, d_head), checked against the config."""
    wv = model.bridge.blocks[layer].attn.W_V.detach()
    if wv.shape[0] not in (model.n_kv_heads, model.n_heads):
        raise HeadscopeError(f"unexpected W_V shape {tuple(wv.shape)} at layer {layer}.")
    return wv


def ov_weights(model: Any, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_V, W_O)`` of query head ``head``: (d_model, d_head) and (d_head, d_model).

    Under GQA ``W_V`` is the one of the head's KV group, ``model.kv_head(head)``.
    """
    wv = w_v(model, layer)
    kv = model.kv_head(head) if wv.shape[0] == model.n_kv_heads else head
    return wv[kv], model.bridge.blocks[layer].attn.W_O[head].detach()


def effective_embedding(model: Any, token_ids: Sequence[int] | torch.Tensor, recipe: str = "mlp0", ln: bool = True) -> torch.Tensor:
    """Effective embeddings of ``token_ids``: (n_tokens, d_model). See the module docstring."""
    _check_recipe(recipe)
    bridge = model.bridge
    ids = torch.as_tensor(list(token_ids) if not torch.is_tensor(token_ids) else token_ids, dtype=torch.long)
    with torch.inference_mode():
        emb = bridge.W_E.detach()[ids.to(bridge.W_E.device)] * embedding_scale(model)  # (n, d_model)
        if recipe == "embed":
            return emb.clone()
        pre, post = _block_part(model, 0, "ln2"), _block_part(model, 0, "ln2_post")
        x = pre(emb.unsqueeze(0)) if ln and pre is not None else emb.unsqueeze(0)
        mlp = bridge.blocks[0].mlp(x)
        mlp = (post(mlp) if ln and post is not None else mlp)[0]
        return mlp if recipe == "mlp0" else emb + mlp


def ov_logits(
    model: Any,
    layer: int,
    head: int,
    emb: torch.Tensor,
    out_ids: Sequence[int] | torch.Tensor | None = None,
    ln: bool = True,
) -> torch.Tensor:
    """``W_U^T W_OV^h e`` for each effective embedding row: (n_tokens, n_out).

    Args:
        emb: (n_tokens, d_model) effective embeddings.
        out_ids: output tokens to score (default: the whole vocabulary).
        ln: apply the head's ``ln1`` to ``emb`` and the final norm's weight before ``W_U``.
    """
    return next(iter_ov_logits(model, emb, out_ids, ln, heads=[(layer, head)]))[2]


def iter_ov_logits(
    model: Any,
    emb: torch.Tensor,
    out_ids: Sequence[int] | torch.Tensor | None = None,
    ln: bool = True,
    heads: Sequence[tuple[int, int]] | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(layer, head, logits (n_tokens, n_out))`` for every head (or ``heads``).

    The unembedding is folded per head as ``(W_O^h * w_final) W_U`` (d_head, n_out), so the cost
    per head is O(d_head * d_model * n_out + n_tokens * d_head * n_out), never a
    (n_tokens, d_model, d_vocab) product.
    """
    bridge = model.bridge
    with torch.inference_mode():
        w_u = bridge.W_U.detach()
        if out_ids is not None:
            w_u = w_u[:, torch.as_tensor(list(out_ids) if not torch.is_tensor(out_ids) else out_ids, dtype=torch.long)]
        w_u = final_readout(model, w_u, ln)
        wanted = heads if heads is not None else [(lay, h) for lay in range(model.n_layers) for h in range(model.n_heads)]
        normed: dict[int, torch.Tensor] = {}
        for layer, head in wanted:
            if layer not in normed:
                normed = {layer: _head_input(model, layer, emb, ln)}
            wv, wo = ov_weights(model, layer, head)
            v = normed[layer] @ wv  # (n, d_head)
            post = block_norm(model, layer, "ln1_post") if ln else None
            if post is not None:  # the post-attention norm's linear part (its per-row scale dropped)
                wo = post.linear(wo).to(wo.dtype)
            yield layer, head, v @ (wo @ w_u)
