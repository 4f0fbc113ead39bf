"""``headscope verify``: passes where headscope is right, FAILs where a known bug is put back.

The bugs (issue 10) are re-introduced with monkeypatch, each in the place it used to live:
(a) the patching engine handing HF a truncated layer list (Gemma-2 with mixed layer types),
(b) ``MaskQuery`` scaling ``hook_q`` before QK-norm (Qwen3),
(c) the final norm's effective weight replaced by the stored ``weight`` (Gemma's ``1 + w``).
Each test asserts that the capability guarding the bug FAILs (so it fails if that check is
removed) and that verify exits 1.

Tiny models of other families are built here from ``transformers`` config classes with
seeded random weights (q/k scaled up so attention is peaked, random norm weights, Gemma's
stored as ``multiplier - 1``) and saved with ``save_pretrained`` next to the toy tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

import headscope as hs
from headscope.cli.app import main
from headscope.errors import HeadscopeError
from headscope.verify import CAPABILITIES, FAIL, NOT_CHECKED, PASS, REFUSED, verify_model

FAMILIES = {
    # Qwen3: per-head QK-norm before RoPE, GQA
    "qwen3": ("Qwen3Config", {"num_hidden_layers": 2, "tie_word_embeddings": False}),
    # Gemma-2: sliding (window 4 < the 10-token prompts) and global layers in a non-periodic
    # order, attention and final-logit soft-capping, sandwich norms, (1 + w) RMSNorm
    "gemma2": ("Gemma2Config", {
        "num_hidden_layers": 3, "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention", "full_attention"],
        "query_pre_attn_scalar": 8, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 4.0,
    }),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are overhead-bound: one thread is several times faster on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_tiny(family: str, directory: Path) -> Path:
    """Save a seeded random tiny model of ``family`` (see the module docstring) to ``directory``."""
    from headscope.toy.tokenizer import build_tokenizer
    from headscope.toy.vocab import BOS, EOS, PAD, VOCAB

    config_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(
        vocab_size=len(VOCAB), bos_token_id=VOCAB[BOS], eos_token_id=VOCAB[EOS], pad_token_id=VOCAB[PAD],
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **extra,
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    offset = family.startswith("gemma")
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 1:  # norm weights: random multipliers around 1
                m = torch.exp(0.3 * torch.randn(p.shape, generator=g))
                p.copy_(m - 1 if offset else m)
            else:
                gain = 2.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                std = 1.0 if "embed" in name else gain * p.shape[-1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
    model.save_pretrained(directory)
    build_tokenizer(family).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verify-tiny")
    return {family: build_tiny(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def tiny(tiny_dirs) -> dict[str, hs.Model]:
    return {family: hs.load_model(str(path)) for family, path in tiny_dirs.items()}


def run_cli(args: list[str]) -> int:
    """``headscope ARGS`` in-process; its exit code (0 when it returns normally)."""
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def statuses(report) -> dict[str, set[str]]:
    """capability -> the statuses of its checks."""
    out: dict[str, set[str]] = {}
    for row in report.rows:
        out.setdefault(row.capability, set()).add(row.status)
    return out


def assert_all_pass(report) -> None:
    frame = report.to_frame()
    assert list(dict.fromkeys(frame.capability)) == list(CAPABILITIES)
    bad = frame[frame.status != PASS]
    assert bad.empty, bad.to_string()
    assert (frame.max_diff <= frame.tolerance).all() and not report.failed


# ---------------------------------------------------------------------------------- passing
@pytest.mark.parametrize("spec", ["toy-gqa", "toy-induction"])
def test_verify_passes_on_toys(spec, toy_gqa, toy_induction) -> None:
    model = toy_gqa if spec == "toy-gqa" else toy_induction
    report = verify_model(model)
    assert_all_pass(report)
    assert report.model["spec"] == spec and report.settings["prompts"] == 3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_verify_passes_on_tiny_families(family, tiny) -> None:
    report = verify_model(tiny[family], seed=1)
    assert_all_pass(report)
    assert tiny[family].source_dir is not None


def test_verify_is_seeded(toy_gqa) -> None:
    a, b = verify_model(toy_gqa, seed=3), verify_model(toy_gqa, seed=3)
    assert a.to_frame().drop(columns="reason").equals(b.to_frame().drop(columns="reason"))


# ---------------------------------------------------------------------------------- bugs put back
@contextmanager
def _truncated(self, start: int):
    """The engine's old behaviour: hand HF only blocks start.. (layer_types read from index 0)."""
    if not self.prefix_reuse or start == 0 or self._layers is None:
        yield
        return
    owner, name, full = self._layers
    setattr(owner, name, nn.ModuleList(list(full)[start:]))
    try:
        yield
    finally:
        setattr(owner, name, full)


