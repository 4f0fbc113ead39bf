"""Fixtures of the conformance suite, and the plugin that records the support matrix.

Every test here takes a ``family`` (parametrized over all of :data:`ZOO_FAMILIES`) and carries
``@pytest.mark.capability("name")`` (formatted with the test's other parameters, e.g.
``"activation_patching_{act}"``), so each test id names one (family, capability) pair.

Session fixtures build each zoo model once into a temporary directory and load it twice:
as a headscope :class:`~headscope.models.Model` (``headscope.load_model(dir)``) and as an
independent raw Hugging Face model (:class:`raw_hf.RawHF`).

With ``HEADSCOPE_SUPPORT_MATRIX=<path.json>`` set, the outcome of every (family, capability)
is written there at the end of the session: ``pass``, ``fail`` (with the first line of the
failure), ``refused`` (the test asserted a documented refusal, with headscope's message) or
``skip``. ``docs/support_matrix.py`` renders it as ``docs/support.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from headscope.errors import HeadscopeError
from headscope.tasks.contrastive import ContrastiveBatch
from headscope.toy.vocab import BOS, PAD, VOCAB
from headscope.toy.zoo import ZOO_FAMILIES, build_zoo_model

from .raw_hf import RawHF

FAMILIES = list(ZOO_FAMILIES)

CAPABILITIES: dict[str, str] = {
    "tracer": "tracer q/k/v/z/pattern",
    "activation_patching_z": "activation patching z",
    "activation_patching_q": "activation patching q",
    "activation_patching_k": "activation patching k",
    "activation_patching_v": "activation patching v",
    "path_patching_resid": "path patching, senders -> logits",
    "path_patching_q": "path patching, senders -> receivers' q",
    "path_patching_q_at_END": "path patching, senders -> receivers' q at END (paper preset)",
    "edge_patching": "exact edge patching, every edge (q/k/v, MLP, logits inputs)",
    "edge_attribution": "EAP = derivative along each edge",
    "circuit_evaluation": "edges removed (ACDC semantics)",
    "circuit_methods": "every circuit method runs",
    "ablation_zero": "zero ablation",
    "ablation_mean": "mean ablation",
    "ablation_resample": "resample ablation",
    "query_mask": "query masking = uniform attention",
    "query_scale": "query scaling (MaskQuery, scale 1e-2)",
    "ships_query_scale": "Ships query-scale KL",
    "dla": "direct logit attribution",
    "logit_lens": "logit lens (real final norm)",
    "ov_circuit": "OV circuit (real norms)",
    "effective_embedding": "effective embedding (embed + MLP0)",
    "maps_paper_copying": "MAPS paper preset, copying (k=1)",
    "maps_paper_successor": "MAPS paper preset, successor (k=10)",
    "generation": "KV-cached decoding",
}
"""Capability key -> label, in the order of the support matrix columns."""

REFUSALS: dict[tuple[str, str], str] = {}
"""(family, capability) -> regex that headscope's one-line refusal must match, for the
combinations headscope documents as unsupported. A listed combination passes only if headscope
raises :class:`HeadscopeError` matching it; an unlisted one must give the exact numbers."""

REFUSED = object()
"""What :func:`hs_call` returns when headscope refused as documented (the test then stops)."""

TOL = 1e-4


# ---------------------------------------------------------------------------- parametrization
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "family" in metafunc.fixturenames:
        metafunc.parametrize("family", FAMILIES)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "capability(name): the support-matrix column a conformance test fills")


def capability_of(item: pytest.Item) -> tuple[str, str] | None:
    """(family, capability) of a conformance test item, or None."""
    marker = item.get_closest_marker("capability")
    callspec = getattr(item, "callspec", None)
    if marker is None or callspec is None or "family" not in callspec.params:
        return None
    capability = marker.args[0].format(**callspec.params)
    if capability not in CAPABILITIES:  # a new column must be named, or the matrix would drop it
        raise pytest.UsageError(f"capability {capability!r} of {item.nodeid} is not in CAPABILITIES (conftest.py)")
    return str(callspec.params["family"]), capability


@pytest.fixture(autouse=True)
def one_thread():
    """The zoo's matrices are tiny: one thread is faster than two (and kinder to a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- models and inputs
@dataclass
class ZooPair:
    """One zoo family: its directory, the headscope model and the raw HF reference."""

    family: str
    directory: Path
    hs: Any
    raw: RawHF


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ZooPair]:
    root = tmp_path_factory.mktemp("zoo")

    class Lazy(dict):
        def __missing__(self, family: str) -> ZooPair:
            import headscope as hs

            directory = build_zoo_model(family, root / family, seed=0)
            pair = ZooPair(family, directory, hs.load_model(str(directory)), RawHF(directory))
            self[family] = pair
            return pair

    return Lazy()


