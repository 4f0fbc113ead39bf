"""Circuit evaluation (``headscope.circuits.evaluate`` / ``.nodes``) against raw Hugging Face runs.

Knocking a node out (every edge leaving it patched to the corrupted run) is, by definition, the
clean run with that node's output replaced by its corrupted output for every reader: here the raw
reference sets each removed head's input to the output projection (z) to its corrupted value and
each removed MLP's output to its corrupted output, with module hooks only. Completeness and
minimality are then the hand formulas of Wang et al. 2022 applied to those raw values.
"""

from __future__ import annotations

import pytest
import torch

import headscope as hs
from headscope.circuits.evaluate import evaluate_circuit, mean_runs
from headscope.circuits.exact import prepare
from headscope.circuits.graph import EdgeGraph
from headscope.circuits.nodes import NodeKnockout, all_nodes, completeness_rows, minimality_rows
from headscope.errors import HeadscopeError
from headscope.patching import PatchEngine
from headscope.results.edge_scores import EdgeScores

from .conftest import assert_close
from .raw_edges import FixedTask, _replace_input, sender_deltas
from .raw_hf import RawHF, logit_diff


def raw_knockout(raw: RawHF, batch, removed: set[str], mean: bool = False) -> float:  # noqa: ANN001
    """Raw prompt-mean logit difference of the clean run with the heads/MLPs in ``removed`` set to
    their corrupted (or, ``mean``, per-position prompt-mean corrupted) z / MLP output."""
    x = raw.run(batch.corrupted)

    def avg(t: torch.Tensor) -> torch.Tensor:
        return t.mean(0, keepdim=True).expand_as(t) if mean else t

    z_edit = {}
    for layer in range(raw.n_layers):
        heads = [h for h in range(raw.n_heads) if f"a{layer}.h{h}" in removed]
        if heads:
            def swap(z: torch.Tensor, heads: list[int] = heads, layer: int = layer) -> torch.Tensor:
                z[:, :, heads] = avg(x.z[layer])[:, :, heads]
                return z

            z_edit[layer] = swap
    handles = [raw.mlp(layer).register_forward_hook(lambda m, i, o, layer=layer: avg(x.mlp_add[layer]).clone())
               for layer in range(raw.n_layers) if f"m{layer}" in removed]
    try:
        logits = raw.run(batch.clean, z_edit=z_edit).logits
    finally:
        for h in handles:
            h.remove()
    return float(logit_diff(logits, batch.end, batch.answer, batch.wrong).mean())


