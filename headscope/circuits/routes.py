"""Information flow routes (Ferrando & Voita 2024, "Information Flow Routes: Automatically
Interpreting Language Models at Scale", Sec. 3), on headscope's edge graph (``level=component``,
the default); ``level=token`` is the paper's own graph over (layer, position) residual states
(:mod:`.token_routes`).

One clean forward, no gradients and no corrupted prompts. The route is traced top-down from the
prediction: start at the logits' input at each prompt's END position; for an active receiver
input at position ``p`` reading the residual ``y_p = sum_s x_{s,p} (+ biases)``, the importance
of each upstream sender is the ALTI-style proximity (their Eq. 2, L1 distance)

``imp(x_s, y) = max(||y||_1 - ||y - x_s||_1, 0) / sum_s' max(||y||_1 - ||y - x_s'||_1, 0)``.

Senders with ``imp > threshold`` (the paper's tau) are kept and become active: an MLP at ``p``
makes its own input at ``p`` active; an attention head at ``p`` splits its output into the
pieces moved from each source position, ``A[p, p'] v_{p'} W_O^h``, and makes its **value**
input at the source positions whose piece has ``imp > threshold`` active (information flows
through values; queries and keys decide where it comes from but move none, so routes never
score q or k edges: they get 0). The embedding is a leaf.

Edge score: over prompts, the mean of the largest importance the edge had at an active
position (0 where it was never reached); the circuit flag marks edges kept on some prompt's
route. Head outputs are ``z_h W_O^h``; on post-norm families (Gemma-2/3, OLMo-2) the
head's share of the post-attention norm's output is taken with the norm's scale frozen at the
sublayer's (an approximation there). Under GQA a head's value input is its KV head's. This is
``aggregate=trace``, the default; ``aggregate=reference`` is EAP-IG's port of the method (every
input at every position, averaged, no tracing: :mod:`.routes_reference`). The authors' own code
(``facebookresearch/llm-transparency-tool``) is token level: see :mod:`.token_routes`.
"""

from __future__ import annotations

from typing import Any

import torch

from headscope.circuits.exact import mlp_input_act
from headscope.circuits.graph import EdgeGraph
from headscope.circuits.methods import register_circuit_method
from headscope.errors import HeadscopeError
from headscope.patching.engine import hook_alias


