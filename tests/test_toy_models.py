"""Tests for :mod:`headscope.toy`: hand-set toy transformers used as analysis ground truth.

Every planted fact is checked by hand from the TransformerLens bridge's own caches and
weights (not through headscope analyzers):

* attention facts from ``cache["blocks.L.attn.hook_pattern"]``, shape (batch, head, q, k);
* OV facts from ``W_E (V, d) @ W_V[h] (d, d_head) @ W_O[h] (d_head, d) @ W_U (d, V)``;
* successor facts from the effective embedding ``MLP0(LN2(W_E))`` (V, d), attention ignored.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses
import time

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from headscope.toy import TOY_MODELS, ToySpec, build_toy, toy_names
from headscope.toy.vocab import (
    BOS,
    SUCCESSION_FAMILIES,
    SUCCESSORS,
    VOCAB,
    WORD_TOKENS,
    families_of,
    successor,
)

ALL_HEADS_2x2 = [(0, 0), (0, 1), (1, 0), (1, 1)]


def boot(name: str, *, compat: bool = False) -> TransformerBridge:
    """Build toy ``name`` and boot it through the bridge exactly as headscope does."""
    hf_model, tok = build_toy(name)
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tok)
    bridge.eval()
    if compat:
        bridge.enable_compatibility_mode()
    return bridge


@pytest.fixture(scope="module")
def bridges() -> dict[str, TransformerBridge]:
    """One booted bridge per toy (built lazily, shared by the module's tests)."""
    return {}


def get_bridge(bridges: dict[str, TransformerBridge], name: str) -> TransformerBridge:
    """The cached bridge of toy ``name``."""
    if name not in bridges:
        bridges[name] = boot(name)
    return bridges[name]


def ov_token_matrix(
    bridge: TransformerBridge, layer: int, head: int, embed: torch.Tensor
) -> torch.Tensor:
    """``embed (V, d) @ W_V[h] @ W_O[h] @ W_U`` -> (V, V): row t = logits written for source t."""
    attn = bridge.blocks[layer].attn
    return embed @ attn.W_V[head] @ attn.W_O[head] @ bridge.W_U


def diagonal_argmax_fraction(mat: torch.Tensor) -> float:
    """Fraction of rows of a square (V, V) matrix whose argmax is on the diagonal."""
    return (mat.argmax(-1) == torch.arange(mat.shape[0])).float().mean().item()


def family_top1(mat: torch.Tensor) -> tuple[float, float]:
    """For (V, V) ``mat``, rank each family token's row among its family's tokens.

    Returns:
        ``(successor_fraction, self_fraction)``: the fraction of (token, family) pairs whose
        top-ranked family member is the token's successor (tokens without one are skipped),
        and the fraction whose top-ranked member is the token itself.
    """
    succ_hits, succ_total, self_hits, self_total = 0, 0, 0, 0
    for family, members in SUCCESSION_FAMILIES.items():
        ids = torch.tensor([VOCAB[t] for t in members])
        for tok in members:
            top = members[mat[VOCAB[tok], ids].argmax().item()]
            self_hits += top == tok
            self_total += 1
            nxt = successor(tok, family)
            if nxt is not None:
                succ_hits += top == nxt
                succ_total += 1
    return succ_hits / succ_total, self_hits / self_total


def effective_embedding(bridge: TransformerBridge) -> torch.Tensor:
    """Gould et al. effective embedding ``MLP0(LN2(W_E))``, shape (V, d_model)."""
    block0 = bridge.blocks[0]
    return block0.mlp(block0.ln2(bridge.W_E[None]))[0]


def repeated_random_tokens(n: int, batch: int, seed: int) -> torch.Tensor:
    """``[bos] + R + R`` with R ``n`` distinct random word tokens; shape (batch, 1 + 2n)."""
    gen = torch.Generator().manual_seed(seed)
    words = torch.tensor([VOCAB[t] for t in WORD_TOKENS])
    rows = []
    for _ in range(batch):
        rand = words[torch.randperm(len(words), generator=gen)[:n]]
        rows.append(torch.cat([torch.tensor([VOCAB[BOS]]), rand, rand]))
    return torch.stack(rows)


# --------------------------------------------------------------------------- registry, vocab


def test_registry_interface() -> None:
    assert toy_names() == list(TOY_MODELS)
    assert set(toy_names()) == {"toy-induction", "toy-copying", "toy-successor", "toy-gqa", "toy-refusal"}
    for name, spec in TOY_MODELS.items():
        assert isinstance(spec, ToySpec)
        assert spec.name == name and spec.summary and "\n" not in spec.summary
        for role, heads in spec.planted.items():
            assert isinstance(role, str) and heads
            assert all(isinstance(lh, tuple) and len(lh) == 2 for lh in heads)
    assert TOY_MODELS["toy-induction"].planted == {
        "previous_token": ((0, 0),),
        "induction": ((1, 0),),
    }
    assert TOY_MODELS["toy-copying"].planted == {"copying": ((1, 1),)}
    assert TOY_MODELS["toy-successor"].planted == {"successor": ((1, 0),), "copying": ((1, 1),)}
    assert TOY_MODELS["toy-gqa"].planted == {}
    with pytest.raises(KeyError):
        build_toy("toy-nonexistent")
    with pytest.raises(dataclasses.FrozenInstanceError):
        TOY_MODELS["toy-gqa"].name = "x"  # type: ignore[misc]


def test_vocab_families_and_successors() -> None:
    assert VOCAB[BOS] == 0
    assert len(set(VOCAB.values())) == len(VOCAB)
    assert SUCCESSION_FAMILIES["numbers"][:3] == ["1", "2", "3"]
    assert len(SUCCESSION_FAMILIES["numbers"]) == 30
    assert len(SUCCESSION_FAMILIES["number_words"]) == 20
    assert len(SUCCESSION_FAMILIES["ordinals"]) == 10
    assert successor("Sunday", "days") == "Monday"
    assert successor("December", "months") == "January"
    assert successor("Sun", "day_prefixes") == "Mon"
    assert successor("Dec", "month_prefixes") == "Jan"
    assert successor("Z", "letters") is None
    assert successor("30", "numbers") is None
    assert successor("9", "numbers") == "10"
    assert set(SUCCESSORS["May"]) == {"June", "Jun"}
    assert families_of("May") == ["months", "month_prefixes"]


def test_tokenizer_single_tokens() -> None:
    _, tok = build_toy("toy-induction")
    for members in SUCCESSION_FAMILIES.values():
        ids = tok(" ".join(members))["input_ids"]
        assert ids == [VOCAB[BOS]] + [VOCAB[t] for t in members]
    assert tok.decode(tok("Monday 7 A")["input_ids"], skip_special_tokens=True) == "Monday 7 A"
    assert tok("zzz")["input_ids"] == [VOCAB[BOS], tok.unk_token_id]


# --------------------------------------------------------------------------- every toy


@pytest.mark.parametrize("name", ["toy-induction", "toy-copying", "toy-successor", "toy-gqa"])
def test_builds_fast_and_deterministically(name: str) -> None:
    model_a, _ = build_toy(name)
    start = time.perf_counter()
    model_b, tok = build_toy(name)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{name} took {elapsed:.2f}s to build"
    assert not model_b.training
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key, value in sd_a.items():
        assert value.dtype == torch.float32 or not value.is_floating_point(), key
        assert torch.equal(value, sd_b[key]), key
    cfg = model_b.config
    assert cfg.architectures and cfg.architectures[0] == type(model_b).__name__
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert 0 <= getattr(cfg, attr) < cfg.vocab_size
    assert cfg.bos_token_id == tok.bos_token_id and cfg.vocab_size == len(tok)


def test_building_leaves_global_rng_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    for name in toy_names():
        build_toy(name)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", ["toy-induction", "toy-copying", "toy-successor", "toy-gqa"])
def test_boots_through_bridge(bridges: dict[str, TransformerBridge], name: str) -> None:
    bridge = get_bridge(bridges, name)
    tokens = bridge.to_tokens("A B C")
    assert tokens.tolist() == [[VOCAB[BOS], VOCAB["A"], VOCAB["B"], VOCAB["C"]]]
    logits, cache = bridge.run_with_cache(tokens)
    n_heads, d_model = bridge.cfg.n_heads, bridge.cfg.d_model
    assert logits.shape == (1, 4, len(VOCAB))
    for layer in range(bridge.cfg.n_layers):
        assert cache[f"blocks.{layer}.attn.hook_pattern"].shape == (1, n_heads, 4, 4)
        assert bridge.blocks[layer].attn.W_Q.shape == (n_heads, d_model, bridge.cfg.d_head)
        assert bridge.blocks[layer].attn.W_O.shape == (n_heads, bridge.cfg.d_head, d_model)
    assert bridge.W_E.shape == (len(VOCAB), d_model)
    assert bridge.W_U.shape == (d_model, len(VOCAB))
    for heads in TOY_MODELS[name].planted.values():
        for layer, head in heads:
            assert 0 <= layer < bridge.cfg.n_layers and 0 <= head < n_heads
    if name != "toy-gqa":
        assert n_heads >= 2


# --------------------------------------------------------------------------- toy-induction


def induction_facts(
    bridge: TransformerBridge, n: int = 20
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """On ``[bos] + R + R``: second-copy accuracy and per-head (layer, head) offset scores.

    Returns:
        ``(accuracy, induction_score, prev_score)``; the scores have shape (n_layers, n_heads):
        mean attention from second-copy positions to "the token after the earlier copy", and
        mean attention from every position i >= 1 to i - 1.
    """
    tokens = repeated_random_tokens(n, batch=8, seed=0)
    logits, cache = bridge.run_with_cache(tokens)
    # Positions n+1 .. 2n-1 (second copy, after its first token) predict tokens n+2 .. 2n.
    pred = logits[:, n + 1 : 2 * n].argmax(-1)
    accuracy = (pred == tokens[:, n + 2 :]).float().mean().item()
    second = torch.arange(n + 1, 2 * n + 1)
    every = torch.arange(1, 2 * n + 1)
    ind_rows, prev_rows = [], []
    for layer in range(bridge.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # (batch, head, q, k)
        ind_rows.append(pattern[:, :, second, second - n + 1].mean(dim=(0, 2)))
        prev_rows.append(pattern[:, :, every, every - 1].mean(dim=(0, 2)))
    return accuracy, torch.stack(ind_rows), torch.stack(prev_rows)


def test_induction_planted_heads(bridges: dict[str, TransformerBridge]) -> None:
    bridge = get_bridge(bridges, "toy-induction")
    accuracy, ind, prev = induction_facts(bridge)
    assert accuracy > 0.9
    assert ind[1, 0] > 0.9
    assert prev[0, 0] > 0.9
    for layer, head in ALL_HEADS_2x2:
        if (layer, head) != (1, 0):
            assert ind[layer, head] < 0.3, (layer, head)
        if (layer, head) != (0, 0):
            assert prev[layer, head] < 0.3, (layer, head)


def test_induction_first_copy_is_not_predicted(bridges: dict[str, TransformerBridge]) -> None:
    """Without an earlier occurrence the induction head falls back to BOS and writes nothing."""
    bridge = get_bridge(bridges, "toy-induction")
    n = 20
    tokens = repeated_random_tokens(n, batch=4, seed=1)
    logits = bridge(tokens)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    ).view(4, -1)
    assert loss[:, 1:n].mean() > 3.0  # ~ log(132): no idea in the first copy
    assert loss[:, n + 1 :].mean() < 0.1  # second copy predicted


# --------------------------------------------------------------------------- copying


@pytest.mark.parametrize("name", ["toy-copying", "toy-successor"])
def test_copying_ov_from_weights(bridges: dict[str, TransformerBridge], name: str) -> None:
    bridge = get_bridge(bridges, name)
    copying = set(TOY_MODELS[name].planted["copying"])
    for layer, head in ALL_HEADS_2x2:
        mat = ov_token_matrix(bridge, layer, head, bridge.W_E)
        frac = diagonal_argmax_fraction(mat)
        if (layer, head) in copying:
            assert frac == 1.0, (layer, head)
            assert (mat.diag() > 0).all()
        else:
            assert frac < 0.1, (layer, head, frac)


def test_copying_head_in_activations(bridges: dict[str, TransformerBridge]) -> None:
    """Head 1.1's direct logit contribution at the last position favours the context tokens."""
    bridge = get_bridge(bridges, "toy-copying")
    words = "Monday 5 A the K seven"
    tokens = bridge.to_tokens(words)
    _, cache = bridge.run_with_cache(tokens)
    context = {VOCAB[w] for w in words.split()}
    for layer, head in ALL_HEADS_2x2:
        z = cache[f"blocks.{layer}.attn.hook_z"][0, -1, head]  # (d_head,)
        dla = z @ bridge.blocks[layer].attn.W_O[head] @ bridge.W_U  # (d_vocab,)
        top = set(dla.topk(len(context)).indices.tolist())
        if (layer, head) == (1, 1):
            assert top == context
        else:
            assert len(top & context) < len(context) // 2 + 1, (layer, head)
    pattern = cache["blocks.1.attn.hook_pattern"][0, 1, -1]  # (k,)
    assert pattern[0] < 0.01 and torch.allclose(pattern[1:], torch.full((6,), 1 / 6), atol=1e-3)


# --------------------------------------------------------------------------- toy-successor


def test_effective_embedding_identifies_tokens(bridges: dict[str, TransformerBridge]) -> None:
    bridge = get_bridge(bridges, "toy-successor")
    eff = effective_embedding(bridge)  # (V, d_model)
    assert eff.shape == (len(VOCAB), bridge.cfg.d_model)
    # Read it back through the embedding directions: token t's effective embedding is ~ W_E[t].
    sims = eff @ bridge.W_E.T  # (V, V)
    assert diagonal_argmax_fraction(sims) == 1.0


def test_successor_ov_from_effective_embedding(bridges: dict[str, TransformerBridge]) -> None:
    bridge = get_bridge(bridges, "toy-successor")
    eff = effective_embedding(bridge)
    for layer, head in ALL_HEADS_2x2:
        succ_frac, self_frac = family_top1(ov_token_matrix(bridge, layer, head, eff))
        if (layer, head) == (1, 0):
            assert succ_frac == 1.0 and self_frac == 0.0
        elif (layer, head) == (1, 1):
            assert self_frac == 1.0 and succ_frac == 0.0
        else:
            assert succ_frac < 0.3 and self_frac < 0.3, (layer, head, succ_frac, self_frac)


def test_successor_model_predicts_successors(bridges: dict[str, TransformerBridge]) -> None:
    bridge = get_bridge(bridges, "toy-successor")
    words = "Monday 5 A Sunday seven December Sep third Y".split()
    logits = bridge(bridge.to_tokens(" ".join(words)))
    pred = bridge.to_str_tokens(logits[0, 1:].argmax(-1))
    expected = ["Tuesday", "6", "B", "Monday", "eight", "January", "Oct", "fourth", "Z"]
    assert pred == expected
    pattern = bridge.run_with_cache(bridge.to_tokens("A B C"))[1]["blocks.1.attn.hook_pattern"]
    assert (pattern[0, 0].diagonal() > 0.99).all()  # successor head attends to itself


# --------------------------------------------------------------------------- toy-gqa


def test_gqa_plumbing(bridges: dict[str, TransformerBridge]) -> None:
    bridge = get_bridge(bridges, "toy-gqa")
    cfg = bridge.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model) == (2, 4, 8, 32)
    assert cfg.n_key_value_heads == 2
    tokens = bridge.to_tokens("Monday 5 A the K seven")
    _, cache = bridge.run_with_cache(tokens)
    seq = tokens.shape[1]
    for layer in range(2):
        assert cache[f"blocks.{layer}.attn.hook_q"].shape == (1, seq, 4, 8)
        assert cache[f"blocks.{layer}.attn.hook_k"].shape == (1, seq, 2, 8)
        assert cache[f"blocks.{layer}.attn.hook_v"].shape == (1, seq, 2, 8)
        assert cache[f"blocks.{layer}.attn.hook_pattern"].shape == (1, 4, seq, seq)
        attn = bridge.blocks[layer].attn
        assert attn.W_Q.shape == (4, 32, 8) and attn.W_O.shape == (4, 8, 32)
        assert attn.W_K.shape == (2, 32, 8) and attn.W_V.shape == (2, 32, 8)
        # Query heads 0,1 use KV head 0 and 2,3 use KV head 1: recompute the pattern by hand
        # from the post-rotary q/k, shapes (seq, 4, d_head) and (seq, 2, d_head).
        q = cache[f"blocks.{layer}.attn.hook_rot_q"][0]
        k = cache[f"blocks.{layer}.attn.hook_rot_k"][0].repeat_interleave(2, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / 8**0.5
        causal = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
        pattern = scores.masked_fill(causal, float("-inf")).softmax(-1)
        torch.testing.assert_close(pattern, cache[f"blocks.{layer}.attn.hook_pattern"][0])
    # Random weights: heads are not all uniform.
    assert cache["blocks.0.attn.hook_pattern"][0, :, -1].max() > 2 / seq


# --------------------------------------------------------------------------- compatibility mode


def test_planted_facts_survive_compatibility_mode() -> None:
    """Folding LayerNorm and centring weights keeps every planted fact."""
    bridge = boot("toy-induction", compat=True)
    accuracy, ind, prev = induction_facts(bridge)
    assert accuracy > 0.9 and ind[1, 0] > 0.9 and prev[0, 0] > 0.9
    bridge = boot("toy-copying", compat=True)
    assert diagonal_argmax_fraction(ov_token_matrix(bridge, 1, 1, bridge.W_E)) == 1.0
    bridge = boot("toy-successor", compat=True)
    succ_frac, _ = family_top1(ov_token_matrix(bridge, 1, 0, effective_embedding(bridge)))
    assert succ_frac == 1.0
