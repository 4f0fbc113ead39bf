"""Training-free per-head logit lens: planted heads, an independent hand computation, tidy frames, CLI."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

import headscope
from headscope.analyzers import run_analyzer
from headscope.analyzers.ov_circuit import iter_ov_logits
from headscope.lens.core import head_vectors, lens_logits
from headscope.lens.decode import COLUMNS, decode_heads
from headscope.tasks import make_task
from headscope.toy import TOY_MODELS


@pytest.fixture(scope="module")
def copying():
    return headscope.load_model("toy-copying")


def test_planted_copying_head_promotes_seen_tokens(copying):
    words = ["one", "May", "Friday", "seven"]
    df = decode_heads(copying, " ".join(words), [(1, 1)], positions=[-1], k=4)
    up = df[df.direction == "promoted"]
    assert set(up["token"]) == set(words)
    assert list(up["rank"]) == [0, 1, 2, 3]
    assert tuple(df.columns) == COLUMNS
    assert (df[df.direction == "suppressed"]["logit"] <= up["logit"].min()).all()


def test_residual_lens_matches_hand_computed_hook(copying):
    tokens = copying.to_tokens("one two three four five")
    vecs, scale = head_vectors(copying, tokens, [(1, 0), (1, 1)])
    ours = lens_logits(copying, vecs, scale, "residual")  # (1, pos, 2, vocab)
    _, cache = copying.bridge.run_with_cache(tokens)
    z = cache["blocks.1.attn.hook_z"][0]  # (pos, head, d_head)
    w_o = copying.bridge.blocks[1].attn.W_O
    ln = copying.bridge.ln_final._original_component
    for j, h in enumerate((0, 1)):
        r = z[:, h] @ w_o[h]
        r = r - r.mean(-1, keepdim=True)
        resid = cache["blocks.1.hook_resid_post"][0]
        sd = torch.sqrt(resid.var(-1, unbiased=False, keepdim=True) + ln.eps)
        ref = (r / sd * ln.weight) @ copying.bridge.W_U
        assert torch.allclose(ours[0, :, j], ref.detach(), atol=1e-4)


def test_ln_conventions_rank_alike_and_are_recorded(copying):
    a = decode_heads(copying, "one two three", [(1, 1)], k=3, ln="residual")
    b = decode_heads(copying, "one two three", [(1, 1)], k=3, ln="recompute")
    assert list(a["token_id"]) == list(b["token_id"])
    assert set(a["lens"]) == {"logit_lens[residual]"} and set(b["lens"]) == {"logit_lens[recompute]"}
    with pytest.raises(headscope.errors.HeadscopeError, match="ln convention"):
        decode_heads(copying, "one two", [(1, 1)], ln="final")


def test_analyzer_finds_planted_induction_head():
    model = headscope.load_model("toy-induction")
    scores = run_analyzer("logit_lens", model, make_task("induction", n_prompts=2, seq_len=16))
    (planted,) = TOY_MODELS["toy-induction"].planted["induction"]
    assert scores.heads("lens_next_topk", k=1) == [planted]
    assert scores.heads("lens_next_logit", k=1) == [planted]
    assert scores.provenance["choices"]["ln"] == "residual"


def test_cli_decode_writes_tidy_parquet(tmp_path, capsys):
    import pandas as pd

    from headscope.cli.app import main

    out = tmp_path / "tokens.parquet"
    main(["lens", "decode", "--model", "toy-copying", "--heads", "1.1", "--prompt", "one two three", "--k", "3",
          "--positions", "2,-1", "--out", str(out)])
    df = pd.read_parquet(out)
    assert sorted(df["position"].unique()) == [2, 3]
    assert {"layer", "head", "position", "rank", "token", "logit"} <= set(df.columns)
    assert "promoted" in capsys.readouterr().out


@pytest.mark.smollm2
def test_smollm2_copying_head_promotes_the_copied_token():
    """The head that copies most by the OV test (weights only) promotes the induction target."""
    model = headscope.load_model("smollm2-135m")
    task = make_task("induction", n_prompts=2, seq_len=20)
    tokens = task.tokens(model)
    ids = torch.tensor(sorted(set(tokens[:, 1:].flatten().tolist())))
    from headscope.analyzers.copying_heads import copying_fraction
    from headscope.analyzers.ov_circuit import effective_embedding

    emb = effective_embedding(model, ids, "embed_mlp0")
    cand = [(layer, h) for layer in range(21, 26) for h in range(model.n_heads)]
    ov = {(layer, h): copying_fraction(lg, ids, 5)[0] for layer, h, lg in iter_ov_logits(model, emb, heads=cand)}
    best = max(ov, key=ov.get)
    t = tokens.shape[1]
    pos = torch.arange(t // 2 + 1, t - 1)
    controls = [(2, 0), (8, 4), (14, 1)]
    vecs, scale = head_vectors(model, tokens, [best, *controls], pos)
    lg = lens_logits(model, vecs, scale)
    target = tokens[:, pos + 1]
    own = lg.gather(-1, target[:, :, None, None].expand(-1, -1, lg.shape[2], 1)).squeeze(-1)
    rank = (lg >= own.unsqueeze(-1)).sum(-1).float() - 1  # (batch, pos, head)
    med = rank.flatten(0, 1).median(0).values
    assert med[0] < 0.01 * model.d_vocab, (best, med)
    assert (med[0] < med[1:] / 10).all()