def proximity_importance(parts: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Ferrando & Voita's importance of each part to their sum: parts (m, d), total (d,) -> (m,)."""
    prox = (total.abs().sum() - (total.unsqueeze(0) - parts).abs().sum(-1)).clamp(min=0)
    s = prox.sum()
    return prox / s if s > 0 else torch.zeros_like(prox)


@torch.inference_mode()
def _clean_run(model: Any, tokens: torch.Tensor, pos_embed: bool = False) -> dict[str, torch.Tensor]:
    """Cached clean activations (float32, CPU); ``pos_embed``: also ``pos`` (the learned position
    embedding, where the model has one)."""
    mlp_act = mlp_input_act(model)
    names: dict[str, str] = {"emb": hook_alias("resid_pre", 0), "final": hook_alias("resid_post", model.n_layers - 1)}
    if pos_embed and "hook_pos_embed" in model.bridge.hook_dict:
        names["pos"] = "hook_pos_embed"
    for layer in range(model.n_layers):
        for act in ("resid_pre", "attn_out", "mlp_out", "z", "v", "pattern"):
            names[f"{act}{layer}"] = hook_alias(act, layer)
        names[f"mlp_in{layer}"] = hook_alias(mlp_act, layer)
    wanted = set(names.values())
    _, cache = model.bridge.run_with_cache(tokens.to(model.device), names_filter=lambda n: n in wanted)
    fired = set(cache.keys())  # rotary models have a pos_embed hook that never fires
    return {k: cache[v].detach().float().cpu() for k, v in names.items() if k != "pos" or v in fired}


def trace_routes(model: Any, tokens: torch.Tensor, end: torch.Tensor, graph: EdgeGraph,
                 threshold: float = 0.04) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-edge route importance and kept flags (see the module docstring).

    Returns:
        (score (E,), kept (E,) bool).
    """
    run = _clean_run(model, tokens)
    w_o = [model.bridge.blocks[layer].attn.W_O.detach().float().cpu() for layer in range(model.n_layers)]
    post = [_post_scale(model, run, layer) for layer in range(model.n_layers)]
    index = {e.key: i for i, e in enumerate(graph.edges)}
    senders_of: dict[str, list[str]] = {}
    for e in graph.edges:
        senders_of.setdefault(e.receiver.key, []).append(e.sender.name)
    n = tokens.shape[0]
    best = torch.zeros(n, len(graph.edges))

    def output(name: str, row: int, p: int) -> torch.Tensor:
        if name == "input":
            return run["emb"][row, p]
        if name.startswith("m"):
            return run[f"mlp_out{int(name[1:])}"][row, p]
        layer, h = (int(x) for x in name[1:].split(".h"))
        return (run[f"z{layer}"][row, p, h] @ w_o[layer][h]) * post[layer][row, p]

    def site(key: str, row: int, p: int) -> torch.Tensor:
        name, inp = key[:-1].split("<")
        if name == "logits":
            return run["final"][row, p]
        if name.startswith("m"):
            return run[f"mlp_in{int(name[1:])}"][row, p]
        return run[f"resid_pre{int(name[1:].split('.')[0])}"][row, p]

    for row in range(n):
        active = {("logits<in>", int(end[row]))}
        done: set[tuple[str, int]] = set()
        while active:
            key, p = active.pop()
            done.add((key, p))
            names = senders_of.get(key, [])
            if not names:
                continue
            imp = proximity_importance(torch.stack([output(s, row, p) for s in names]), site(key, row, p))
            for s, value in zip(names, imp.tolist(), strict=True):
                i = index[f"{s}->{key}"]
                best[row, i] = max(best[row, i], value)
                if value <= threshold or s == "input":
                    continue
                for nxt in _upstream(model, s, row, p, run, w_o, post, threshold):
                    if nxt not in done:
                        active.add(nxt)
    score = best.mean(0)
    kept = (best > threshold).any(0)
    return score, kept


def _upstream(model: Any, sender: str, row: int, p: int, run: dict[str, torch.Tensor], w_o: list[torch.Tensor],
              post: list[torch.Tensor], threshold: float) -> list[tuple[str, int]]:
    """The receiver inputs a kept sender at position ``p`` makes active."""
    if sender.startswith("m"):
        return [(f"{sender}<in>", p)]
    layer, h = (int(x) for x in sender[1:].split(".h"))
    g = model.kv_head(h)
    pattern = run[f"pattern{layer}"][row, h, p, : p + 1]  # (p'+1,)
    values = run[f"v{layer}"][row, : p + 1, g]  # (p'+1, d_head)
    pieces = pattern.unsqueeze(-1) * (values @ w_o[layer][h]) * post[layer][row, p]
    imp = proximity_importance(pieces, pieces.sum(0))
    name = f"a{layer}.kv{g}" if model.n_kv_heads < model.n_heads else f"a{layer}.h{g}"
    return [(f"{name}<v>", q) for q, value in enumerate(imp.tolist()) if value > threshold]


def _post_scale(model: Any, run: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """(n, pos, d) factor taking ``z_h W_O^h`` to its share of the attention sublayer's output:
    ones, or the post-attention norm's elementwise weight over the sublayer's frozen scale."""
    from headscope.models.norms import block_norm

    spec = block_norm(model, layer, "ln1_post")
    attn = run[f"attn_out{layer}"]
    if spec is None:
        return torch.ones(1, 1, 1).expand(*attn.shape[:2], 1)
    pre = sum(run[f"z{layer}"][:, :, h] @ model.bridge.blocks[layer].attn.W_O.detach().float().cpu()[h]
              for h in range(model.n_heads))
    return spec.weight.float().cpu() / spec.scale(pre)


LEVELS = ("component", "token")
AGGREGATES = ("trace", "reference")


@register_circuit_method("routes", "information flow routes: proximity importance traced from the prediction (no corrupted run)",
                         presets={"paper": {"level": "token", "threshold": 0.04},
                                  "reference": {"level": "component", "aggregate": "reference"}})
def routes(model: Any, task: Any, threshold: float = 0.04, level: str = "component", aggregate: str = "trace") -> Any:
    """Information flow routes (Ferrando & Voita 2024) on the task's clean prompts.

    Args:
        threshold: the paper's tau: edges with importance above it are kept and traced further
            (``aggregate=reference``: the circuit flag marks edges whose score is above it).
        level: ``component`` (default: the routes projected onto headscope's edge graph, one row
            per sender -> receiver input, comparable with ``eap``/``exact`` and usable by
            ``circuit evaluate`` and ``compare``) or ``token`` (the paper's own graph over
            residual states at (layer, position), one row per prompt and edge with positions:
            :mod:`.token_routes`). The component level is a summary of the paper's route (the
            largest importance an edge reached at any position), not a different method, which
            is why it stays the default: every other circuit tool reads its schema.
        aggregate: component level only. ``trace`` (default): the route traced from END as
            above (max over positions on the route, q/k edges 0). ``reference``: EAP-IG's
            ``get_scores_information_flow_routes`` (``hannamw/EAP-IG`` @795f560,
            ``src/eap/attribute.py`` L310-415): every receiver input (q, k, v, MLP, logits)
            scored at every position, importance averaged over the prompt's positions and over
            prompts, no tracing (:mod:`.routes_reference`; preset ``reference``).
    """
    from headscope.results import build_provenance
    from headscope.results.edge_scores import EdgeScores
    from headscope.tasks.contrastive import contrastive_batch

    if not 0 < threshold < 1:
        raise HeadscopeError(f"threshold must be between 0 and 1 (an importance share); got {threshold}.")
    if level not in LEVELS:
        raise HeadscopeError(f"level must be component or token (token: the paper's graph over positions); got '{level}'.")
    if aggregate not in AGGREGATES:
        raise HeadscopeError(f"aggregate must be trace or reference (reference: EAP-IG's route scores); got '{aggregate}'.")
    if level == "token" and aggregate != "trace":
        raise HeadscopeError("aggregate=reference is a component-level score: use level=component (or drop aggregate).")
    batch = contrastive_batch(model, task)
    if level == "token":
        return _token_result(model, task, batch, threshold)
    graph = EdgeGraph.of(model)
    info = task.describe()
    if aggregate == "reference":
        return _reference_result(model, task, batch, graph, threshold)
    score, kept = trace_routes(model, batch.clean, batch.end, graph, threshold)
    prov = build_provenance(model, task=info, analyzer="circuit:routes", options={"threshold": threshold, "aggregate": "trace"},
                            choices={"score": "mean over prompts of the largest proximity importance on the route (0: not reached)",
                                     "inputs": "values and residual only (q/k edges are 0: they move no information)",
                                     "start": "logits input at each prompt's END", "n_kept": int(kept.sum())},
                            seed=info.get("seed"))
    return EdgeScores.from_edges(graph.edges, score.tolist(), kept.tolist(), model=model.spec, task=task.name,
                                 method="routes", provenance=prov)


def _reference_result(model: Any, task: Any, batch: Any, graph: EdgeGraph, threshold: float) -> Any:
    """EdgeScores of :func:`headscope.circuits.routes_reference.reference_scores` with provenance."""
    from headscope.circuits.routes_reference import reference_scores
    from headscope.results import build_provenance
    from headscope.results.edge_scores import EdgeScores

    score, zero = reference_scores(model, batch.clean, batch.end, graph)
    kept = score > threshold
    info = task.describe()
    prov = build_provenance(
        model, task=info, analyzer="circuit:routes", options={"threshold": threshold, "aggregate": "reference"},
        choices={"score": "mean over prompts of the mean over real positions (0..END) of the proximity importance of the sender's "
                          "output in the receiver input's residual (hannamw/EAP-IG @795f560 src/eap/attribute.py "
                          "get_scores_information_flow_routes L310-415)",
                 "inputs": "every q, k, v, MLP and logits input; q/k/v of one layer read the same residual, so they score alike",
                 "senders": "input: token embedding (hook_embed; learned position embedding excluded), heads: z_h W_O^h "
                            "(hook_result), MLPs: hook_mlp_out",
                 "gqa": "k/v receivers are KV heads: the group's query heads' scores, which are equal",
                 "start": "none (no tracing from END)", "circuit": f"score > threshold ({threshold})",
                 "zero_sum_positions": zero, "n_kept": int(kept.sum())},
        seed=info.get("seed"))
    return EdgeScores.from_edges(graph.edges, score.tolist(), kept.tolist(), model=model.spec, task=task.name,
                                 method="routes", provenance=prov)


def _token_result(model: Any, task: Any, batch: Any, threshold: float) -> Any:
    """EdgeScores of :func:`headscope.circuits.token_routes.token_routes` with provenance."""
    from headscope.circuits.token_routes import token_routes
    from headscope.results import build_provenance
    from headscope.results.edge_scores import EdgeScores

    table = token_routes(model, batch.clean, batch.end, threshold)
    table.insert(0, "model", model.spec)
    table.insert(1, "task", task.name)
    table.insert(2, "method", "routes")
    table["receiver_input"] = "in"
    table["kv_group"] = ""
    info = task.describe()
    prov = build_provenance(
        model, task=info, analyzer="circuit:routes", options={"threshold": threshold, "level": "token"},
        choices={"score": "proximity importance of the edge's term in its receiver's residual sum (Ferrando & Voita 2024, Eq. 2, L1)",
                 "nodes": "x{l}: residual entering block l (x{L} final), x{l}.mid: after block l's attention; positions in columns",
                 "edges": "via a{l}.h{h} (A[h,i,j] v_j W_O^h, per query head), m{l} or resid; rows with importance > 0 into route nodes",
                 "start": "x{L} at each prompt's END", "n_kept": int(table["circuit"].sum())},
        seed=info.get("seed"))
    out = EdgeScores(table)
    out.provenance = prov
    return out
