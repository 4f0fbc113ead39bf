"""Run the headscope CLI in-process for a test: ``run_main(args, capsys) -> (exit code, stdout, stderr)``."""

from __future__ import annotations

from typing import Any


def run_main(args: list[str], capsys: Any) -> tuple[int, str, str]:
    """Call ``headscope.cli.app.main(args)``; a normal return is exit code 0."""
    from headscope.cli.app import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err
