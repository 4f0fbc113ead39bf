"""Token-level information flow routes: the graph of Ferrando & Voita 2024 ("Information Flow
Routes: Automatically Interpreting Language Models at Scale", Sec. 3, Alg. 1).

Nodes are residual states at (layer, position): ``x{l}`` is the residual entering block ``l``
(``x0`` the embedding, ``x{L}`` the final residual before the final norm) and ``x{l}.mid`` the
residual between block ``l``'s attention and MLP. Each state is a sum, and each term of the sum
is an edge, weighted by its proximity importance (their Eq. 2, L1 norm as in ALTI)

``imp(c, y) = max(||y||_1 - ||y - c||_1, 0) / sum_c' max(||y||_1 - ||y - c'||_1, 0)``

over the terms ``c'`` of ``y``:

* attention, ``y = x{l}.mid_i``: the residual ``x{l}_i`` (edge ``x{l}[i] -> x{l}.mid[i]`` via
  ``resid``), one term per query head ``h`` and source position ``j <= i``,
  ``A^h[i, j] v_j W_O^h`` (edge ``x{l}[j] -> x{l}.mid[i]`` via ``a{l}.h{h}``; ``v_j`` is the
  value of the head's KV head under GQA, so each query head has its own edges), and the output
  bias (``attn_out_i - sum_{h,j}`` of the pieces: a term of the sum but no edge);
* MLP, ``y = x{l+1}_i``: the residual ``x{l}.mid_i`` (via ``resid``) and the MLP output (via
  ``m{l}``), both from ``x{l}.mid[i]``. Parallel-residual blocks (GPT-NeoX) have no mid node:
  ``y = x{l+1}_i`` is the residual, the MLP output (from ``x{l}[i]``) and the head pieces.

The route is built top-down from ``x{L}`` at each prompt's END (Alg. 1): an edge into an active
node with ``imp > tau`` is kept and its source becomes active. One clean forward per batch of
prompts, no gradients. Post-norm families (Gemma-2/3, OLMo-2): a head piece is taken through
the post-attention norm with its scale frozen at the sublayer's (the pieces then sum to the
norm's output exactly; the split is an approximation there, as in :mod:`.routes`).

Output rows (per prompt, column ``prompt``): every edge into an active node whose importance is
positive, ``sender`` / ``receiver`` the node names, ``source_position`` / ``position`` their
positions, ``via`` the component (``a{l}.h{h}``, ``m{l}`` or ``resid``), ``score`` the
importance and ``circuit`` whether it is on the route (``imp > tau``).

The authors' code: ``facebookresearch/llm-transparency-tool`` @f1340f0,
``llm_transparency_tool/routes/contributions.py`` (``get_contributions``: proximity clipped at
``EPS = 1e-5``; ``get_attention_contributions``; ``get_mlp_contributions``) and
``routes/graph.py`` (``build_full_graph``, ``build_paths_to_predictions``). Departures: edges
per query head (the tool sums a token pair's heads), proximity clipped at 0, and the attention
output bias a term of the sum (the tool leaves ``b_O`` in the whole without a part).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from headscope.circuits.graph import parallel_residual
from headscope.circuits.routes import _post_scale, proximity_importance
from headscope.patching.engine import hook_alias


@torch.inference_mode()
def _run(model: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cached clean run: resid_pre/attn_out/mlp_out/z/v/pattern per layer and the final residual."""
    names: dict[str, str] = {"final": hook_alias("resid_post", model.n_layers - 1)}
    for layer in range(model.n_layers):
        for act in ("resid_pre", "attn_out", "mlp_out", "z", "v", "pattern"):
            names[f"{act}{layer}"] = hook_alias(act, layer)
    wanted = set(names.values())
    _, cache = model.bridge.run_with_cache(tokens.to(model.device), names_filter=lambda n: n in wanted)
    return {k: cache[v].detach().float().cpu() for k, v in names.items()}


def _resid(run: dict[str, torch.Tensor], layer: int, n_layers: int) -> torch.Tensor:
    """(n, pos, d) residual entering block ``layer`` (the final residual for ``n_layers``)."""
    return run["final"] if layer == n_layers else run[f"resid_pre{layer}"]