def test_truncated_layer_list_fails_activation_patching(monkeypatch, tiny_dirs, tmp_path) -> None:
    from headscope.patching.engine import PatchEngine

    monkeypatch.setattr(PatchEngine, "_skip_blocks_before", _truncated)
    out = tmp_path / "report.json"
    assert run_cli(["verify", "--model", str(tiny_dirs["gemma2"]), "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    by_cap = {}
    for row in report["rows"]:
        by_cap.setdefault(row["capability"], set()).add(row["status"])
    assert by_cap["activation_patching"] == {FAIL}
    assert by_cap["trace"] == {PASS} and by_cap["ablation"] == {PASS} and not report["passed"]


def test_query_scaled_before_qk_norm_fails_query_mask(monkeypatch, tiny) -> None:
    import headscope.interventions.heads as heads

    monkeypatch.setattr(heads, "query_scale_act", lambda model, layer=0: "q")
    report = verify_model(tiny["qwen3"])
    got = statuses(report)
    assert FAIL in got["query_mask"] and report.failed
    assert got["trace"] == {PASS} and got["activation_patching"] == {PASS}


def test_raw_final_norm_weight_fails_dla(monkeypatch, tiny) -> None:
    import headscope.analyzers.direct_logit_attribution as dla
    import headscope.lens.core as lens
    import headscope.models.norms as norms
    import headscope.verify.checks.logit_lens as verify_lens

    good = norms.final_norm

    def stored_weight(model):  # Gemma stores w and multiplies by 1 + w
        spec = good(model)
        return dataclasses.replace(spec, weight=model.bridge.ln_final.original_component.weight.detach().float())

    for module in (dla, lens, verify_lens):
        monkeypatch.setattr(module, "final_norm", stored_weight)
    report = verify_model(tiny["gemma2"])
    got = statuses(report)
    assert got["dla"] == {FAIL} and got["logit_lens"] == {FAIL} and report.failed
    assert got["activation_patching"] == {PASS}


# ---------------------------------------------------------------------------------- other outcomes
def test_refusal_is_reported_not_failed(monkeypatch, toy_gqa) -> None:
    import headscope.interventions.heads as heads
    from headscope.models.arch import UnsupportedArchitectureError

    def refuse(model, layer=0):
        raise UnsupportedArchitectureError("LlamaForCausalLM: query scaling cannot reach the logits here.")

    monkeypatch.setattr(heads, "query_scale_act", refuse)
    report = verify_model(toy_gqa)
    rows = [r for r in report.rows if r.capability == "query_mask"]
    assert {r.status for r in rows} == {REFUSED} and not report.failed
    assert all("cannot reach the logits" in r.reason for r in rows)


def test_crash_in_headscope_fails(monkeypatch, toy_gqa) -> None:
    import headscope.verify.checks.ablation as ablation

    def boom(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(ablation, "run_with_interventions", boom)
    report = verify_model(toy_gqa)
    rows = [r for r in report.rows if r.capability == "ablation"]
    assert {r.status for r in rows} == {FAIL} and report.failed
    assert "RuntimeError: shape mismatch" in rows[0].reason


def test_missing_reference_piece_is_not_checked(monkeypatch, toy_gqa) -> None:
    import headscope.verify.context as context
    from headscope.verify.raw_norms import NormSites

    monkeypatch.setattr(context, "find_norms", lambda raw, tokens: NormSites(None, [None] * raw.n_layers, "no final norm found"))
    report = verify_model(toy_gqa)
    got = statuses(report)
    assert NOT_CHECKED in got["dla"] and NOT_CHECKED in got["logit_lens"]
    assert all(r.reason for r in report.rows if r.status == NOT_CHECKED)
    assert got["trace"] == {PASS} and not report.failed


def test_model_without_directory_is_refused_in_one_line(toy_gqa) -> None:
    bare = dataclasses.replace(toy_gqa, source="dir", source_dir=None)
    with pytest.raises(HeadscopeError, match="records no directory"):
        verify_model(bare)


# ---------------------------------------------------------------------------------- CLI
def test_cli_passes_prints_table_and_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "sub" / "report.json"
    assert run_cli(["verify", "--model", "toy-gqa", "--prompts", "2", "--seed", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for capability in CAPABILITIES:
        assert capability in text
    assert "22 PASS" in text and "FAIL" not in text
    report = json.loads(out.read_text())
    assert report["passed"] and report["settings"]["prompts"] == 2 and report["settings"]["seed"] == 5
    assert [r["capability"] for r in report["rows"]][0] == "trace"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.json"]  # no temporary left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify"], "--model"),
        (["verify", "--model", "toy-gqa", "--prompts", "0"], "--prompts must be at least 1"),
        (["verify", "--model", "toy-gqa", "--out", "report.txt"], "should end in .json"),
        (["verify", "--model", "toy-nope"], "unknown toy model"),
        (["verify", "--model", "/no/such/dir"], "no such file or directory"),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(args, message, capsys) -> None:
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