def table_of(graph: EdgeGraph, keep: torch.Tensor) -> EdgeScores:
    return EdgeScores.from_edges(graph.edges, keep.float().tolist(), keep.tolist(), model="m", task="conformance", method="hand")


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_node_knockout_completeness_minimality_match_raw(fam, zoo_cache, prompts):
    """F(X) for node sets X equals the raw knock-out; the incompleteness and minimality rows equal
    |F(C\\K) - F(M\\K)| and |F(C\\(K u {v})) - F(C\\K)| of the raw F values for the K they record;
    the first greedy K is the single node with the largest raw incompleteness."""
    pair = zoo_cache[fam]
    batch, raw = prompts.batch, pair.raw
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(pair.hs)
    runs = prepare(engine, batch.clean, batch.corrupted, graph)
    f = NodeKnockout(engine, runs, graph)
    nodes = all_nodes(graph)
    gen = torch.Generator().manual_seed(3)
    circuit = [n for n in nodes if n.startswith("a")][:3] + ["m0"]
    subsets = [nodes, [], circuit, *([n for n, p in zip(nodes, torch.rand(len(nodes), generator=gen) < 0.5, strict=True) if p]
                                     for _ in range(3))]
    raw_f: dict[frozenset[str], float] = {}

    def F(kept) -> float:  # noqa: ANN001, N802
        key = frozenset(kept)
        if key not in raw_f:
            raw_f[key] = raw_knockout(raw, batch, set(nodes) - set(kept))
        return raw_f[key]

    for kept in subsets:
        assert_close(torch.tensor(f(kept)), torch.tensor(F(kept)), f"F({sorted(kept)})")
    assert abs(F(nodes) - F([])) > 0.1, "the knock-outs should move the metric"
    comp = completeness_rows(f, circuit, samples=3, greedy=2, seed=0)
    mini = minimality_rows(f, circuit, samples=2, seed=0)
    assert [r["subset"] for r in comp] == ["empty", "random0", "random1", "random2", "greedy1", "greedy2"]
    for r in comp:
        k = set(filter(None, r["K"].split(",")))
        want = abs(F([n for n in circuit if n not in k]) - F([n for n in nodes if n not in k]))
        assert r["value"] == pytest.approx(want, abs=2e-4), (r, want)
    by_hand = max(circuit, key=lambda v: abs(F([n for n in circuit if n != v]) - F([n for n in nodes if n != v])))
    assert comp[4]["K"] == by_hand
    assert len(mini) == 3 * len(circuit)
    for r in mini:
        k = set(filter(None, r["K"].split(",")))
        assert r["node"] not in k
        want = abs(F([n for n in circuit if n not in k and n != r["node"]]) - F([n for n in circuit if n not in k]))
        assert r["value"] == pytest.approx(want, abs=2e-4), (r, want)


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_mean_knockout_matches_raw(fam, zoo_cache, prompts):
    """ablation=mean on the zoo, heads and MLPs: every row read at END = 9 (all three prompts are
    real tokens up to there, so positions line up), knocked-out nodes carry the per-position mean
    over the corrupted prompts of their z / MLP output (raw hooks)."""
    from headscope.tasks.contrastive import ContrastiveBatch

    pair = zoo_cache[fam]
    b = prompts.batch
    batch = ContrastiveBatch(b.clean, b.corrupted, b.answer, b.wrong, {"END": torch.full_like(b.end, 9)})
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(pair.hs)
    f = NodeKnockout(engine, mean_runs(prepare(engine, batch.clean, batch.corrupted, graph)), graph)
    for removed in ({"a0.h0"}, {"m0", "a1.h2"}, {"a0.h1", "m1", "a1.h0"}):
        want = raw_knockout(pair.raw, batch, removed, mean=True)
        assert abs(want - raw_knockout(pair.raw, batch, removed)) > 1e-3, f"mean and corrupted knock-outs of {removed} should differ"
        assert f([n for n in all_nodes(graph) if n not in removed]) == pytest.approx(want, abs=1e-4), removed


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_circuit_faithfulness_matches_raw(fam, zoo_cache, prompts):
    """Faithfulness of two edge circuits by hand from raw runs: (1) every edge except those leaving
    a0.h1 (= a0.h1's z set to its corrupted value); (2) every edge except the heads' edges into the
    logits (the final norm reads the clean final residual plus each head's raw output change when its
    z alone is corrupted, ``raw_edges.sender_deltas``). Mean ablation is refused on these prompts,
    whose END positions differ."""
    pair = zoo_cache[fam]
    batch, raw = prompts.batch, pair.raw
    graph = EdgeGraph.of(pair.hs)
    task = FixedTask(batch)
    metric = lambda logits: float(logit_diff(logits, batch.end, batch.answer, batch.wrong).mean())  # noqa: E731
    clean, corrupted = metric(raw.run(batch.clean).logits), metric(raw.run(batch.corrupted).logits)
    deltas = sender_deltas(raw, batch.clean, batch.corrupted)
    heads = [e.sender.name for e in graph.edges if e.receiver.name == "logits" and e.sender.kind == "head"]
    shift = torch.stack([deltas[h] for h in heads]).sum(0)
    handle = raw.final_norm.register_forward_pre_hook(_replace_input(lambda t: t + shift), with_kwargs=True)
    try:
        into_logits = metric(raw.run(batch.clean).logits)
    finally:
        handle.remove()
    cases = [
        (torch.tensor([e.sender.name != "a0.h1" for e in graph.edges]), raw_knockout(raw, batch, {"a0.h1"})),
        (torch.tensor([not (e.receiver.name == "logits" and e.sender.kind == "head") for e in graph.edges]), into_logits),
    ]
    for keep, m in cases:
        got = evaluate_circuit(pair.hs, task, table_of(graph, keep), curve=False, samples=0, greedy=0)
        want = (m - corrupted) / (clean - corrupted)
        assert abs(want) > 0.05 and abs(want - 1) > 0.05, f"the case should be neither clean nor corrupted: {want}"
        assert got.value("faithfulness", "circuit") == pytest.approx(want, abs=1e-4)
        assert got.value("metric", "circuit") == pytest.approx(m, abs=1e-4)
    with pytest.raises(HeadscopeError, match="END positions differ"):
        evaluate_circuit(pair.hs, task, table_of(graph, cases[0][0]), ablation="mean", curve=False)


