"""Ships, request sets, refusal detection and generation with ablations, on the planted toy-refusal model."""

import json
import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

import headscope
from headscope.analyzers import run_analyzer
from headscope.errors import HeadscopeError
from headscope.generation import greedy_generate
from headscope.interventions import MaskQuery, ZeroAblate
from headscope.safety.check import refusal_check
from headscope.safety.refusal import PhraseRefusalDetector, load_detector, refusal_rate
from headscope.tasks import make_task
from headscope.tasks.safety_requests import builtin_requests
from headscope.toy import TOY_MODELS
from headscope.toy.refusal import REFUSE, TRIGGER

WORDS = "one two three four five six seven eight nine ten the and of is a first second third".split()


def _files(tmp_path, n=10, ragged=False):
    rng = random.Random(0)
    harm, safe = [], []
    for i in range(n):
        m = 3 + i % 4 if ragged else 6
        w = rng.sample(WORDS, m)
        j = rng.randrange(m)
        harm.append(" ".join(w[:j] + [TRIGGER] + w[j:]))
        safe.append(" ".join(rng.sample(WORDS, 5 + i % 3)))
    (tmp_path / "harm.txt").write_text("\n".join(harm))
    (tmp_path / "safe.json").write_text(json.dumps(safe))
    return str(tmp_path / "harm.txt"), str(tmp_path / "safe.json")


@pytest.fixture(scope="module")
def toy():
    return headscope.load_model("toy-refusal")


@pytest.fixture
def task(tmp_path):
    harm, safe = _files(tmp_path)
    return make_task("safety", source=harm, harmless=safe, n_prompts=10)


@pytest.mark.parametrize("ablation", ["query_scale", "mean_z", "zero"])
def test_ships_recovers_planted_refusal_head(toy, task, ablation):
    scores = run_analyzer("ships", toy, task, ablation=ablation)
    (planted,) = TOY_MODELS["toy-refusal"].planted["refusal"]
    assert scores.heads("ships_kl", k=1) == [planted]
    m = scores.matrix("ships_kl")
    others = [m.loc[a, b] for a in range(2) for b in range(2) if (a, b) != planted]
    assert m.loc[planted] > 100 * max(others)
    assert scores.provenance["choices"]["ablation"] == ablation
    assert set(scores.provenance["choices"]["base_top_tokens"]) == {REFUSE}


def test_ships_kl_matches_direct_computation(toy, task):
    scores = run_analyzer("ships", toy, task, heads="1.1", eps=0.05)
    tokens, last = task.padded(toy, "harmful")
    rows = torch.arange(len(last))
    base = toy.bridge(tokens)[rows, last].detach().log_softmax(-1)
    from headscope.interventions import run_with_interventions

    abl = run_with_interventions(toy, tokens, [MaskQuery([(1, 1)], scale=0.05)], positions=last).log_softmax(-1)
    kl = (base.exp() * (base - abl)).sum(-1).mean()
    assert scores.matrix("ships_kl").loc[1, 1] == pytest.approx(float(kl), rel=1e-4)
    assert int(scores["score"].isna().sum()) == 3


def test_right_padding_does_not_change_last_token(toy, task):
    tokens, last = task.padded(toy, "harmless")
    assert len(set(last.tolist())) > 1
    rows = task.token_rows(toy, "harmless")
    alone = torch.stack([toy.bridge(torch.tensor([r]))[0, -1] for r in rows])
    padded = toy.bridge(tokens)[torch.arange(len(rows)), last]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_builtin_request_sets():
    harmful, harmless = builtin_requests("harmful"), builtin_requests("harmless")
    assert len(harmful) >= 60 and len(harmless) >= 60
    from headscope.datafiles import load_json

    data = load_json("harmful_requests.json")
    assert len({r["category"] for r in data["requests"]}) >= 5
    assert len(make_task("safety", n_prompts=8).requests("harmful")) == 8


def test_hub_sets_fail_clearly_offline():
    with pytest.raises(HeadscopeError, match="offline"):
        make_task("safety", source="advbench").requests("harmful")


