"""Successor heads: planted toy ground truth, GQA effective-OV check on SmolLM2, family coverage."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from headscope import load_model
from headscope.analyzers import run_analyzer
from headscope.lens.ov_circuit import effective_embedding, ov_logits
from headscope.tasks import make_task
from headscope.tasks.succession import FAMILIES


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-successor")


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


def test_toy_successor_head_found_and_others_not(toy):
    scores = run_analyzer("successor_heads", toy, make_task("succession"))
    planted = toy.planted["successor"]
    top = scores.heads("succession", k=len(planted))
    assert top == list(planted)
    others = scores[(scores.metric == "succession") & ~scores.label.isin([f"{a}.{b}" for a, b in planted])]
    assert others.score.max() < 0.2  # chance level among family tokens, not a successor head
    assert scores.heads("dla_succession", k=1) == list(planted)
    # the copying distractor maps t -> t, never to succ(t)
    (copy_head,) = toy.planted["copying"]
    row = scores[(scores.metric == "succession") & (scores.label == f"{copy_head[0]}.{copy_head[1]}")]
    assert float(row.score.iloc[0]) == 0.0


def test_toy_families_kept_match_vocabulary(toy):
    task = make_task("succession")
    counts = task.kept_counts(toy)
    from headscope.toy.vocab import SUCCESSION_FAMILIES

    for name, words in SUCCESSION_FAMILIES.items():
        expected = sum(1 for w in FAMILIES[name] if w in words)
        assert counts[name]["kept"] == expected, name


def test_recipe_is_recorded_and_selectable(toy):
    task = make_task("succession")
    a = run_analyzer("successor_heads", toy, task, embedding="embed_mlp0", ln=False, activation_check=False)
    assert a.provenance["choices"]["effective_embedding"] == "embed_mlp0"
    assert a.provenance["choices"]["ln"] == "no norms"
    assert a.heads("succession", k=1) == list(toy.planted["successor"])


@pytest.mark.smollm2
def test_smollm2_every_surviving_family_is_scored(smol):
    task = make_task("succession")
    scores = run_analyzer("successor_heads", smol, task, activation_check=False)
    counts = task.kept_counts(smol)
    used = [name for name, c in counts.items() if c["pairs"] > 0]
    assert set(used) == set(task.tokenized(smol))
    for name in used:
        rows = scores[scores.metric == f"succession_{name}"]
        assert len(rows) == smol.n_layers * smol.n_heads
        assert rows.score.between(0, 1).all()
    # the overall score is the pair-weighted mean of the family scores
    total = sum(counts[n]["pairs"] for n in used)
    overall = scores.matrix("succession").to_numpy()
    weighted = sum(scores.matrix(f"succession_{n}").to_numpy() * counts[n]["pairs"] for n in used) / total
    assert abs(overall - weighted).max() < 1e-9
    assert scores.provenance["choices"]["families_kept"] == counts


@pytest.mark.smollm2
def test_smollm2_gqa_effective_ov_matches_hand_computation(smol):
    """Independent check from the raw HF state dict (hand-written RMSNorm and SwiGLU):
    query head h must use the v_proj rows of KV head h // group_size."""
    sd = {k.replace("._original_component", ""): v for k, v in smol.bridge.original_model.state_dict().items()}
    eps = smol.bridge.original_model.config.rms_norm_eps

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    ids = [smol.single_token(" Monday"), smol.single_token(" Tuesday"), smol.single_token(" March")]
    layer, head = 5, 7  # KV head 7 // 3 = 2
    emb = effective_embedding(smol, ids, "mlp0", ln=True)
    got = ov_logits(smol, layer, head, emb, out_ids=ids, ln=True)
    with torch.inference_mode():
        e = sd["model.embed_tokens.weight"][ids]
        x = rms(e, sd["model.layers.0.post_attention_layernorm.weight"])
        m0 = "model.layers.0.mlp."
        mlp0 = (torch.nn.functional.silu(x @ sd[m0 + "gate_proj.weight"].T) * (x @ sd[m0 + "up_proj.weight"].T)) @ sd[
            m0 + "down_proj.weight"
        ].T
        pre = f"model.layers.{layer}."
        x = rms(mlp0, sd[pre + "input_layernorm.weight"])
        d = smol.d_head
        kv = head // (smol.n_heads // smol.n_kv_heads)
        assert kv == 2
        v = x @ sd[pre + "self_attn.v_proj.weight"][kv * d : (kv + 1) * d].T
        out = v @ sd[pre + "self_attn.o_proj.weight"][:, head * d : (head + 1) * d].T
        want = (out * sd["model.norm.weight"]) @ sd["lm_head.weight"][ids].T
        # the wrong KV group gives different numbers (the check can fail)
        v_wrong = x @ sd[pre + "self_attn.v_proj.weight"][0:d].T
        wrong = ((v_wrong @ sd[pre + "self_attn.o_proj.weight"][:, head * d : (head + 1) * d].T) * sd["model.norm.weight"]) @ sd["lm_head.weight"][ids].T
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, wrong, rtol=1e-2, atol=1e-3)
