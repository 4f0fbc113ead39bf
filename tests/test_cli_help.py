"""CLI help (issue 23 #10): --version, flags shown as flags, no RST markup in any --help."""

from __future__ import annotations

import pytest
import typer
from cli_harness import run_main

from headscope.cli.app import app
from headscope.version import __version__


def _paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        out += _paths(sub, (*prefix, name))
    return out


COMMANDS = _paths(typer.main.get_command(app))


def test_version(capsys) -> None:
    code, out, err = run_main(["--version"], capsys)
    assert code == 0 and out.strip() == f"headscope {__version__}", err


def test_every_command_is_listed() -> None:
    assert ("show",) in COMMANDS and ("circuit", "evaluate") in COMMANDS and len(COMMANDS) > 10


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "headscope")
def test_help_has_no_rst_and_shows_flags_as_flags(path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_main([*path, "--help"], capsys)
    assert code == 0, err
    assert "Usage" in out
    for bad in ("``", ":func:", ":class:", ":meth:", ":mod:", ":data:", "<bool>"):
        assert bad not in out, f"{bad!r} in `headscope {' '.join(path)} --help`"


def test_make_setup_is_offered_only_inside_the_repository(tmp_path, monkeypatch) -> None:
    from pathlib import Path

    from headscope.models.aliases import ALIASES

    alias = ALIASES["smollm2-135m"]
    monkeypatch.chdir(tmp_path)
    assert "make" not in alias.hint() and alias.hint().startswith("pip install")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert alias.hint().endswith("(or `make setup`)")


def test_offline_hub_model_is_not_answered_with_a_zoo_model(capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_main(["score", "-m", "gpt2"], capsys)
    assert code == 2 and "not available offline" in err
    assert "zoo-" not in err and len(err.strip().splitlines()) == 1
