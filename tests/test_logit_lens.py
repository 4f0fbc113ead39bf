"""Training-free per-head logit lens: planted heads, an independent hand computation, tidy frames, CLI."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

import headscope
from headscope.analyzers import run_analyzer
from headscope.lens.core import head_vectors, lens_logits
from headscope.lens.decode import COLUMNS, decode_heads
from headscope.lens.ov_circuit import iter_ov_logits
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


PADDED_ROWS = [
    ("one two three four five six seven eight one two three four five six",
     "one two three four five six seven eight one two three four five seven", " seven", " six"),
    ("May June July May June", "May June July May July", " July", " May"),
    ("A B C D A B C", "A B C D A B D", " D", " A"),
    ("the and of is a the and of", "the and of is a the and is", " is", " a"),
]


@torch.no_grad()
def _hand_lens(model, ids, heads, top_k):
    """Per-head (hits, centred logits) over the second half of one unpadded prompt ``ids``."""
    tokens = torch.tensor([ids])
    _, cache = model.bridge.run_with_cache(tokens)
    ln = model.bridge.ln_final._original_component
    resid = cache[f"blocks.{model.n_layers - 1}.hook_resid_post"][0]
    sd = torch.sqrt(resid.var(-1, unbiased=False, keepdim=True) + ln.eps)  # (pos, 1)
    n = len(ids)
    out = {h: ([], []) for h in heads}
    for p in range(n // 2 + 1, n - 1):
        for layer, h in heads:
            r = cache[f"blocks.{layer}.attn.hook_z"][0, p, h] @ model.bridge.blocks[layer].attn.W_O[h]
            lg = ((r - r.mean()) / sd[p] * ln.weight) @ model.bridge.W_U
            own = lg[ids[p + 1]]
            out[(layer, h)][0].append(float(int((lg >= own).sum()) - 1 < top_k))  # ties count against
            out[(layer, h)][1].append(float(own - lg.mean()))
    return out


def test_padding_is_never_scored(copying, tmp_path):
    import csv

    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clean", "corrupted", "answer", "wrong"])
        w.writerows(PADDED_ROWS)
    task = make_task("user_file", path=str(path))
    batch = task.batch(copying)
    pad = copying.tokenizer.pad_token_id
    lengths = (batch.end + 1).tolist()
    assert (batch.clean == pad).any()  # the batch is right-padded
    scores = run_analyzer("logit_lens", copying, task, top_k=3, max_positions=16, max_prompts=4, preset="paper")
    # independent: each prompt alone, unpadded, hand-written lens
    heads = [(1, 1), (0, 0), (1, 0)]
    hits = {h: [] for h in heads}
    cent = {h: [] for h in heads}
    for row, n in enumerate(lengths):
        for h, (a, b) in _hand_lens(copying, batch.clean[row, :n].tolist(), heads, 3).items():
            hits[h] += a
            cent[h] += b
    for h in heads:
        assert scores.matrix("lens_next_topk").loc[h] == pytest.approx(np.mean(hits[h]), abs=1e-6)
        assert scores.matrix("lens_next_logit").loc[h] == pytest.approx(np.mean(cent[h]), abs=1e-4)
    assert int(scores["n"].iloc[0]) == sum(len(range(n // 2 + 1, n - 1)) for n in lengths)
    ch = scores.provenance["choices"]
    assert ch["prompt_lengths"] == lengths
    for row, positions in enumerate(ch["positions"]):
        assert positions and max(positions) + 1 < lengths[row]
        assert all(int(batch.clean[row, p + 1]) != pad for p in positions)


@pytest.mark.smollm2
def test_smollm2_default_ioi_scores_no_padding_target(smollm2):
    from headscope.tasks.contrastive import pad_id

    task = make_task("ioi")
    batch = task.batch(smollm2)
    scores = run_analyzer("logit_lens", smollm2, task)
    ch = scores.provenance["choices"]
    pad = pad_id(smollm2)
    assert (batch.clean[: len(ch["positions"])] == pad).any()  # padding exists in the rows scored
    for row, positions in enumerate(ch["positions"]):
        assert max(positions) + 1 <= int(batch.end[row])
        assert all(int(batch.clean[row, p + 1]) != pad for p in positions)


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
    from headscope.lens.ov_circuit import effective_embedding

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
