"""Recipes: every file parses and names its paper's model; the runner executes them on the
offline default model (at smoke-test size, some sweeps narrowed to a window of layers to fit
CI), resumes, and fails with one line naming any analyzer this headscope does not have yet."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from headscope.errors import HeadscopeError  # noqa: E402
from headscope.recipes_runner import load_recipe, run_recipe  # noqa: E402
from headscope.recipes_runner.runner import check_available  # noqa: E402
from headscope.results import read_parquet  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
EXPECTED = {"induction_heads", "ioi_circuit", "ioi_circuit_edges", "successor_heads", "retrieval_heads", "safety_heads", "attention_lens"}
# CI-only narrowing (SmolLM2 layers) on top of each recipe's own `quick:` settings
WINDOW = list(range(17, 24))
NARROW = {
    "induction_heads": {"causal": {"options": {"layers": [17]}}},
    "ioi_circuit": {"act_patch": {"options": {"layers": WINDOW}},
                    "act_patch_pos": {"options": {"layers": [23]}},
                    **{s: {"options": {"sender_layers": WINDOW}}
                       for s in ("pp_logits", "pp_name_movers_q", "pp_s_inhibition_v")}},
    "safety_heads": {"ships": {"options": {"layers": "28-29"}}},
    "ioi_circuit_edges": {"act_patch": {"options": {"layers": WINDOW}}},
    "retrieval_heads": {"retrieval": {"task_params": {"context_lengths": [128], "needles_per_cell": 1},
                                      "options": {"mask_k": 2, "n_random": 1, "max_new_tokens": 12}}},
    "attention_lens": {"logit_lens": {"options": {"max_prompts": 1}}},
}
# minutes each on a busy 2-core CPU (about 30 s together on a quiet one); they run by default,
# HEADSCOPE_QUICK_RECIPES=1 skips them (the IOI chain is also covered on the toy circuit below)
SLOW = {"ioi_circuit": "activation + 3 path-patching sweeps", "retrieval_heads": "greedy decoding x 3 masking conditions", "safety_heads": "Ships + Sahara ablations",
        "attention_lens": "per-head lens over the vocabulary + lens training",
        "ioi_circuit_edges": "EAP-IG over every edge + exact verification and pruning"}


@pytest.fixture(scope="module")
def smollm2():
    import headscope as hs

    return hs.load_model("smollm2-135m")


def _recipe(name: str):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    try:
        check_available(recipe)
    except HeadscopeError as exc:
        if "not registered" in str(exc):
            pytest.skip(f"waiting on an analyzer/task: {exc}")
        raise
    for step in recipe.steps:
        from headscope.recipes_runner.spec import merge

        step.quick = merge(step.quick, NARROW.get(name, {}).get(step.id, {}))
    return recipe


def test_every_recipe_parses_and_names_a_paper_model():
    found = {p.stem: load_recipe(p) for p in RECIPES.glob("*.yaml")}
    assert EXPECTED <= set(found)
    for name, recipe in found.items():
        assert recipe.paper and recipe.model and not recipe.model.startswith("toy-"), name
        assert recipe.model != "smollm2-135m", f"{name} should name the paper's model"
        assert all(s.quick or s.kind == "classify" for s in recipe.steps), f"{name}: quick settings for CI"


def test_spec_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: toy-induction\nstepz: []\n")
    with pytest.raises(HeadscopeError, match="unknown key 'stepz'"):
        load_recipe(bad)
    bad.write_text("name: x\nmodel: toy-induction\ntask: induction\nsteps:\n"
                   "  - {id: a, analyzer: pattern_scores, options: {x: {heads_from: later}}}\n")
    with pytest.raises(HeadscopeError, match="heads_from 'later' is not an earlier step"):
        load_recipe(bad)
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: m\nmodel: toy-induction\ntask: induction\nsteps:\n  - {id: s, analyzer: no_such_analyzer}\n")
    with pytest.raises(HeadscopeError, match="needs analyzer 'no_such_analyzer'") as info:
        run_recipe(load_recipe(missing), out_dir=tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "s.parquet").exists()


def test_cli_run_missing_analyzer_exits_2(tmp_path, capsys):
    from headscope.cli.app import main

    missing = tmp_path / "missing.yaml"
    missing.write_text("name: m\nmodel: toy-induction\ntask: induction\nsteps:\n  - {id: s, analyzer: no_such_analyzer}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(missing), "--out-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: recipe 'm' needs analyzer 'no_such_analyzer'") and len(err.splitlines()) == 1


def test_resume_skips_up_to_date_steps_and_reruns_dependants(tmp_path):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        "name: r\nmodel: toy-induction\ntask: induction\ntask_params: {n_prompts: 4, seq_len: 16}\nsteps:\n"
        "  - {id: pat, analyzer: pattern_scores}\n"
        "  - {id: pat2, analyzer: pattern_scores, task_params: {seed: 3}}\n"
        "  - id: cls\n    classify:\n"
        "      - {class: induction, heads_from: pat, metric: induction, k: 1}\n"
        "      - {class: previous token, heads_from: pat, metric: previous_token, k: 1}\n"
        "figures:\n  - {kind: attention, prompt: 'Monday seven Tuesday nine Monday seven', heads: {heads_from: pat, metric: induction, k: 2}}\n"
    )
    logs: list[str] = []
    first = run_recipe(load_recipe(recipe_file), out_dir=tmp_path / "o", log=logs.append, report=True)
    assert first.ran == ["pat", "pat2", "cls"] and first.report.exists()
    cls = read_parquet(first.paths["cls"])
    import headscope as hs

    planted = hs.toy.TOY_MODELS["toy-induction"].planted
    got = {r.label: r.head_class for r in cls.itertuples() if r.head_class}
    assert got == {f"{planted['induction'][0][0]}.{planted['induction'][0][1]}": "induction",
                   f"{planted['previous_token'][0][0]}.{planted['previous_token'][0][1]}": "previous token"}
    assert read_parquet(first.paths["pat"]).provenance["recipe"]["hash"]
    second = run_recipe(load_recipe(recipe_file), out_dir=tmp_path / "o", log=logs.append, report=False)
    assert second.ran == [] and second.skipped == ["pat", "pat2", "cls"]
    assert any("up to date" in line for line in logs)
    recipe_file.write_text(recipe_file.read_text().replace("n_prompts: 4", "n_prompts: 5"))
    third = run_recipe(load_recipe(recipe_file), out_dir=tmp_path / "o", log=logs.append, report=False)
    assert third.ran == ["pat", "pat2"] and third.skipped == ["cls"]  # same heads chosen -> cls still valid
    forced = run_recipe(load_recipe(recipe_file), out_dir=tmp_path / "o", log=logs.append, report=False, force=True)
    assert forced.ran == ["pat", "pat2", "cls"]


@pytest.mark.smollm2
@pytest.mark.parametrize("name", ["induction_heads", "successor_heads", "ioi_circuit", "ioi_circuit_edges",
                                  "retrieval_heads", "safety_heads", "attention_lens"])
def test_recipe_runs_on_smollm2(name, smollm2, tmp_path):
    if name in SLOW and os.environ.get("HEADSCOPE_QUICK_RECIPES"):
        pytest.skip(f"{name}: slow on a busy CPU ({SLOW[name]}); unset HEADSCOPE_QUICK_RECIPES to run it")
    recipe = _recipe(name)
    result = run_recipe(recipe, model="smollm2-135m", quick=True, out_dir=tmp_path, loaded_model=smollm2,
                        progress=False, log=lambda _: None)
    assert set(result.paths) == {s.id for s in recipe.steps}
    from headscope.results.edge_scores import read_edge_scores

    circuit_steps = {s.id for s in recipe.steps if getattr(s, "circuit", None)}
    for step_id, path in result.paths.items():
        scores = read_edge_scores(path) if step_id in circuit_steps else read_parquet(path)
        assert scores.provenance["recipe"]["step"] == step_id and len(scores)
    page = result.report.read_text()
    # one figure per analyzer step; circuit steps are drawn by the recipe's `edges` figures
    assert page.count('class="plotly-graph-div"') >= len(recipe.steps) - len(circuit_steps) and recipe.title in page
    if name == "ioi_circuit":
        classes = read_parquet(result.paths["head_classes"])
        assert (classes["head_class"] != "").any()
        receivers = read_parquet(result.paths["pp_name_movers_q"]).provenance["choices"]["receivers"]
        assert receivers.endswith(":q") and len(receivers.split(":")[0].split(",")) == 3
    if name == "ioi_circuit_edges":
        # verified: the candidates are the top |EAP-IG| edges of the eap_ig step (same prompts, options)
        eap_ig = read_edge_scores(result.paths["eap_ig"])
        verified = read_edge_scores(result.paths["verified"])
        n_cand = verified.provenance["choices"]["pruning"]["candidates"]
        checked = verified.dropna(subset=["exact"])
        assert len(checked) == n_cand and verified["circuit"].sum() <= n_cand
        def keys(t):  # noqa: ANN001, ANN202
            return set(t["sender"] + ">" + t["receiver"] + ":" + t["receiver_input"])

        assert keys(checked) == keys(eap_ig.top(n_cand))
        assert "edge circuit: verified" in page and "edge circuit: composition" in page


def test_toml_recipes_parse_like_yaml(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text('name = "r"\nmodel = "toy-induction"\ntask = "induction"\n\n[task_params]\nn_prompts = 4\n\n'
                    '[[steps]]\nid = "pat"\nanalyzer = "pattern_scores"\n\n[[steps]]\nid = "cls"\n'
                    '[[steps.classify]]\nclass = "induction"\nheads_from = "pat"\nmetric = "induction"\nk = 1\n')
    recipe = load_recipe(toml)
    assert [s.id for s in recipe.steps] == ["pat", "cls"] and recipe.steps[0].task_params == {"n_prompts": 4}
    assert recipe.steps[1].kind == "classify"
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(HeadscopeError, match="should end in .yaml"):
        load_recipe(tmp_path / "r.json")


def test_circuit_recipe_recovers_the_planted_toy_circuit(tmp_path):
    """Activation patching -> path patching to the logits -> into the top sender's keys -> classes,
    on toy-induction, whose previous-token head 0.0 feeds induction head 1.0 through K-composition."""
    import headscope as hs

    recipe_file = tmp_path / "circuit.yaml"
    recipe_file.write_text(
        "name: toy_circuit\nmodel: toy-induction\ntask: induction_contrast\n"
        "task_params: {n_prompts: 4, seq_len: 12, seed: 0}\nsteps:\n"
        "  - {id: act, analyzer: activation_patching, options: {act: z}}\n"
        "  - {id: pp_logits, analyzer: path_patching, options: {receivers: resid}}\n"
        "  - id: pp_k\n    analyzer: path_patching\n"
        "    options: {receivers: {heads_from: pp_logits, metric: path_patch, k: 1, order: ascending, suffix: ':k'}}\n"
        "  - id: classes\n    classify:\n"
        "      - {class: induction, heads_from: pp_logits, metric: path_patch, k: 1, order: ascending}\n"
        "      - {class: previous token, heads_from: pp_k, metric: path_patch, k: 1, order: ascending}\n"
        "figures:\n  - {kind: sender_receiver, steps: [pp_logits, pp_k]}\n"
        "  - {kind: circuit, classes: classes, edges: [pp_logits, pp_k]}\n"
    )
    result = run_recipe(load_recipe(recipe_file), out_dir=tmp_path / "o", log=lambda _: None)
    planted = hs.toy.TOY_MODELS["toy-induction"].planted
    (il, ih), (pl, ph) = planted["induction"][0], planted["previous_token"][0]
    receivers = read_parquet(result.paths["pp_k"]).provenance["choices"]["receivers"]
    assert receivers == f"{il}.{ih}:k"
    classes = read_parquet(result.paths["classes"])
    got = {r.label: r.head_class for r in classes.itertuples() if r.head_class}
    assert got == {f"{il}.{ih}": "induction", f"{pl}.{ph}": "previous token"}
    page = result.report.read_text()
    assert "path patching: sender → receiver" in page and "circuit graph" in page


def test_circuit_steps_run_and_report_on_toy_induction(tmp_path):
    """A recipe with circuit steps (EdgeScores files) next to an analyzer step: the verified
    circuit is toy-induction's planted one, steps resume, and the report draws the edges."""
    from headscope.results.edge_scores import read_edge_scores

    recipe_file = tmp_path / "edges.yaml"
    recipe_file.write_text(
        "name: toy_edges\nmodel: toy-induction\ntask: induction_contrast\n"
        "task_params: {n_prompts: 4, seq_len: 6, seed: 0}\nsteps:\n"
        "  - {id: act, analyzer: activation_patching, options: {act: z}}\n"
        "  - {id: ver, circuit: verified, options: {candidates: 12, curve: false}}\n"
        "figures:\n  - {kind: edges, steps: [ver]}\n"
    )
    result = run_recipe(load_recipe(recipe_file), out_dir=tmp_path / "o", log=lambda _: None)
    edges = read_edge_scores(result.paths["ver"])
    kept = {(r.sender, r.receiver, r.receiver_input) for r in edges[edges["circuit"]].itertuples()}
    assert ("a0.h0", "a1.h0", "k") in kept and len(kept) == 4
    assert edges.provenance["recipe"]["step"] == "ver"
    assert "edge circuit: ver" in result.report.read_text()
    again = run_recipe(load_recipe(recipe_file), out_dir=tmp_path / "o", log=lambda _: None, report=False)
    assert again.skipped == ["act", "ver"]


def test_circuit_step_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nmodel: toy-induction\ntask: induction_contrast\nsteps:\n  - {id: e, circuit: eap_gi}\n")
    with pytest.raises(HeadscopeError, match="Did you mean 'eap_ig'"):
        run_recipe(load_recipe(bad), out_dir=tmp_path / "o", log=lambda _: None)
    bad.write_text("name: b\nmodel: toy-induction\ntask: induction_contrast\nsteps:\n"
                   "  - {id: e, circuit: eap_ig, options: {steps: two}}\n")
    with pytest.raises(HeadscopeError, match="steps"):
        run_recipe(load_recipe(bad), out_dir=tmp_path / "o", log=lambda _: None)