def test_refusal_detector_and_plugins():
    det = PhraseRefusalDetector()
    assert det("I'm sorry, but I can't help with that.")
    assert det("I\u2019m sorry")
    assert not det("Sure! Here is a recipe for banana bread.")
    assert refusal_rate(["I cannot do that", "Sure"]) == 0.5
    assert load_detector("headscope.safety.refusal:PhraseRefusalDetector")  # a class is callable too
    with pytest.raises(HeadscopeError):
        load_detector("nomodule")


def test_generation_and_behavioural_check_on_planted_head(toy, task):
    rows = task.token_rows(toy, "harmful")
    refuse = toy.single_token(REFUSE)
    base = greedy_generate(toy, rows, max_new_tokens=2)
    assert all(r[0] == refuse for r in base)
    # query scaling leaves 1/n of the trigger's signal, still the argmax here; zero ablation removes it
    ablated = greedy_generate(toy, rows, max_new_tokens=2, interventions=[ZeroAblate([(1, 1)])])
    assert all(r[0] != refuse for r in ablated)

    def says_refuse(text: str) -> bool:
        return text.split()[:1] == [REFUSE]

    out = refusal_check(toy, task, [(1, 1)], n_random=2, max_new_tokens=2, ablation="zero", detector=says_refuse)
    rates = {k: v["refusal_rate"] for k, v in out["conditions"].items()}
    assert rates["base"] == 1.0 and rates["safety_heads"] == 0.0
    assert rates["random_1"] == 1.0 and rates["random_2"] == 1.0
    assert "1.1" not in out["conditions"]["random_1"]["heads"]
    # the same conditions on the harmless requests (no trigger): the planted head's ablation
    # refuses nothing, and the random control sets are the same heads as on the harmful split
    harmless = refusal_check(toy, task, [(1, 1)], n_random=2, max_new_tokens=2, ablation="zero", detector=says_refuse,
                             split="harmless")
    assert harmless["choices"]["split"] == "harmless"
    assert harmless["conditions"]["base"]["refusal_rate"] == 0.0  # 1.0 on the harmful split
    assert harmless["conditions"]["safety_heads"]["refusal_rate"] == 0.0
    skip = refusal_check(toy, task, [(1, 1)], n_random=0, max_new_tokens=1, ablation="zero", include_base=False)
    assert list(skip["conditions"]) == ["safety_heads"]
    assert harmless["conditions"]["random_1"]["heads"] == out["conditions"]["random_1"]["heads"]


@pytest.mark.smollm2
def test_chat_template_formatting_smollm2():
    model = headscope.load_model("smollm2-135m")
    task = make_task("safety", n_prompts=3)
    assert task.uses_chat(model)
    rows = task.token_rows(model, "harmful")
    tail = model.tokenizer.decode(rows[0][-4:])
    assert "assistant" in tail
    scores = run_analyzer("ships", model, task, heads="0.0,15.3", batch_size=3)
    assert scores.matrix("ships_kl").notna().sum().sum() == 2


def test_cli_score_ships_writes_parquet_and_heatmap(tmp_path, task):
    from headscope.cli.app import main
    from headscope.results import read_parquet

    out, plot = tmp_path / "ships.parquet", tmp_path / "ships.html"
    main(["score", "--model", "toy-refusal", "--task", "safety", "--analyzer", "ships", "-o", f"source={task.source}",
          "-o", f"harmless={task.harmless}", "-o", "n_prompts=6", "-o", "eps=0.02", "--out", str(out), "--plot", str(plot)])
    scores = read_parquet(out)
    assert scores.heads("ships_kl", k=1) == [(1, 1)]
    assert scores.provenance["options"]["eps"] == 0.02
    assert plot.stat().st_size > 0


