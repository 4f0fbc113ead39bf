"""The one core: one registry, typed task contracts, one plan/run path (docs/architecture.md).

- every (method, task) pair of the registry, run through the CLI on a toy model, gives a result
  or a one-line refusal with exit 2, never an internal error (exit 1);
- an incompatible task is refused before the model loads;
- a method added in one file (a temporary module) appears in ``headscope tasks``, the CLI, the
  API and a recipe with no other edit;
- ``hs.circuit`` runs a circuit method.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
from cli_harness import run_main

import headscope as hs
from headscope.errors import HeadscopeError
from headscope.methods import METHODS, list_methods
from headscope.plan import plan, run
from headscope.tasks.registry import TASKS, load_builtin_tasks

load_builtin_tasks()

# small settings for the pairs that do run (a method ignores what it does not take)
TASK_OPTIONS = {"n_prompts": "2", "seq_len": "8", "n_train": "4", "n_eval": "2", "n_val": "2"}
METHOD_OPTIONS = {"steps": "2", "candidates": "3", "curve": "false", "top_edges": "5", "max_new_tokens": "4",
                  "max_prompts": "2", "batch_tokens": "8"}


def _options(method, task) -> list[str]:  # noqa: ANN001
    params = set(TASKS[task].parameters())
    opts = {k: v for k, v in TASK_OPTIONS.items() if k in params}
    opts.update({k: v for k, v in METHOD_OPTIONS.items() if k in method.options()})
    if method.name == "trained_lens":
        opts["steps"] = "2"
    return [x for k, v in opts.items() for x in ("-o", f"{k}={v}")]


PAIRS = [(m, t) for m in list_methods() for t in TASKS]


@pytest.mark.parametrize(("method", "task"), PAIRS, ids=[f"{m.name}-{t}" for m, t in PAIRS])
def test_every_method_task_pair_runs_or_refuses_in_one_line(method, task, capsys, tmp_path):
    if task == "user_file":
        path = tmp_path / "rows.json"
        path.write_text('[{"clean": "1 2 3 1 2", "corrupted": "1 2 4 1 2", "answer": " 3", "wrong": " 4"}]')
        extra = ["-o", f"path={path}"]
    else:
        extra = []
    command = "circuit" if method.kind == "edges" else "score"
    flag = "--method" if method.kind == "edges" else "-a"
    code, _, err = run_main([command, "-m", "toy-induction", "-t", task, flag, method.name,
                             "--out", str(tmp_path / "out.parquet"), *_options(method, task), *extra], capsys)
    lines = err.strip().splitlines()
    assert code in (0, 2), err[-2000:]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    if method.requires and task not in method.tasks:
        assert code == 2 and "is not one. Tasks that fit:" in lines[0]
    if code == 0:
        assert (tmp_path / "out.parquet").exists()


def test_method_contracts_are_the_tasks_each_method_ran_on_before():
    """The contracts accept exactly the tasks the old hand-kept lists named (no behaviour change);
    logit_lens took any task and failed inside on those without token prompts: now a PromptTask."""
    contrastive = ("facts", "induction_contrast", "ioi", "user_file")
    expected = {"activation_patching": contrastive, "attribution_patching": contrastive, "path_patching": contrastive,
                "direct_logit_attribution": contrastive, "pattern_scores": ("induction",),
                "echo_induction": ("induction",), "ov_copying": ("induction", "succession"), "maps": ("relation",),
                "retrieval_heads": ("needle",), "ships": ("safety",), "sahara": ("safety",), "select_and_copy": ("mcqa",),
                "successor_heads": ("succession",), "trained_lens": ("corpus",), "eap": contrastive,
                "eap_ig": contrastive, "exact": contrastive, "verified": contrastive, "routes": contrastive,
                "composition": (), "composition_svd": (),
                "logit_lens": ("corpus", "facts", "induction", "induction_contrast", "ioi", "user_file")}
    got = {m.name: tuple(sorted(m.tasks)) for m in list_methods()}
    assert got == {k: tuple(sorted(v)) for k, v in expected.items()}


def test_an_incompatible_task_is_refused_before_the_model_loads():
    call_model = []

    def load():  # noqa: ANN202
        call_model.append(1)
        raise AssertionError("the model must not load")

    with pytest.raises(HeadscopeError, match="circuit method 'eap' needs a contrastive task"):
        run(plan("eap", "safety", {}, kind="edges"), load)
    with pytest.raises(HeadscopeError, match="analyzer 'select_and_copy' needs a multiple-choice task"):
        hs.score(load, task="induction", analyzer="select_and_copy")
    assert call_model == []


def test_plan_routes_and_types_options_once():
    call = plan("activation_patching", "induction_contrast", {"n_prompts": "3", "act": "z", "layers": "0,1"}, text=True)
    assert call.task_params == {"n_prompts": 3} and call.task.n_prompts == 3
    assert call.options["layers"] == [0, 1] and call.options["act"] == "z"
    with pytest.raises(HeadscopeError, match="unknown option 'n_promts'. Did you mean 'n_prompts'"):
        plan("activation_patching", "induction_contrast", {"n_promts": "3"}, text=True)
    with pytest.raises(HeadscopeError, match="n_prompts='2.5' must be an integer"):
        plan("activation_patching", "induction_contrast", {"n_prompts": "2.5"}, text=True)
    paper = plan("eap_ig", "induction_contrast", {"preset": "paper", "steps": 3}, kind="edges")
    assert paper.options["grid"] == "corrupted_end" and paper.options["steps"] == 3
    assert paper.preset == "paper" and "steps" not in paper.preset_options


PLUGIN = '''
from headscope.analyzers.registry import register_analyzer
from headscope.results import HeadScores, build_provenance
from headscope.tasks.protocols import RepeatedPromptTask


@register_analyzer("_tmp_first", summary="attention of the last query to the first token",
                   requires=RepeatedPromptTask, presets={"paper": {"scale": 2.0}})
def first_token(model, task, scale: float = 1.0) -> HeadScores:
    from headscope.trace import trace

    tr = trace(model, task.tokens(model), acts=["pattern"])
    rows = [[float(tr.get("pattern", layer)[:, h, -1, 0].mean()) * scale for h in range(model.n_heads)]
            for layer in range(model.n_layers)]
    prov = build_provenance(model, task=task.describe(), analyzer="_tmp_first", options={"scale": scale},
                            choices={})
    return HeadScores.from_matrix(rows, model=model.spec, task=task.name, analyzer="_tmp_first",
                                  metric="first_token", provenance=prov)
'''


@pytest.fixture
def plugin(tmp_path):
    (tmp_path / "tmp_headscope_plugin.py").write_text(textwrap.dedent(PLUGIN))
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.import_module("tmp_headscope_plugin")
        yield METHODS["_tmp_first"]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tmp_headscope_plugin", None)
        METHODS.pop("_tmp_first", None)


def test_a_method_in_one_file_reaches_every_way_in(plugin, capsys, tmp_path, toy_induction):
    import torch

    from headscope.recipes_runner import load_recipe, run_recipe
    from headscope.results import read_parquet

    code, out, _ = run_main(["tasks"], capsys)
    assert code == 0 and "_tmp_first" in out
    target = tmp_path / "cli.parquet"
    code, _, err = run_main(["score", "-m", "toy-induction", "-a", "_tmp_first", "-o", "n_prompts=2",
                             "-o", "seq_len=6", "-o", "preset=paper", "--out", str(target)], capsys)
    assert code == 0, err
    cli = read_parquet(target)
    assert cli.provenance["preset"] == "paper" and cli.provenance["options"] == {"scale": 2.0}
    api = hs.score(toy_induction, "induction", analyzer="_tmp_first", task_params={"n_prompts": 2, "seq_len": 6},
                   preset="paper")
    # the reference: the last query's attention to position 0, by hand from the HF GPT-2 blocks'
    # c_attn outputs (softmax(q k^T / sqrt(d_head)) under the causal mask)
    tokens = TASKS["induction"].build({"n_prompts": 2, "seq_len": 6}).tokens(toy_induction)
    from headscope.toy import build_toy

    hf, _ = build_toy("toy-induction")  # a fresh HF model with the planted weights, not the bridge's
    n_heads, qkv = hf.config.n_head, {}
    hooks = [block.attn.c_attn.register_forward_hook(lambda m, i, o, layer=layer: qkv.__setitem__(layer, o.detach()))
             for layer, block in enumerate(hf.transformer.h)]
    try:
        with torch.no_grad():
            hf(input_ids=tokens, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for layer in range(len(qkv)):
        q, k, _ = qkv[layer].split(hf.config.n_embd, -1)
        b, p, _ = q.shape
        q, k = (x.reshape(b, p, n_heads, -1).transpose(1, 2) for x in (q, k))
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(torch.ones(p, p, dtype=torch.bool).triu(1), float("-inf"))
        rows.append(scores.softmax(-1)[:, :, -1, 0].mean(0))
    want = torch.stack(rows) * 2.0  # (layer, head)
    assert torch.allclose(torch.tensor(api.matrix("first_token").to_numpy()).float(), want.float(), atol=1e-5)
    assert (cli.matrix("first_token").to_numpy() == api.matrix("first_token").to_numpy()).all()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: toy-induction\ntask: induction\nsteps:\n"
                      "  - {id: s, analyzer: _tmp_first, task_params: {n_prompts: 2, seq_len: 6}, options: {scale: 2.0}}\n")
    done = run_recipe(load_recipe(recipe), out_dir=tmp_path / "o", report=False, log=lambda _: None)
    assert (read_parquet(done.paths["s"]).matrix("first_token").to_numpy() == api.matrix("first_token").to_numpy()).all()
    code, _, err = run_main(["score", "-m", "toy-induction", "-t", "ioi", "-a", "_tmp_first"], capsys)
    assert code == 2 and "needs a repeated-token task; task 'ioi' is not one. Tasks that fit: induction" in err


def test_hs_circuit_runs_a_circuit_method(toy_induction):
    edges = hs.circuit(toy_induction, "induction_contrast", method="eap_ig", steps=2,
                       task_params={"n_prompts": 2, "seq_len": 8})
    assert edges.provenance["analyzer"] == "circuit:eap_ig" and edges.provenance["options"]["steps"] == 2
    assert len(edges) and edges["circuit"].sum() == min(100, len(edges))
    with pytest.raises(HeadscopeError, match="circuit method 'eap' needs a contrastive task"):
        hs.circuit(toy_induction, "needle", method="eap")
