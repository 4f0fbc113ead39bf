"""Analyzer presets: ``preset=NAME`` expands to the registered options, explicit options win."""

from __future__ import annotations

import pytest

from headscope.analyzers.registry import ANALYZERS, register_analyzer, run_analyzer
from headscope.errors import HeadscopeError
from headscope.results import HeadScores


class _Task:
    name = "any"


@pytest.fixture
def echo_analyzer():
    seen: dict[str, object] = {}

    @register_analyzer("_echo_presets", summary="test", presets={"paper": {"eps": 1e-4, "k": 1}})
    def echo(model, task, eps: float = 1e-2, k: int = 5) -> HeadScores:
        seen.update(eps=eps, k=k)
        out = HeadScores.from_matrix([[0.0]], model="m", task="any", analyzer="_echo_presets", metric="x")
        out.provenance = {"options": {"eps": eps, "k": k}}
        return out

    yield seen
    ANALYZERS.pop("_echo_presets")


def test_preset_expands_and_explicit_options_win(echo_analyzer):
    res = run_analyzer("_echo_presets", None, _Task(), preset="paper", k=3)
    assert echo_analyzer == {"eps": 1e-4, "k": 3}
    assert res.provenance["preset"] == "paper"
    assert res.provenance["preset_options"] == {"eps": 1e-4}
    run_analyzer("_echo_presets", None, _Task())
    assert echo_analyzer == {"eps": 1e-2, "k": 5}


def test_unknown_preset_is_one_line_error(echo_analyzer):
    with pytest.raises(HeadscopeError, match="no preset 'papr'.*Did you mean 'paper'"):
        run_analyzer("_echo_presets", None, _Task(), preset="papr")


def test_preset_with_unknown_option_is_rejected_at_registration():
    with pytest.raises(TypeError, match="unknown options"):
        register_analyzer("_bad_presets", summary="x", presets={"paper": {"nope": 1}})(lambda model, task, eps=1: None)
    assert "_bad_presets" not in ANALYZERS