@pytest.fixture(scope="module")
def toy_raw(tmp_path_factory):  # noqa: ANN201
    """toy-induction as a raw HF model and as headscope's, with an induction_contrast batch."""
    from headscope.tasks.induction_contrast import InductionContrastTask
    from headscope.toy.induction import build_induction

    directory = tmp_path_factory.mktemp("toy-induction")
    model, tokenizer = build_induction()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    hs_model = hs.load_model("toy-induction")
    task = InductionContrastTask(n_prompts=4, seq_len=6, seed=0)
    return RawHF(directory), hs_model, task, task.batch(hs_model)


def test_mean_ablation_matches_raw(toy_raw):
    """ablation=mean: a removed edge carries the per-position mean over the corrupted prompts of the
    sender's output. Raw: node knock-outs with the prompt-mean corrupted z; every edge into the
    logits removed = the final norm reading the prompt-mean corrupted final residual."""
    raw, model, task, batch = toy_raw
    engine = PatchEngine(model, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(model)
    f = NodeKnockout(engine, mean_runs(prepare(engine, batch.clean, batch.corrupted, graph)), graph)
    for removed in ({"a0.h0"}, {"a0.h0", "a1.h1"}, {"a0.h1", "a1.h1"}):
        want = raw_knockout(raw, batch, removed, mean=True)
        got = f([n for n in all_nodes(graph) if n not in removed])
        assert got == pytest.approx(want, abs=1e-4), removed
        assert abs(want - raw_knockout(raw, batch, removed)) > 1e-3, f"mean and corrupted knock-outs of {removed} should differ"
    metric = lambda logits: float(logit_diff(logits, batch.end, batch.answer, batch.wrong).mean())  # noqa: E731
    x_final = raw.run(batch.corrupted).resid_final.mean(0, keepdim=True)
    handle = raw.final_norm.register_forward_pre_hook(_replace_input(lambda t: x_final.expand_as(t)), with_kwargs=True)
    try:
        m = metric(raw.run(batch.clean).logits)
    finally:
        handle.remove()
    clean, corrupted = metric(raw.run(batch.clean).logits), metric(raw.run(batch.corrupted).logits)
    keep = torch.tensor([e.receiver.name != "logits" for e in graph.edges])
    got = evaluate_circuit(model, task, table_of(graph, keep), ablation="mean", curve=False, samples=0, greedy=0)
    assert got.value("metric", "circuit") == pytest.approx(m, abs=1e-4)
    assert got.value("faithfulness", "circuit") == pytest.approx((m - corrupted) / (clean - corrupted), abs=1e-5)


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_head_nodes_keep_mlps_match_raw(fam, zoo_cache, prompts):
    """``nodes=heads`` (Wang et al. 2022, Sec. 4: nodes are heads, MLPs kept; Easy-Transformer's
    completeness.py runs every extraction with ``mlps_to_remove={}``): F(X) over head sets X equals
    the raw run with only the heads outside X set to their corrupted z, every MLP computing on its
    actual input (raw hooks, no MLP edited). ``circuit evaluate -o nodes=heads``: an MLP sending
    along circuit edges is not a node, and the completeness / minimality rows are Wang's formulas
    on those raw F values; the default (MLPs outside C knocked out) gives a different F(C)."""
    pair = zoo_cache[fam]
    batch, raw = prompts.batch, pair.raw
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(pair.hs)
    f = NodeKnockout(engine, prepare(engine, batch.clean, batch.corrupted, graph), graph, "heads")
    heads = all_nodes(graph, "heads")
    assert heads == [f"a{layer}.h{h}" for layer in range(raw.n_layers) for h in range(raw.n_heads)]
    raw_f: dict[frozenset[str], float] = {}

    def F(kept) -> float:  # noqa: ANN001, N802
        key = frozenset(kept)
        if key not in raw_f:
            raw_f[key] = raw_knockout(raw, batch, set(heads) - set(kept))  # heads only: no MLP removed
        return raw_f[key]

    gen = torch.Generator().manual_seed(5)
    for kept in ([], heads, *([n for n, p in zip(heads, torch.rand(len(heads), generator=gen) < 0.5, strict=True) if p]
                              for _ in range(2))):
        assert_close(torch.tensor(f(kept)), torch.tensor(F(kept)), f"heads-only F({sorted(kept)})")
    circuit_senders = {"a0.h1", "a1.h0", "a2.h2", "m0"}
    keep = torch.tensor([e.sender.name in circuit_senders for e in graph.edges])
    got = evaluate_circuit(pair.hs, FixedTask(batch), table_of(graph, keep), curve=False, samples=2, greedy=1, nodes="heads")
    circuit = ["a0.h1", "a1.h0", "a2.h2"]
    t = got.table
    assert t[t["quantity"] == "nodes"]["K"].iloc[0] == ",".join(circuit)
    assert got.provenance["options"]["nodes"] == "heads" and "MLPs" in got.provenance["choices"]["nodes"]
    for r in t[t["quantity"] == "incompleteness"].to_dict("records"):
        k = set(filter(None, r["K"].split(",")))
        want = abs(F([n for n in circuit if n not in k]) - F([n for n in heads if n not in k]))
        assert r["value"] == pytest.approx(want, abs=2e-4), (r, want)
    mini = t[t["quantity"] == "minimality"].to_dict("records")
    assert len(mini) == 3 * len(circuit)
    for r in mini:
        k = set(filter(None, r["K"].split(",")))
        want = abs(F([n for n in circuit if n not in k and n != r["node"]]) - F([n for n in circuit if n not in k]))
        assert r["value"] == pytest.approx(want, abs=2e-4), (r, want)
    default = evaluate_circuit(pair.hs, FixedTask(batch), table_of(graph, keep), curve=False, samples=0, greedy=0)
    d = default.table
    assert "m0" in d[d["quantity"] == "nodes"]["K"].iloc[0]
    fc_default = float(d[(d["quantity"] == "incompleteness") & (d["subset"] == "empty")]["f_a"].iloc[0])
    assert abs(fc_default - F(circuit)) > 1e-3, "knocking the MLPs outside C out should change F(C)"
    with pytest.raises(HeadscopeError, match="nodes must be components") as err:
        evaluate_circuit(pair.hs, FixedTask(batch), table_of(graph, keep), curve=False, nodes="head")
    assert "\n" not in str(err.value)


def raw_knockout_at(raw: RawHF, batch, removed: set[str], knock_at: dict[str, torch.Tensor]) -> float:  # noqa: ANN001
    """Raw prompt-mean logit difference of the clean run with the z of each head in ``removed`` set
    to its corrupted value at every position, and the z of each head of ``knock_at`` set to it only
    where its (n, pos) mask is True; every MLP computes on its actual input (no MLP edited)."""
    x = raw.run(batch.corrupted)
    n, pos = batch.clean.shape
    z_edit = {}
    for layer in range(raw.n_layers):
        where = {h: torch.ones(n, pos, dtype=torch.bool) for h in range(raw.n_heads) if f"a{layer}.h{h}" in removed}
        where.update({h: knock_at[f"a{layer}.h{h}"] for h in range(raw.n_heads) if f"a{layer}.h{h}" in knock_at})
        if where:
            def swap(z: torch.Tensor, where: dict = where, layer: int = layer) -> torch.Tensor:
                for h, m in where.items():
                    z[:, :, h][m] = x.z[layer][:, :, h][m]
                return z

            z_edit[layer] = swap
    logits = raw.run(batch.clean, z_edit=z_edit).logits
    return float(logit_diff(logits, batch.end, batch.answer, batch.wrong).mean())


def _with_positions(batch, **named: torch.Tensor):  # noqa: ANN001, ANN202
    from headscope.tasks.contrastive import ContrastiveBatch

    return ContrastiveBatch(batch.clean, batch.corrupted, batch.answer, batch.wrong, {**named, "END": batch.end})


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_head_positions_match_raw(fam, zoo_cache, prompts):
    """``nodes=heads`` with ``head_positions`` (Wang et al. 2022's RELEVANT_TOKENS): a1.h0 listed at
    ``X+1`` only (X a named position that differs per prompt: 3, 5, 4), a0.h1 at ``X`` and ``END``;
    a2.h2 unlisted. Raw, by the definitions: F(C \\ K) = every head outside C \\ K corrupted at every
    position, a listed head of C \\ K corrupted at every position but its listed ones; F(M \\ K) =
    a listed head of K corrupted at its listed positions only, an unlisted one everywhere. The
    F values, the incompleteness rows (|F(C\\K) - F(M\\K)|) and the minimality rows
    (|F(C\\(K u {v})) - F(C\\K)|) of ``circuit evaluate`` equal those raw values."""
    from headscope.circuits.nodes import head_position_masks, parse_head_positions

    pair = zoo_cache[fam]
    raw = pair.raw
    x_pos = torch.tensor([3, 5, 4])
    batch = _with_positions(prompts.batch, X=x_pos)
    n, width = batch.clean.shape
    engine = PatchEngine(pair.hs, batch.end, batch.logit_diff)
    graph = EdgeGraph.of(pair.hs)
    heads = all_nodes(graph, "heads")
    circuit = ["a0.h1", "a1.h0", "a2.h2"]
    spec = "1.0@X+1, 0.1@X,0.1@END"
    # the relevant positions by hand (True = kept), independent of head_position_masks
    rel = {"a1.h0": torch.zeros(n, width, dtype=torch.bool), "a0.h1": torch.zeros(n, width, dtype=torch.bool)}
    for row in range(n):
        rel["a1.h0"][row, int(x_pos[row]) + 1] = True
        rel["a0.h1"][row, int(x_pos[row])] = True
        rel["a0.h1"][row, int(batch.end[row])] = True
    keep_at = head_position_masks(parse_head_positions(spec), batch, graph, circuit)
    assert set(keep_at) == set(rel) and all(torch.equal(keep_at[h], rel[h]) for h in rel)
    f = NodeKnockout(engine, prepare(engine, batch.clean, batch.corrupted, graph), graph, "heads", keep_at=keep_at)
    assert f.universe == [*heads, "a1.h0@other", "a0.h1@other"]
    memo: dict[tuple, float] = {}

    def raw_c(k) -> float:  # noqa: ANN001
        """F(C \\ K) by hand."""
        key = ("C", frozenset(k))
        if key not in memo:
            kept = [h for h in circuit if h not in k]
            memo[key] = raw_knockout_at(raw, batch, set(heads) - set(kept), {h: ~rel[h] for h in kept if h in rel})
        return memo[key]

    def raw_m(k) -> float:  # noqa: ANN001
        """F(M \\ K) by hand."""
        key = ("M", frozenset(k))
        if key not in memo:
            memo[key] = raw_knockout_at(raw, batch, {h for h in k if h not in rel}, {h: rel[h] for h in k if h in rel})
        return memo[key]

    for k in ([], ["a1.h0"], ["a0.h1", "a2.h2"], circuit):
        assert_close(torch.tensor(f([h for h in circuit if h not in k])), torch.tensor(raw_c(k)), f"F(C \\ {k})")
        assert_close(torch.tensor(f([h for h in f.universe if h not in k])), torch.tensor(raw_m(k)), f"F(M \\ {k})")
    # the positions matter here: a1.h0 kept at every position (today's node) gives another F(C),
    # and knocked out at every position another F(M \ {a1.h0})
    everywhere = raw_knockout_at(raw, batch, set(heads) - set(circuit), {"a0.h1": ~rel["a0.h1"]})
    assert abs(raw_c([]) - everywhere) > 1e-3, "keeping a1.h0 at X+1 only should change F(C)"
    assert abs(raw_m(["a1.h0"]) - raw_knockout(raw, batch, {"a1.h0"})) > 1e-3, "a1.h0 knocked out at X+1 only should differ"

    keep = torch.tensor([e.sender.name in {*circuit, "m0"} for e in graph.edges])
    got = evaluate_circuit(pair.hs, FixedTask(batch), table_of(graph, keep), curve=False, samples=2, greedy=1, nodes="heads",
                           head_positions=spec)
    t = got.table
    assert t[t["quantity"] == "nodes"]["K"].iloc[0] == ",".join(circuit)
    assert got.provenance["options"]["head_positions"] == spec
    assert got.provenance["choices"]["head_positions"] == {"a1.h0": ["X+1"], "a0.h1": ["X", "END"]}
    inc = t[t["quantity"] == "incompleteness"].to_dict("records")
    for r in inc:
        k = list(filter(None, r["K"].split(",")))
        assert r["f_a"] == pytest.approx(raw_c(k), abs=1e-4) and r["f_b"] == pytest.approx(raw_m(k), abs=1e-4), (r, k)
        assert r["value"] == pytest.approx(abs(raw_c(k) - raw_m(k)), abs=2e-4), (r, k)
    mini = t[t["quantity"] == "minimality"].to_dict("records")
    assert len(mini) == 3 * len(circuit)
    for r in mini:
        k = list(filter(None, r["K"].split(",")))
        want = abs(raw_c([*k, r["node"]]) - raw_c(k))
        assert r["value"] == pytest.approx(want, abs=2e-4), (r, want)


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_head_positions_at_every_position_are_todays_nodes(fam, zoo_cache, prompts):
    """A circuit head listed at every position (``B``, ``B+1``, ... ``B+11`` with B = 0 on the 12-token
    prompts) is today's node: the whole evaluation table equals the one without head_positions."""
    pair = zoo_cache[fam]
    batch = _with_positions(prompts.batch, B=torch.zeros(3, dtype=torch.long))
    graph = EdgeGraph.of(pair.hs)
    keep = torch.tensor([e.sender.name in {"a0.h1", "a1.h0", "a2.h2", "m0"} for e in graph.edges])
    width = batch.clean.shape[1]
    every = ",".join(["1.0@B", *(f"1.0@B+{i}" for i in range(1, width))])

    def run(**kw):  # noqa: ANN003, ANN202
        return evaluate_circuit(pair.hs, FixedTask(batch), table_of(graph, keep), curve=False, samples=2, greedy=1,
                                nodes="heads", **kw).table

    today, listed = run(), run(head_positions=every)
    cols = ["quantity", "subset", "node", "K", "value", "f_a", "f_b"]
    assert today[cols].equals(listed[cols]), (today[cols], listed[cols])
    with pytest.raises(HeadscopeError, match="falls outside prompt 0"):
        run(head_positions=f"1.0@B+{width}")