@pytest.fixture
def pair(family: str, zoo_cache: dict[str, ZooPair]) -> ZooPair:
    return zoo_cache[family]


@dataclass
class Prompts:
    """Seeded test inputs in the shared toy vocabulary (identical for every family).

    ``batch``: a ContrastiveBatch of 3 rows, right-padded to 12 tokens, END = 11, 9, 10; clean
    and corrupted share their first 5 tokens (BOS + 4) and differ at every later real position;
    all prompts are longer than the zoo's 4-token sliding window. ``plain``: (2, 12) unpadded
    tokens. ``reference``: (3, 12) unpadded tokens for mean ablation.
    """

    batch: ContrastiveBatch
    plain: torch.Tensor
    reference: torch.Tensor


@pytest.fixture(scope="session")
def prompts() -> Prompts:
    gen = torch.Generator().manual_seed(1234)
    words = torch.arange(4, len(VOCAB))  # non-special ids

    def draw(n: int) -> list[int]:
        return words[torch.randint(len(words), (n,), generator=gen)].tolist()

    bos, pad = VOCAB[BOS], VOCAB[PAD]
    lengths, shared = (12, 10, 11), 4
    prefix = draw(shared)
    clean, corrupted = [], []
    for n in lengths:
        a = draw(n - 1 - shared)
        b = [(t - 4 + 1 + int(torch.randint(len(words) - 1, (1,), generator=gen))) % len(words) + 4 for t in a]
        clean.append([bos, *prefix, *a])
        corrupted.append([bos, *prefix, *b])
    width = max(lengths)

    def padded(rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])

    answer = torch.tensor(draw(len(lengths)))
    wrong = torch.tensor([(t - 4 + 7) % len(words) + 4 for t in answer.tolist()])
    end = torch.tensor([n - 1 for n in lengths])
    batch = ContrastiveBatch(padded(clean), padded(corrupted), answer, wrong, {"END": end})
    plain = torch.tensor([[bos, *draw(width - 1)] for _ in range(2)])
    reference = torch.tensor([[bos, *draw(width - 1)] for _ in range(3)])
    return Prompts(batch, plain, reference)


# ---------------------------------------------------------------------------- assertions
def assert_close(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = TOL) -> None:
    """``|got - want| <= tol`` everywhere, with a one-line message naming the worst entry."""
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != reference {tuple(want.shape)}"
    diff = (got - want).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if not worst <= tol:  # also catches NaN
        idx = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if worst == worst else ()
        raise AssertionError(
            f"{what}: max |headscope - raw HF| = {worst:.3g} > {tol:g} at {idx} "
            f"(headscope {float(got[idx]) if idx else float('nan'):.6g}, raw {float(want[idx]) if idx else float('nan'):.6g})"
        )


@pytest.fixture
def hs_call(request: pytest.FixtureRequest) -> Callable[[Callable[[], Any]], Any]:
    """Call headscope; where the (family, capability) is a documented refusal, assert it."""
    key = capability_of(request.node)

    def call(fn: Callable[[], Any]) -> Any:
        if key is None or key not in REFUSALS:
            return fn()
        with pytest.raises(HeadscopeError, match=REFUSALS[key]) as info:
            fn()
        request.node.user_properties.append(("refused", str(info.value).splitlines()[0]))
        return REFUSED

    return call


# ---------------------------------------------------------------------------- support-matrix plugin
_OUTCOMES: dict[tuple[str, str], dict[str, str]] = {}
_RANK = {"pass": 0, "refused": 1, "skip": 2, "fail": 3}


def _reason(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    line = text.strip().splitlines()[0] if text.strip() else "failed"
    return line.removeprefix("AssertionError: ")[:300]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    key = capability_of(item)
    if key is None or (report.when != "call" and report.passed):
        return
    if report.passed:
        refused = [msg for name, msg in item.user_properties if name == "refused"]
        entry = {"status": "refused", "message": refused[0]} if refused else {"status": "pass", "message": ""}
    elif report.skipped:
        entry = {"status": "skip", "message": _reason(report)}
    else:
        entry = {"status": "fail", "message": f"{report.when}: {_reason(report)}" if report.when != "call" else _reason(report)}
    old = _OUTCOMES.get(key)
    if old is None or _RANK[entry["status"]] >= _RANK[old["status"]]:
        _OUTCOMES[key] = entry


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("HEADSCOPE_SUPPORT_MATRIX")
    if not path or not _OUTCOMES:
        return
    from importlib.metadata import version

    data = {
        "versions": {name: version(name) for name in ("torch", "transformers", "transformer-lens")},
        "families": {f: ZOO_FAMILIES[f].summary for f in FAMILIES},
        "capabilities": CAPABILITIES,
        "results": {f"{fam}/{cap}": entry for (fam, cap), entry in sorted(_OUTCOMES.items())},
    }
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