@pytest.mark.parametrize(
    "model_name,ablation",
    # toy-refusal's queries are such that its layer-mean query equals each head's (mean_mask is a no-op there)
    [(m, a) for m in ("toy-gqa", "toy-refusal") for a in ("query_scale", "mean_mask", "mean_z", "zero")
     if (m, a) != ("toy-refusal", "mean_mask")],
)
def test_engine_ships_equals_one_ablation_per_forward(model_name, ablation, tmp_path):
    """The batched engine sweep equals ablating each head through the intervention layer."""
    from headscope.analyzers.ships import ablation_means, kl_div, select_heads, single_head_kls
    from headscope.lens.core import final_logits
    from headscope.safety.ablation import build_ablation
    from headscope.trace.stream import capture_stream

    model = headscope.load_model(model_name)
    harm, safe = _files(tmp_path, ragged=True)
    task = make_task("safety", source=harm, harmless=safe, n_prompts=10)
    tokens, last = task.padded(model, "harmful")
    assert len(set(last.tolist())) > 1  # ragged prompts: the engine's END groups are exercised
    heads = select_heads(model, None)
    means = ablation_means(model, task, ablation, heads, None)

    def logprobs(ivs):
        normed = capture_stream(model, tokens, ["ln_final.hook_normalized"], ivs, None, positions=last)
        return final_logits(model, normed["ln_final.hook_normalized"]).log_softmax(-1)

    base = logprobs([])
    got_base, got = single_head_kls(model, tokens, last, heads, ablation, 0.01, means, max_rows=2 * len(last))
    assert (got_base - base).abs().max() < 1e-4
    for head in heads:
        want = kl_div(base, logprobs(build_ablation(ablation, [head], 0.01, means)))
        assert torch.allclose(got[head], want, atol=1e-5, rtol=1e-3), head
    assert max(float(v.max()) for v in got.values()) > 1e-3  # some ablation moves the distribution


@pytest.mark.parametrize("ablation,eps", [("query_scale", 1e-4), ("mean_mask", None)])
def test_paper_masks_match_the_reference_definition_on_raw_hf(tmp_path, ablation, eps):
    """Ships' ``scale_mask`` / ``mean_mask`` equal the reference code's definitions, computed on an
    unbridged copy of toy-gqa with a hook on ``q_proj`` (pre-RoPE): the head's query times 1e-4,
    or replaced by the mean query of its layer; KL(base || masked) with probabilities + 1e-12."""
    from headscope.toy import build_toy

    model = headscope.load_model("toy-gqa")
    harm, safe = _files(tmp_path, ragged=True)
    task = make_task("safety", source=harm, harmless=safe, n_prompts=6)
    layer, head = 1, 2
    scores = run_analyzer("ships", model, task, ablation=ablation, heads=f"{layer}.{head}")
    raw, _ = build_toy("toy-gqa")
    n_heads, d_head = raw.config.num_attention_heads, raw.config.head_dim

    def mask_q(module, inputs, out):  # noqa: ANN001
        q = out.view(*out.shape[:-1], n_heads, d_head).clone()
        q[..., head, :] = q[..., head, :] * eps if ablation == "query_scale" else q.mean(-2)
        return q.view(out.shape)

    kls = []
    for row in task.token_rows(model, "harmful"):
        ids = torch.tensor([row])
        with torch.inference_mode():
            p = raw(ids).logits[0, -1].softmax(-1) + 1e-12
            handle = raw.model.layers[layer].self_attn.q_proj.register_forward_hook(mask_q)
            try:
                q = raw(ids).logits[0, -1].softmax(-1) + 1e-12
            finally:
                handle.remove()
        kls.append(float((p * (p / q).log()).sum()))
    want = sum(kls) / len(kls)
    assert want > 1e-4
    assert scores.matrix("ships_kl").loc[layer, head] == pytest.approx(want, rel=1e-3)


def test_ships_defaults_are_the_reference_codes_and_old_mean_is_refused(toy, task):
    scores = run_analyzer("ships", toy, task, heads="1.1")
    assert scores.provenance["options"]["eps"] == 1e-4 and scores.provenance["options"]["kl_eps"] == 1e-12
    paper = run_analyzer("ships", toy, task, heads="1.1", preset="paper")
    assert paper.provenance["preset"] == "paper"
    with pytest.raises(HeadscopeError, match="mean_z.*mean_mask"):
        run_analyzer("ships", toy, task, ablation="mean")
