"""Run many ``headscope`` CLI invocations (and a few API calls) in ONE fresh Python process.

    python tests/bad_inputs_driver.py CASES.json RESULTS.json

Used by ``tests/test_bad_inputs.py``: starting torch once instead of once per case keeps the
suite fast. Each case runs ``headscope.cli.app.main(argv)`` -- the console entry point itself --
in its own working directory, with stdout and stderr captured, and records the exit status
(``SystemExit.code``; 0 when ``main`` returns) and any exception that escaped ``main`` (which a
user would see as a traceback). API cases execute a snippet and record the exception it raised.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback


def run_cli(argv: list[str]) -> dict:
    from headscope.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code, escaped = 0, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - what escapes main() is a traceback for the user
            code, escaped = None, traceback.format_exc()
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "escaped": escaped}


def run_api(code: str) -> dict:
    out, err = io.StringIO(), io.StringIO()
    scope: dict = {}
    result = {"exc_type": None, "exc_mro": [], "message": None, "value": None}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(code, "<case>", "exec"), scope)  # noqa: S102 - the test's own snippets
            result["value"] = scope.get("RESULT")
        except BaseException as exc:  # noqa: BLE001
            result.update(exc_type=type(exc).__name__, exc_mro=[k.__name__ for k in type(exc).__mro__],
                          message=str(exc), traceback=traceback.format_exc())
    result.update(stdout=out.getvalue(), stderr=err.getvalue())
    return result


def main() -> None:
    cases = json.load(open(sys.argv[1]))
    results = {}
    for case in cases:
        os.chdir(case["cwd"])
        old = os.umask(int(case["umask"], 8)) if case.get("umask") else None
        t0 = time.perf_counter()
        try:
            results[case["id"]] = run_api(case["code"]) if case.get("code") else run_cli(case["argv"])
            results[case["id"]]["seconds"] = time.perf_counter() - t0
        finally:
            if old is not None:
                os.umask(old)
    with open(sys.argv[2], "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
