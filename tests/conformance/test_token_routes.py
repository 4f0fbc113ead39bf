"""Token-level information flow routes (Ferrando & Voita 2024) against a hand computation on raw
Hugging Face modules: residual states from decoder-layer pre-hooks, per-head per-source-token
attention contributions ``A[h, i, j] * (v_j W_O^h)`` from the captured attention weights and
values pushed through the output projection module head by head (``RawHF.head_out``), the MLP's
output from a module hook, and the paper's proximity importance and top-down thresholding
written out here.
"""

from __future__ import annotations

import pytest
import torch

from headscope.circuits.routes import routes  # noqa: F401 - registers the method
from headscope.circuits.token_routes import token_routes

from .raw_edges import layer_inputs

TAU = 0.04


def _importance(terms: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 2 by hand, L1: max(||y|| - ||y - c||, 0), normalised over the terms."""
    prox = torch.clamp(y.abs().sum() - (y - terms).abs().sum(-1), min=0)
    return prox / prox.sum()


def _head_terms(a: torch.Tensor, vo: torch.Tensor, i: int) -> torch.Tensor:
    """(H * (i+1), d) head-major ``A[h, i, j] * v_j W_O^h``; a (H, q, k), vo (p, H, d)."""
    return torch.stack([a[h, i, j] * vo[j, h] for h in range(a.shape[0]) for j in range(i + 1)])


def _add_heads(out: dict, at: tuple[int, int, int], imp: torch.Tensor, receiver: str) -> set[int]:
    """Record head edges into ``receiver`` at ``i``; return the sources of the kept ones."""
    row, layer, i = at
    kept = set()
    n_heads = imp.numel() // (i + 1)
    for n, (h, j) in enumerate((h, j) for h in range(n_heads) for j in range(i + 1)):
        out[(row, f"x{layer}", j, receiver, i, f"a{layer}.h{h}")] = float(imp[n])
        if imp[n] > TAU:
            kept.add(j)
    return kept


def _hand_routes(raw, tokens: torch.Tensor, end: torch.Tensor, parallel: bool) -> dict[tuple, float]:  # noqa: ANN001
    """(prompt, sender, j, receiver, i, via) -> importance, for every term into a route node."""
    run = raw.run(tokens, attentions=True)
    x = layer_inputs(raw, tokens)
    x[raw.n_layers] = run.resid_final
    out: dict[tuple, float] = {}
    for row in range(tokens.shape[0]):
        active = {int(end[row])}
        for layer in reversed(range(raw.n_layers)):
            v = run.v[layer][row]  # (p, KV, d_head)
            z = torch.stack([v[:, h // raw.group] for h in range(raw.n_heads)], 1)  # (p, H, d_head)
            vo = raw.head_out(layer, z)  # (p, H, d_model): v_j W_O^h, no bias
            a = run.pattern[layer][row]  # (H, q, k)
            attn, mlp = run.attn_add[layer][row], run.mlp_add[layer][row]
            x_in, x_out = x[layer][row], x[layer + 1][row]

            nxt: set[int] = set()
            mids: set[int] = set()
            for i in active:
                if parallel:
                    heads = _head_terms(a, vo, i)
                    bias = attn[i] - heads.sum(0)
                    imp = _importance(torch.cat([x_in[i][None], mlp[i][None], heads, bias[None]]), x_out[i])
                    out[(row, f"x{layer}", i, f"x{layer + 1}", i, "resid")] = float(imp[0])
                    out[(row, f"x{layer}", i, f"x{layer + 1}", i, f"m{layer}")] = float(imp[1])
                    if imp[0] > TAU or imp[1] > TAU:
                        nxt.add(i)
                    nxt |= _add_heads(out, (row, layer, i), imp[2:-1], f"x{layer + 1}")
                    continue
                mid = x_in[i] + attn[i]
                imp = _importance(torch.stack([mid, mlp[i]]), x_out[i])
                out[(row, f"x{layer}.mid", i, f"x{layer + 1}", i, "resid")] = float(imp[0])
                out[(row, f"x{layer}.mid", i, f"x{layer + 1}", i, f"m{layer}")] = float(imp[1])
                if imp.max() > TAU:
                    mids.add(i)
            for i in mids:
                heads = _head_terms(a, vo, i)
                if raw.post_norms:  # Gemma: the post-attention norm, its scale frozen at the sublayer's
                    heads = raw.frozen_norm(raw.post_attn_norm(layer), heads, run.attn_pre_norm[layer][row, i])
                imp = _importance(torch.cat([x_in[i][None], heads, (attn[i] - heads.sum(0))[None]]), x_in[i] + attn[i])
                out[(row, f"x{layer}", i, f"x{layer}.mid", i, "resid")] = float(imp[0])
                if imp[0] > TAU:
                    nxt.add(i)
                nxt |= _add_heads(out, (row, layer, i), imp[1:-1], f"x{layer}.mid")
            active = nxt
    return {k: v for k, v in out.items() if v > 0}


@pytest.mark.parametrize("fam", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_token_routes_match_a_raw_hand_computation(fam, zoo_cache, prompts):
    """llama (GQA: query heads of a group share values but have their own patterns), gpt2
    (LayerNorm, attention output bias as a term without an edge), gpt_neox (parallel residual:
    one sum per block), gemma2 (GQA, post-attention norm with its scale frozen at the sublayer's). Every term into a route node has the hand importance (a row missing on
    one side, round-off around 0, counts as 0), and the two routes (importance > tau) are the
    same edges."""
    pair = zoo_cache[fam]
    batch = prompts.batch
    got = token_routes(pair.hs, batch.clean, batch.end, TAU)
    want = _hand_routes(pair.raw, batch.clean, batch.end, parallel=fam == "gpt_neox")
    keys = list(zip(got["prompt"], got["sender"], got["source_position"], got["receiver"], got["position"], got["via"],
                    strict=True))
    assert len(keys) == len(set(keys))
    mine = dict(zip(keys, got["score"].tolist(), strict=True))
    union = sorted(set(mine) | set(want))  # a term absent on one side has importance 0 there (round-off)
    diff = torch.tensor([mine.get(k, 0.0) - want.get(k, 0.0) for k in union]).abs()
    assert float(diff.max()) < 1e-4, f"max |importance - hand| = {float(diff.max()):.3g} at {union[int(diff.argmax())]}"
    assert len(set(mine) & set(want)) > 0.9 * len(union)
    kept = {k for k, c in zip(keys, got["circuit"], strict=True) if c}
    assert kept == {k for k, v in want.items() if v > TAU}
    assert any(k[5].startswith("a") for k in kept), "the route should use some attention head"
    assert got["position"].max() <= int(batch.end.max())


def test_token_routes_follow_a_dominant_mlp(tmp_path, prompts):
    """Zoo Llama with the last MLP's down projection scaled by 1000: its output outweighs the
    residual in ``x{l+1} = x{l}.mid + mlp``, so the residual edge falls under tau while the MLP
    edge is kept, and the route must still reach ``x{l}.mid`` (the MLP reads it). Same hand
    computation on raw HF."""
    import headscope as hs
    from headscope.toy.zoo import build_zoo_hf

    from .raw_hf import RawHF

    model, tokenizer = build_zoo_hf("llama", seed=0)
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight.mul_(1000.0)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    batch = prompts.batch
    got = token_routes(hs.load_model(str(tmp_path)), batch.clean, batch.end, TAU)
    want = _hand_routes(RawHF(tmp_path), batch.clean, batch.end, parallel=False)
    resid = [v for k, v in want.items() if k[5] == "resid" and k[3] == "x3"]
    assert resid and max(resid) < TAU, "the planted case: the final residual edge under tau"
    kept = {k for k, c in zip(zip(got["prompt"], got["sender"], got["source_position"], got["receiver"], got["position"],
                                  got["via"], strict=True), got["circuit"], strict=True) if c}
    assert kept == {k for k, v in want.items() if v > TAU}
    assert any(k[3].endswith(".mid") for k in kept)
