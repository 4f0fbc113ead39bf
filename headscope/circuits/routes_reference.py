"""Information flow route scores as EAP-IG computes them (``routes -o aggregate=reference``).

Reference: ``hannamw/EAP-IG`` @795f560, ``src/eap/attribute.py``,
``get_scores_information_flow_routes`` (L310-415), with the graph of ``src/eap/graph.py``
(``InputNode`` L125-129: ``hook_embed``; ``AttentionNode`` L117-123: ``attn.hook_result`` and
``hook_{q,k,v}_input``; ``MLPNode`` L111-115: ``hook_mlp_in`` / ``hook_mlp_out``; ``LogitNode``
L97-101: the last ``hook_resid_post``; ``prev_index`` L233-254: a receiver's senders are every
node before it). No tracing from the prediction and no threshold: one clean forward, and for
**every** receiver input ``y`` (each head's q, k and v input, each MLP input, the logits input)
at **every** position ``p`` the proximity importance of each upstream sender output ``x_s``
(``input_hook`` L338-372, proximity L351-352)::

    prox_s = max(||y_p||_1 - ||y_p - x_{s,p}||_1, 0),    imp_s = prox_s / sum_s' prox_s'

averaged over the prompt's real positions (L357-362: padding masked, sum over positions divided
by the prompt's length), summed over prompts (L363) and divided by their number (L413):

    score(s -> r) = mean over prompts of mean over positions p < length of imp_s(y_r at p).

Sender outputs as the reference hooks them in TransformerLens: the embedding ``hook_embed``
(token embedding without a learned position embedding: here the residual entering block 0 minus
``hook_pos_embed`` where the model has one; the position embedding is then part of ``y`` but of
no sender, like the biases), each head's ``z_h W_O^h`` (``hook_result``, no bias, per query
head; on post-norm families before the post-attention norm, as TransformerLens' ``hook_result``
is) and each MLP's output (``hook_mlp_out``).

Mapping onto headscope's edge graph (:mod:`.graph`): the reference's q/k/v inputs of layer ``l``
are copies of ``resid_pre`` per head (TransformerLens ``use_split_qkv_input``; GQA ungrouped,
``attribute`` L425-426), so every q, k and v edge from ``s`` into layer ``l`` has the same score.
Under GQA headscope's k/v receivers are KV heads: the score is that common value (the mean over
the group's query heads, which are equal). Positions: headscope's prompts are right-padded and
end at END, so a prompt's real positions are ``0..END`` (the reference's ``input_lengths`` from
the attention mask). Where every sender has proximity 0 at a position the reference divides 0 by
0 (NaN); headscope counts it as importance 0 there and reports the count (``zero_sum_positions``).
"""

from __future__ import annotations

from typing import Any

import torch

from headscope.circuits.graph import EdgeGraph, Receiver


def _sender_output(run: dict[str, torch.Tensor], w_o: list[torch.Tensor], name: str) -> torch.Tensor:
    """(n, pos, d) output of one sender as the reference hooks it (see the module docstring)."""
    if name == "input":
        return run["emb"] - run["pos"] if "pos" in run else run["emb"]
    if name.startswith("m"):
        return run[f"mlp_out{int(name[1:])}"]
    layer, h = (int(x) for x in name[1:].split(".h"))
    return run[f"z{layer}"][:, :, h] @ w_o[layer][h]


def _site(r: Receiver) -> str:
    """Key of the cached residual the receiver input reads (q/k/v of a layer share one)."""
    if r.kind == "logits":
        return "final"
    if r.kind == "mlp":
        return f"mlp_in{r.layer}"
    return f"resid_pre{r.layer}"


def reference_scores(model: Any, tokens: torch.Tensor, end: torch.Tensor, graph: EdgeGraph) -> tuple[torch.Tensor, int]:
    """EAP-IG's information-flow-route score of every edge of ``graph``.

    Args:
        tokens: (n, pos) right-padded clean prompts.
        end: (n,) each prompt's last real position.

    Returns:
        (score (E,), number of (prompt, receiver site, position) triples whose proximities all were 0).
    """
    from headscope.circuits.routes import _clean_run

    run = _clean_run(model, tokens, pos_embed=True)
    w_o = [model.bridge.blocks[layer].attn.W_O.detach().float().cpu() for layer in range(model.n_layers)]
    n, n_pos = tokens.shape
    valid = (torch.arange(n_pos).unsqueeze(0) <= end.cpu().unsqueeze(1)).float()  # (n, pos)
    senders_of: dict[str, list[str]] = {}
    for e in graph.edges:
        names = senders_of.setdefault(_site(e.receiver), [])
        if e.sender.name not in names:
            names.append(e.sender.name)
    outputs = {s: _sender_output(run, w_o, s) for s in {x for v in senders_of.values() for x in v}}
    imp_of: dict[str, dict[str, float]] = {}
    zero = 0
    for key, names in senders_of.items():
        per_prompt = torch.zeros(len(names), n)
        for row in range(n):  # one prompt at a time: parts are (m, pos, d)
            y = run[key][row]  # (pos, d)
            parts = torch.stack([outputs[s][row] for s in names])  # (m, pos, d)
            prox = (y.abs().sum(-1) - (y - parts).abs().sum(-1)).clamp(min=0)  # (m, pos)
            total = prox.sum(0)  # (pos,)
            zero += int(((total == 0) & (valid[row] > 0)).sum())
            imp = torch.where(total > 0, prox / total.clamp(min=torch.finfo(prox.dtype).tiny), torch.zeros_like(prox))
            per_prompt[:, row] = (imp * valid[row]).sum(-1) / valid[row].sum()  # mean over real positions
        imp_of[key] = dict(zip(names, per_prompt.mean(-1).tolist(), strict=True))
    score = torch.tensor([imp_of[_site(e.receiver)][e.sender.name] for e in graph.edges])
    return score, zero