def token_routes(model: Any, tokens: torch.Tensor, end: torch.Tensor, threshold: float = 0.04) -> pd.DataFrame:
    """The route rows of every prompt (see the module docstring).

    Args:
        tokens: (n, pos) right-padded prompts; end: (n,) each prompt's prediction position.
        threshold: the paper's tau.

    Returns:
        DataFrame with columns prompt, sender, source_position, receiver, position, via, score,
        circuit, sender_layer, receiver_layer.
    """
    run = _run(model, tokens)
    n_layers, n_heads = model.n_layers, model.n_heads
    w_o = [model.bridge.blocks[layer].attn.W_O.detach().float().cpu() for layer in range(n_layers)]  # (H, d_head, d)
    post = [_post_scale(model, run, layer) for layer in range(n_layers)]
    parallel = parallel_residual(model)
    rows: list[tuple] = []
    for row in range(tokens.shape[0]):
        active = {int(end[row])}  # positions of active x{l+1} nodes
        for layer in reversed(range(n_layers)):
            x_in, x_out = _resid(run, layer, n_layers)[row], _resid(run, layer + 1, n_layers)[row]
            mlp = run[f"mlp_out{layer}"][row]
            attn = run[f"attn_out{layer}"][row]
            # per head, per source: v_j W_O^h (H, pos, d); GQA: head h reads KV head kv_head(h)
            v = run[f"v{layer}"][row]  # (pos, n_kv, d_head)
            vo = torch.stack([v[:, model.kv_head(h)] @ w_o[layer][h] for h in range(n_heads)])
            pattern = run[f"pattern{layer}"][row]  # (H, q, k)
            mid_active: set[int] = set()
            nxt: set[int] = set()
            for i in sorted(active):
                if parallel:
                    pieces = _pieces(pattern, vo, post[layer][row, i], i)
                    terms = torch.cat([x_in[i][None], mlp[i][None], pieces, (attn[i] - pieces.sum(0))[None]])
                    imp = proximity_importance(terms, x_out[i])
                    rows.append((row, f"x{layer}", i, f"x{layer + 1}", i, "resid", float(imp[0]), layer, layer + 1))
                    rows.append((row, f"x{layer}", i, f"x{layer + 1}", i, f"m{layer}", float(imp[1]), layer, layer + 1))
                    nxt |= {i} if max(float(imp[0]), float(imp[1])) > threshold else set()
                    nxt |= _heads(rows, row, layer, i, imp[2:-1], n_heads, f"x{layer + 1}", layer + 1, threshold)
                    continue
                imp = proximity_importance(torch.stack([x_out[i] - mlp[i], mlp[i]]), x_out[i])
                rows.append((row, f"x{layer}.mid", i, f"x{layer + 1}", i, "resid", float(imp[0]), layer, layer + 1))
                rows.append((row, f"x{layer}.mid", i, f"x{layer + 1}", i, f"m{layer}", float(imp[1]), layer, layer + 1))
                if float(imp.max()) > threshold:
                    mid_active.add(i)
            for i in sorted(mid_active):
                pieces = _pieces(pattern, vo, post[layer][row, i], i)
                terms = torch.cat([x_in[i][None], pieces, (attn[i] - pieces.sum(0))[None]])
                imp = proximity_importance(terms, x_in[i] + attn[i])
                rows.append((row, f"x{layer}", i, f"x{layer}.mid", i, "resid", float(imp[0]), layer, layer))
                nxt |= {i} if float(imp[0]) > threshold else set()
                nxt |= _heads(rows, row, layer, i, imp[1:-1], n_heads, f"x{layer}.mid", layer, threshold)
            active = nxt
    cols = ["prompt", "sender", "source_position", "receiver", "position", "via", "score", "sender_layer", "receiver_layer"]
    out = pd.DataFrame(rows, columns=cols)
    out = out[out["score"] > 0].reset_index(drop=True)
    out["circuit"] = out["score"] > threshold
    return out


def _pieces(pattern: torch.Tensor, vo: torch.Tensor, post: torch.Tensor, i: int) -> torch.Tensor:
    """(H * (i+1), d) head-major pieces ``A^h[i, j] v_j W_O^h`` (times the frozen post-norm factor).

    Args:
        pattern: (H, q, k); vo: (H, pos, d) ``v_j W_O^h``; post: (d,) or (1,) factor at ``i``.
    """
    heads = pattern[:, i, : i + 1, None] * vo[:, : i + 1] * post
    return heads.reshape(-1, heads.shape[-1])


def _heads(rows: list[tuple], row: int, layer: int, i: int, imp: torch.Tensor, n_heads: int, receiver: str,
           receiver_layer: int, threshold: float) -> set[int]:
    """Append the head edges ``x{layer}[j] -> receiver[i]`` (imp: (H * (i+1),), head-major);
    return the source positions of the kept ones."""
    kept: set[int] = set()
    per = imp.view(n_heads, i + 1).tolist()
    for h in range(n_heads):
        for j, value in enumerate(per[h]):
            rows.append((row, f"x{layer}", j, receiver, i, f"a{layer}.h{h}", value, layer, receiver_layer))
            if value > threshold:
                kept.add(j)
    return kept
