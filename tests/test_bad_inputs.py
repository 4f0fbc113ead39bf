"""Hostile inputs, as a new user would try them, through the CLI (issue 12).

Every case runs the ``headscope`` entry point on toy models and asserts:

- the exit code (2 for a user error, 130 on Ctrl-C, 143 on SIGTERM, 0 where the input is fine);
- for an error: exactly one line on stderr, ``error: ...`` naming the problem, and no traceback;
- that no file was written or clobbered outside its place: every case runs in its own sandbox
  directory whose files (names, sizes, modes, modification times, contents) are compared before
  and after; only the files a case is meant to write may change, and no temporary file remains.

The CLI cases run in one fresh Python process (``tests/bad_inputs_driver.py`` calls
``headscope.cli.app.main(argv)``, the console entry point, once per case) so that torch starts
once; the exit-code plumbing and signals (Ctrl-C, SIGTERM, ``&&`` chains) run as real
``python -m headscope`` subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from headscope.results import HeadScores

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "bad_inputs_driver.py"
TOY = "toy-gqa"  # 2 layers x 4 heads, d_model 32: the cheapest toy model


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HEADSCOPE_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false",
            "COLUMNS": "200", "PYTHONPATH": str(ROOT), "HF_DATASETS_CACHE": str(tmp / "hf-datasets-cache")}


# ----------------------------------------------------------------------------- inputs
def scores_file(path: Path, model: str = TOY, sha: str = "a" * 64, seed: int = 0, shape=(2, 4),
                value: float = 0.0) -> Path:
    """A small results file (no model needed) with a model identity in its provenance."""
    vals = np.arange(shape[0] * shape[1], dtype=float).reshape(shape) / 10 + value
    s = HeadScores.from_matrix(vals, model=model, task="induction", analyzer="pattern_scores", metric="induction",
                               provenance={"model": {"spec": model, "model_id": model, "weights_sha256": sha},
                                           "seed": seed, "time_utc": "2025-01-01T00:00:00+00:00"})
    path.parent.mkdir(parents=True, exist_ok=True)
    return s.to_parquet(path)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


RECIPE_HEAD = f"name: probe\nmodel: {TOY}\ntask: induction\ntask_params: {{n_prompts: 2, seq_len: 8}}\n"


def recipe(steps: str, extra: str = "") -> str:
    return RECIPE_HEAD + extra + "steps:\n" + steps


GOOD_ROWS = "clean,corrupted,answer,wrong\nMonday Tuesday A,Friday Tuesday A, B, C\nJanuary May A,March May A, D, E\n"


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One hostile input. ``argv`` runs the CLI; ``code`` (Python) runs an API call instead."""

    id: str
    argv: list[str] = field(default_factory=list)
    expect: int = 2
    message: str = ""  # a fragment the error line (or stdout for expect=0) must contain
    setup: Callable[[Path], None] | None = None
    writes: tuple[str, ...] = ()  # sandbox-relative paths (or prefixes ending in /) the case may write
    cwd: str = "."
    umask: str | None = None
    code: str = ""  # API case: a snippet that must raise HeadscopeError with a one-line message
    check: Callable[[Path, dict], None] | None = None  # extra assertions on the sandbox and result


def _lens_ckpt(box: Path, shared: Path) -> None:
    import shutil

    shutil.copytree(shared / "ckpt", box / "ckpt")


LENS_TRAIN = ["lens", "train", "--model", "toy-copying", "--heads", "1.1", "--steps", "2", "--seq-len", "16",
              "--n-train", "4", "--n-eval", "2", "--batch-tokens", "8", "--checkpoint-every", "1",
              "--checkpoint-dir", "ckpt", "--out", "lens.safetensors", "--lr", "0.01", "--seed", "0", "--param", "factored"]


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def _lens_resume(flag: str, value: str, message: str) -> Case:
    return Case(f"lens_resume_other_{flag.strip('-').replace('-', '_')}", _replace(LENS_TRAIN, flag, value) + ["--resume"],
                message=message, setup=lambda box: None)  # the checkpoint is copied in by the fixture


def _provenance_is_typed(box: Path, result: dict) -> None:
    import headscope as hs

    prov = hs.read_parquet(box / "r.parquet").provenance
    assert prov["task"]["n_prompts"] == 3 and type(prov["task"]["n_prompts"]) is int
    assert prov["options"]["exclude_bos"] is True


def _mode(expected: int) -> Callable[[Path, dict], None]:
    def check(box: Path, result: dict) -> None:
        assert (box / "r.parquet").stat().st_mode & 0o777 == expected, oct((box / "r.parquet").stat().st_mode)

    return check


def _sections(expected: int) -> Callable[[Path, dict], None]:
    def check(box: Path, result: dict) -> None:
        assert (box / "rep.html").read_text().count("<h2 id='r") == expected

    return check


def _recipe_ok(box: Path, result: dict) -> None:
    assert (box / "results" / "ok" / "patterns.parquet").is_file() and (box / "results" / "ok" / "report.html").is_file()


def _orphans(box: Path) -> None:
    runs = box / "runs"
    scores_file(runs / "r.parquet")
    (runs / ".r.parquet.ab12cd34.parquet").write_bytes((runs / "r.parquet").read_bytes())  # complete orphan (old name)
    (runs / ".r.parquet.zz99yy88.partial").write_bytes((runs / "r.parquet").read_bytes()[:300])  # half-written


def _head_positions_recorded(box: Path, result: dict) -> None:
    prov = json.loads((box / "ev.json").read_text())["provenance"]
    assert prov["options"]["head_positions"] == "1.1@END,0.3@PREV,0.3@PREV+1" and prov["options"]["nodes"] == "heads"
    assert prov["choices"]["head_positions"] == {"a1.h1": ["END"], "a0.h3": ["PREV", "PREV+1"]}


def _two_models(box: Path) -> None:
    scores_file(box / "runs" / "gqa.parquet", model=TOY, sha="a" * 64)
    scores_file(box / "runs" / "induction.parquet", model="toy-induction", sha="b" * 64, shape=(2, 2))


def _two_seeds(box: Path) -> None:
    scores_file(box / "runs" / "seed0.parquet", seed=0)
    scores_file(box / "runs" / "seed1.parquet", seed=1, value=0.05)


def _string_scores(box: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame({"model": [TOY] * 2, "task": ["t"] * 2, "analyzer": ["a"] * 2, "metric": ["m"] * 2,
                          "layer": [0, 1], "head": [0, 0], "score": ["high", "low"]})
    frame.to_parquet(box / "strings.parquet")


def _edges(box: Path, rows: bool = False) -> None:
    """A hand-made edge circuit on TOY (no model needed): a0.h3 -> m0 and a1.h1 -> logits in it,
    a0.h0 -> logits out; made on induction_contrast (3 prompts of 6 tokens). ``rows``: also a
    user_file task file."""
    import pandas as pd

    from headscope.results.edge_scores import EdgeScores

    table = EdgeScores(pd.DataFrame({"model": TOY, "task": "induction_contrast", "method": "hand",
                                     "sender": ["a0.h3", "a1.h1", "a0.h0"], "receiver": ["m0", "logits", "logits"],
                                     "receiver_input": ["in", "in", "in"], "score": [0.3, 0.2, 0.1],
                                     "circuit": [True, True, False]}))
    table.provenance = {"task": {"name": "induction_contrast", "n_prompts": 3, "seq_len": 6, "seed": 0}}
    table.to_parquet(box / "e.parquet")
    if rows:
        write(box / "rows.csv", GOOD_ROWS)


EVAL_HEADS = ["circuit", "evaluate", "e.parquet", "-o", "nodes=heads", "-o", "curve=false"]


TRACE = "import torch, headscope as hs\nm = hs.load_model('toy-gqa')\nhs.trace(m, {tokens})\n"

CASES: list[Case] = [
    # 1. recipes may not write outside their output directory
    Case("recipe_step_id_parent", ["run", "r.yaml", "--out-dir", "out", "--no-report"], message="not a plain name",
         cwd="a/b/c/work", setup=lambda b: write(b / "a/b/c/work/r.yaml", recipe(
             "  - {id: ../../../escaped_step, analyzer: pattern_scores}\n"))),
    Case("recipe_step_id_absolute", ["run", "r.yaml", "--out-dir", "out", "--no-report"], message="not a plain name",
         setup=lambda b: write(b / "r.yaml", recipe(f"  - {{id: '{b}/abs/escaped', analyzer: pattern_scores}}\n"))),
    Case("recipe_step_id_slash", ["run", "r.yaml", "--no-report"], message="not a plain name",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: sub/step, analyzer: pattern_scores}\n"))),
    Case("recipe_step_id_hidden", ["run", "r.yaml", "--no-report"], message="not a plain name",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: .hidden, analyzer: pattern_scores}\n"))),
    Case("recipe_outputs_dir_parent", ["run", "r.yaml", "--no-report"], message="outputs.dir", cwd="a/b/work",
         setup=lambda b: write(b / "a/b/work/r.yaml", recipe("  - {id: s, analyzer: pattern_scores}\n",
                                                              "outputs: {dir: ../../outside}\n"))),
    Case("recipe_outputs_dir_absolute", ["run", "r.yaml", "--no-report"], message="outputs.dir",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores}\n",
                                                    f"outputs: {{dir: '{b}/elsewhere'}}\n"))),
    Case("recipe_outputs_dir_home", ["run", "r.yaml", "--no-report"], message="outputs.dir",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores}\n",
                                                    "outputs: {dir: ~/headscope-escaped}\n"))),
    Case("recipe_outputs_unknown_key", ["run", "r.yaml"], message="outputs takes only 'dir'",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores}\n", "outputs: {file: x}\n"))),
    # 8. typed options in recipes
    Case("recipe_task_param_text", ["run", "r.yaml", "--out-dir", "out"], message="n_prompts='abc' must be an integer",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores, task_params: {n_prompts: abc}}\n"))),
    Case("recipe_task_param_fraction", ["run", "r.yaml", "--out-dir", "out"], message="n_prompts=2.5 must be an integer",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores, task_params: {n_prompts: 2.5}}\n"))),
    Case("recipe_task_param_bool", ["run", "r.yaml", "--out-dir", "out"], message="n_prompts=True must be an integer",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores, task_params: {n_prompts: true}}\n"))),
    Case("recipe_option_text", ["run", "r.yaml", "--out-dir", "out"], message="batch_size='many' must be an integer",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores, options: {batch_size: many}}\n"))),
    Case("recipe_quick_text", ["run", "r.yaml", "--out-dir", "out", "--quick"], message="seq_len='long' must be an integer",
         setup=lambda b: write(b / "r.yaml", recipe(
             "  - {id: s, analyzer: pattern_scores, quick: {task_params: {seq_len: long}}}\n"))),
    Case("recipe_context_lengths_text", ["run", "r.yaml", "--out-dir", "out"], message="context_lengths",
         setup=lambda b: write(b / "r.yaml", f"name: probe\nmodel: {TOY}\nsteps:\n"
                                             "  - {id: s, analyzer: retrieval_heads, task: needle, task_params: {context_lengths: abc}}\n")),
    Case("recipe_seed_text", ["run", "r.yaml", "--out-dir", "out"], message="seed='abc' must be an integer",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores, task_params: {seed: abc}}\n"))),
    Case("recipe_options_not_mapping", ["run", "r.yaml"], message="'options' must be a mapping",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores, options: [1, 2]}\n"))),
    Case("recipe_empty", ["run", "r.yaml"], message="top level must be a mapping", setup=lambda b: write(b / "r.yaml", "")),
    Case("recipe_list", ["run", "r.yaml"], message="top level must be a mapping", setup=lambda b: write(b / "r.yaml", "- a\n- b\n")),
    Case("recipe_bad_yaml", ["run", "r.yaml"], message="cannot parse", setup=lambda b: write(b / "r.yaml", "name: [unclosed\n")),
    Case("recipe_bad_toml", ["run", "r.toml"], message="cannot parse", setup=lambda b: write(b / "r.toml", "name = \n")),
    Case("recipe_missing", ["run", "nope.yaml"], message="no such recipe"),
    Case("recipe_wrong_suffix", ["run", "r.txt"], message="should end in", setup=lambda b: write(b / "r.txt", "name: x\n")),
    Case("recipe_ok", ["run", "r.yaml"], expect=0, message="1 step(s) ran", writes=("results/ok/",), check=_recipe_ok,
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: patterns, analyzer: pattern_scores}\n",
                                                    "outputs: {dir: results/ok}\n"))),
    # 8. typed -o options on the command line
    Case("score_n_prompts_text", ["score", "-m", TOY, "-o", "n_prompts=abc"], message="n_prompts='abc' must be an integer"),
    Case("score_n_prompts_fraction", ["score", "-m", TOY, "-o", "n_prompts=2.5"], message="n_prompts='2.5' must be an integer"),
    Case("score_n_prompts_bool", ["score", "-m", TOY, "-o", "n_prompts=true"], message="n_prompts='true' must be an integer"),
    Case("score_seed_option_text", ["score", "-m", TOY, "-o", "seed=abc"], message="seed='abc' must be an integer"),
    Case("score_seed_flag_text", ["score", "-m", TOY, "--seed", "abc"], message="--seed"),
    Case("score_context_lengths_text", ["score", "-m", TOY, "-t", "needle", "-o", "context_lengths=abc"],
         message="context_lengths"),
    Case("score_context_lengths_list_text", ["score", "-m", TOY, "-t", "needle", "-o", "context_lengths=256,x"],
         message="context_lengths"),
    Case("score_templates_text", ["score", "-m", TOY, "-t", "ioi", "-o", "templates=1,x"], message="templates='1,x'"),
    Case("score_analyzer_option_text", ["score", "-m", TOY, "-o", "batch_size=many"], message="batch_size='many' must be an integer"),
    Case("score_analyzer_bool_text", ["score", "-m", TOY, "-o", "exclude_bos=maybe"], message="exclude_bos='maybe' must be true/false"),
    Case("score_unknown_option", ["score", "-m", TOY, "-o", "n_promts=2"], message="Did you mean 'n_prompts'"),
    Case("score_option_no_value", ["score", "-m", TOY, "-o", "n_prompts"], message="not KEY=VALUE"),
    Case("score_option_no_key", ["score", "-m", TOY, "-o", "=3"], message="has no KEY"),
    Case("score_preset_unknown", ["score", "-m", TOY, "-o", "preset=paper"], message="unknown option 'preset'"),
    Case("score_typed_ok", ["score", "-m", TOY, "-o", "n_prompts=3", "-o", "seq_len=8", "-o", "exclude_bos=true",
                            "--out", "r.parquet"], expect=0, message="wrote r.parquet", writes=("r.parquet",),
         check=_provenance_is_typed),
    # 10. messages
    Case("score_top_negative", ["score", "-m", TOY, "--top", "-5"], message="--top"),
    Case("score_context_too_long", ["score", "-m", TOY, "-o", "seq_len=45", "-o", "n_repeats=3"], message="-o seq_len"),
    Case("score_out_wrong_suffix", ["score", "-m", TOY, "--out", "r.csv"], message="should end in .parquet"),
    Case("score_out_is_directory", ["score", "-m", TOY, "--out", "d.parquet"], message="is a directory",
         setup=lambda b: (b / "d.parquet").mkdir()),
    Case("score_out_under_a_file", ["score", "-m", TOY, "--out", "f/r.parquet"], message="is a file",
         setup=lambda b: write(b / "f", "x")),
    Case("score_unknown_model", ["score", "-m", "toy-gqq"], message="Did you mean 'toy-gqa'"),
    Case("score_unknown_task", ["score", "-m", TOY, "-t", "inductoin"], message="Did you mean 'induction'"),
    # a task without the contract a method needs: refused before the model loads (issue: these were exit 1)
    Case("circuit_eap_on_safety", ["circuit", "-m", TOY, "-t", "safety", "--method", "eap"],
         message="circuit method 'eap' needs a contrastive task (clean/corrupted prompts); task 'safety' is not one"),
    Case("circuit_on_mcqa", ["circuit", "-m", TOY, "-t", "mcqa"],
         message="circuit method 'eap_ig' needs a contrastive task (clean/corrupted prompts); task 'mcqa' is not one"),
    Case("ablate_on_mcqa", ["ablate", "-m", TOY, "-t", "mcqa", "--heads", "1.0"],
         message="`headscope ablate` needs a contrastive task (clean/corrupted prompts); task 'mcqa' is not one"),
    Case("score_wrong_analyzer_for_task", ["score", "-m", TOY, "-a", "select_and_copy"], message="needs a multiple-choice task; task 'induction' is not one. Tasks that fit: mcqa"),
    # 3. degenerate rows
    Case("user_file_answer_is_wrong", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.csv"], message="row 1",
         setup=lambda b: write(b / "rows.csv", GOOD_ROWS.replace(" D, E", " D, D"))),
    Case("user_file_clean_is_corrupted", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.csv"], message="row 0",
         setup=lambda b: write(b / "rows.csv", GOOD_ROWS.replace("Friday Tuesday A", "Monday Tuesday A"))),
    Case("user_file_answer_not_in_vocabulary", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.csv"],
         message="not in toy-gqa's vocabulary", setup=lambda b: write(b / "rows.csv", GOOD_ROWS.replace(" B, C", " zebra, C"))),
    Case("user_file_equal_metrics", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.csv"], message="same mean metric",
         setup=lambda b: write(b / "rows.csv", "clean,corrupted,answer,wrong\nMonday Tuesday A,Friday Tuesday A, B, C\n"
                                               "Monday Tuesday A,Friday Tuesday A, C, B\n")),
    Case("user_file_equal_metrics_path_patching", ["score", "-m", TOY, "-t", "user_file", "-a", "path_patching",
                                                   "-o", "path=rows.csv"], message="same mean metric",
         setup=lambda b: write(b / "rows.csv", "clean,corrupted,answer,wrong\nMonday Tuesday A,Friday Tuesday A, B, C\n"
                                               "Monday Tuesday A,Friday Tuesday A, C, B\n")),
    Case("user_file_equal_metrics_attribution", ["score", "-m", TOY, "-t", "user_file", "-a", "attribution_patching",
                                                 "-o", "path=rows.csv"], message="same mean metric",
         setup=lambda b: write(b / "rows.csv", "clean,corrupted,answer,wrong\nMonday Tuesday A,Friday Tuesday A, B, C\n"
                                               "Monday Tuesday A,Friday Tuesday A, C, B\n")),
    # 9. / 10. task files
    Case("user_file_empty_json", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.json"], message="is empty",
         setup=lambda b: write(b / "rows.json", "")),
    Case("user_file_malformed_json", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.json"],
         message="not valid JSON (line 2", setup=lambda b: write(b / "rows.json", '[{"clean": "A",\n "corrupted": }]')),
    Case("user_file_json_not_rows", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.json"],
         message="JSON list of objects", setup=lambda b: write(b / "rows.json", "[1, 2, 3]")),
    Case("user_file_bad_jsonl_line", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.jsonl"], message="line 2",
         setup=lambda b: write(b / "rows.jsonl", '{"clean": "A", "corrupted": "B", "answer": " C", "wrong": " D"}\n{oops\n')),
    Case("user_file_empty_csv", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.csv"], message="is empty",
         setup=lambda b: write(b / "rows.csv", "\n")),
    Case("user_file_unbalanced_quote", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.csv"],
         message="unbalanced quote", setup=lambda b: write(b / "rows.csv", GOOD_ROWS.replace("Monday Tuesday A,", '"Monday Tuesday A,'))),
    Case("user_file_row_too_wide", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.csv"], message="line 3 has 5 fields",
         setup=lambda b: write(b / "rows.csv", GOOD_ROWS.replace(" D, E", " D, E, F"))),
    Case("user_file_header_only", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.csv"], message="no rows",
         setup=lambda b: write(b / "rows.csv", "clean,corrupted,answer,wrong\n")),
    Case("user_file_missing_column", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.csv"], message="missing column(s) wrong",
         setup=lambda b: write(b / "rows.csv", "clean,corrupted,answer\nA,B, C\n")),
    Case("user_file_missing", ["score", "-m", TOY, "-t", "user_file", "-o", "path=nope.csv"], message="does not exist"),
    Case("user_file_wrong_suffix", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.txt"], message="must end in",
         setup=lambda b: write(b / "rows.txt", "x")),
    Case("user_file_not_utf8", ["score", "-m", TOY, "-t", "user_file", "-o", "path=rows.csv"], message="not UTF-8",
         setup=lambda b: write(b / "rows.csv", b"clean,corrupted,answer,wrong\n\xff\xfe,a,b,c\n")),
    Case("mcqa_non_json", ["score", "-m", TOY, "-t", "mcqa", "-o", "path=q.json"], message="is not JSON",
         setup=lambda b: write(b / "q.json", "Question: what?\nA. x\n")),
    Case("mcqa_answer_not_index", ["score", "-m", TOY, "-t", "mcqa", "-o", "path=q.json"], message="answer an integer",
         setup=lambda b: write(b / "q.json", '[{"question": "q", "options": ["a", "b"], "answer": "b"}]')),
    # 4. / 7. show and report on directories, temporary files
    Case("show_directory_two_models", ["show", "runs"], message="different runs", setup=_two_models),
    Case("show_directory_two_models_mixed", ["show", "runs", "--mixed"], expect=0, message="top heads across 2 runs",
         setup=_two_models),
    Case("show_directory_per_run", ["show", "runs", "--per-run"], expect=0, message="top heads: induction", setup=_two_models),
    Case("show_directory_two_seeds", ["show", "runs", "--top", "3"], expect=0, message="top heads across 2 runs",
         setup=_two_seeds),
    Case("show_directory_skips_temporary_files", ["show", "runs"], expect=0, message="provenance", setup=_orphans),
    Case("show_temporary_file", ["show", "runs/.r.parquet.zz99yy88.partial"], message="temporary file", setup=_orphans),
    Case("show_empty_directory", ["show", "runs"], message="no results files", setup=lambda b: (b / "runs").mkdir()),
    Case("show_string_scores", ["show", "strings.parquet"], message="column 'score' is", setup=_string_scores),
    Case("show_not_parquet", ["show", "x.parquet"], message="not a readable Parquet", setup=lambda b: write(b / "x.parquet", "hi")),
    Case("show_missing", ["show", "nope.parquet"], message="no such results file"),
    Case("show_top_negative", ["show", "r.parquet", "--top", "-5"], message="--top",
         setup=lambda b: scores_file(b / "r.parquet")),
    Case("show_unknown_metric", ["show", "r.parquet", "--metric", "inductoin"], message="Did you mean 'induction'",
         setup=lambda b: scores_file(b / "r.parquet")),
    Case("report_directory_two_models", ["report", "runs", "--out", "rep.html"], expect=0, message="2 result(s)",
         setup=_two_models, writes=("rep.html",), check=_sections(2)),
    Case("report_directory_skips_temporary_files", ["report", "runs", "--out", "rep.html"], expect=0, message="1 result(s)",
         setup=_orphans, writes=("rep.html",), check=_sections(1)),
    Case("report_empty_directory", ["report", "runs"], message="no results files", setup=lambda b: (b / "runs").mkdir()),
    Case("report_out_wrong_suffix", ["report", "r.parquet", "--out", "rep.pdf"], message="should end in .html",
         setup=lambda b: scores_file(b / "r.parquet")),
    Case("report_top_zero", ["report", "r.parquet", "--top", "0"], message="--top", setup=lambda b: scores_file(b / "r.parquet")),
    # 10. compare
    Case("compare_top_k_not_below_heads", ["compare", "a.parquet", "b.parquet", "--top", "100"], expect=0,
         message="overlap is n/a", setup=lambda b: (scores_file(b / "a.parquet"), scores_file(b / "b.parquet", value=0.1))),
    Case("compare_missing", ["compare", "a.parquet", "nope.parquet"], message="no such results file",
         setup=lambda b: scores_file(b / "a.parquet")),
    Case("compare_top_zero", ["compare", "a.parquet", "a.parquet", "--top", "0"], message="--top",
         setup=lambda b: scores_file(b / "a.parquet")),
    # 5. / 9. / 10. lenses
    Case("lens_file_garbage", ["lens", "decode", "-m", "toy-copying", "--heads", "1.1", "--prompt", "A B", "--lens", "l.safetensors"],
         message="not a readable lens file", setup=lambda b: write(b / "l.safetensors", os.urandom(256))),
    Case("lens_file_truncated", ["lens", "decode", "-m", "toy-copying", "--heads", "1.1", "--prompt", "A B", "--lens", "l.safetensors"],
         message="not a readable lens file"),  # the fixture writes half of a real lens
    Case("lens_file_not_a_lens", ["lens", "decode", "-m", "toy-copying", "--heads", "1.1", "--prompt", "A B", "--lens", "l.safetensors"],
         message="not a headscope lens file"),  # the fixture writes a plain safetensors file
    Case("lens_file_missing", ["lens", "decode", "-m", "toy-copying", "--heads", "1.1", "--prompt", "A B", "--lens", "no.safetensors"],
         message="does not exist"),
    Case("lens_decode_bad_positions", ["lens", "decode", "-m", "toy-copying", "--heads", "1.1", "--prompt", "A", "--positions", "x"],
         message="bad --positions"),
    Case("lens_decode_bad_heads", ["lens", "decode", "-m", "toy-copying", "--heads", "1:1", "--prompt", "A"],
         message="cannot parse head '1:1'"),
    Case("lens_train_heads_syntax", _replace(LENS_TRAIN, "--heads", "one.two"), message="cannot parse head"),
    Case("lens_train_heads_out_of_range", _replace(LENS_TRAIN, "--heads", "9.0"), message="layer 9"),
    Case("lens_train_checkpoint_dir_is_file", LENS_TRAIN, message="is a file, not a directory",
         setup=lambda b: write(b / "ckpt", "x")),
    Case("lens_train_resume_without_dir", [a for a in LENS_TRAIN if a not in ("--checkpoint-dir", "ckpt")] + ["--resume"],
         message="--resume needs --checkpoint-dir"),
    Case("lens_train_resume_missing_dir", _replace(LENS_TRAIN, "--checkpoint-dir", "none") + ["--resume"],
         message="does not exist"),
    _lens_resume("--lr", "0.5", "lr="),
    _lens_resume("--seed", "7", "seed="),
    _lens_resume("--batch-tokens", "4", "batch_tokens="),
    _lens_resume("--seq-len", "12", "corpus="),
    _lens_resume("--param", "full", "param="),
    _lens_resume("--heads", "1.0", "heads="),
    _lens_resume("--model", "toy-successor", "weights_sha256="),
    _lens_resume("--steps", "1", "past --steps 1"),
    Case("lens_resume_same_settings", _replace(LENS_TRAIN, "--steps", "3") + ["--resume"], expect=0,
         message="wrote lens.safetensors", writes=("ckpt/lens-step3.safetensors", "lens.safetensors")),
    Case("lens_operations_bad_heads", ["lens", "operations", "-m", "toy-copying", "--heads", "x"], message="cannot parse head"),
    # circuit evaluate -o head_positions (issue 22, item 5) and verified's threshold_rule (item 1)
    Case("evaluate_head_positions_unknown_head", [*EVAL_HEADS, "-o", "head_positions=5.0@END"], setup=_edges,
         message="head_positions lists head 5.0, which toy-gqa does not have (layers 0..1, heads 0..3 per layer)"),
    Case("evaluate_head_positions_head_not_in_circuit", [*EVAL_HEADS, "-o", "head_positions=0.0@END"], setup=_edges,
         message="head_positions lists head 0.0 (a0.h0), which is not a head of the circuit (its heads: a0.h3, a1.h1)"),
    Case("evaluate_head_positions_unknown_position", [*EVAL_HEADS, "-o", "head_positions=1.1@END,1.1@PERV"], setup=_edges,
         message="unknown position 'PERV' in head_positions 1.1@PERV. Did you mean 'PREV'? Task 'induction_contrast' names PREV, END"),
    Case("evaluate_head_positions_task_without_named_positions",
         [*EVAL_HEADS, "--task", "user_file", "-o", "path=rows.csv", "-o", "head_positions=1.1@S2"],
         setup=lambda b: _edges(b, rows=True), message="head_positions 1.1@S2: task 'user_file' has no named positions but END"),
    Case("evaluate_head_positions_outside_prompt", [*EVAL_HEADS, "-o", "head_positions=1.1@END+3"], setup=_edges,
         message="head_positions 1.1@END+3 falls outside prompt 0"),
    Case("evaluate_head_positions_with_components",  # checked before the (missing) model would load
         ["circuit", "evaluate", "e.parquet", "-m", "nope-model-never-loaded", "-o", "head_positions=1.1@END"], setup=_edges,
         message="head_positions needs -o nodes=heads"),
    Case("evaluate_head_positions_syntax", [*EVAL_HEADS, "-m", "nope-model-never-loaded", "-o", "head_positions=1.1"],
         setup=_edges, message="cannot parse '1.1' in -o head_positions: write HEAD@POSITION entries"),
    Case("evaluate_head_positions_ok", [*EVAL_HEADS, "-o", "head_positions=1.1@END,0.3@PREV,0.3@PREV+1", "--out", "ev.json"],
         setup=_edges, expect=0, message="head positions (kept only there in F(C\\K)): a1.h1@END, a0.h3@PREV, a0.h3@PREV+1",
         writes=("ev.json",), check=_head_positions_recorded),
    Case("verified_unknown_threshold_rule", ["circuit", "-m", TOY, "-t", "induction_contrast", "--method", "verified",
                                             "-o", "n_prompts=2", "-o", "seq_len=6", "-o", "threshold_rule=foo"],
         message="threshold_rule must be one of signed, abs; got 'foo'."),
    # ablate
    Case("ablate_heads_syntax", ["ablate", "-m", TOY, "-t", "ioi", "--heads", "9-6"], message="cannot parse head"),
    Case("ablate_heads_out_of_range", ["ablate", "-m", TOY, "-t", "induction_contrast", "--heads", "5.0"], message="layer 5"),
    Case("ablate_option_text", ["ablate", "-m", TOY, "-t", "ioi", "--heads", "1.0", "-o", "n_prompts=abc"],
         message="n_prompts='abc' must be an integer"),
    Case("ablate_unknown_kind", ["ablate", "-m", TOY, "--heads", "1.0", "--kind", "zeroo"], message="Did you mean 'zero'"),
    # other hostile inputs
    Case("score_plot_wrong_suffix", ["score", "-m", TOY, "--plot", "r.png"], message="should end in .html"),
    Case("score_kv_policy_wrong_suffix", ["score", "-m", TOY, "-a", "echo_induction", "--export-kv-policy", "k.txt"],
         message="should end in .json"),
    Case("score_kv_fraction_bad", ["score", "-m", TOY, "-a", "echo_induction", "--export-kv-policy", "k.json",
                                   "--kv-fraction", "echo=2"], message="bad --kv-fraction"),
    Case("score_unknown_device", ["score", "-m", TOY, "--device", "banana"], message="unknown device 'banana'"),
    Case("score_unknown_dtype", ["score", "-m", TOY, "--dtype", "float8"], message="unknown dtype 'float8'"),
    Case("score_unknown_flag", ["score", "--bogus"], message="No such option: --bogus"),
    Case("unknown_command", ["scroe"], message="Did you mean 'score'"),
    Case("score_missing_gguf", ["score", "-m", "nope.gguf"], message="no such file"),
    Case("score_model_directory_without_config", ["score", "-m", "adir"], message="has no config.json",
         setup=lambda b: (b / "adir").mkdir()),
    Case("score_n_prompts_zero", ["score", "-m", TOY, "-o", "n_prompts=0"], message="n_prompts >= 1"),
    Case("score_seq_len_huge", ["score", "-m", TOY, "-o", "seq_len=100000"], message="seq_len=49 or less"),
    Case("score_prepend_bos_text", ["score", "-m", TOY, "-o", "prepend_bos=maybe"], message="prepend_bos='maybe'"),
    Case("score_unknown_pattern", ["score", "-m", TOY, "-o", "patterns=foo"], message="unknown pattern 'foo'"),
    Case("score_ioi_template_out_of_range", ["score", "-m", TOY, "-t", "ioi", "-o", "templates=[99]"], message="numbered 0..5"),
    Case("score_mcqa_n_val_too_big", ["score", "-m", TOY, "-t", "mcqa", "-o", "n_val=1000"], message="n_val must be between"),
    Case("score_needle_depth_out_of_range", ["score", "-m", TOY, "-t", "needle", "-o", "depths=2"], message="depths must lie in"),
    Case("patching_unknown_act", ["score", "-m", TOY, "-t", "induction_contrast", "-a", "activation_patching", "-o", "act=w"],
         message="unknown act 'w'"),
    Case("patching_layer_out_of_range", ["score", "-m", TOY, "-t", "induction_contrast", "-a", "activation_patching",
                                         "-o", "layers=[7]"], message="layers 7 is out of range"),
    Case("path_patching_sender_layer_out_of_range", ["score", "-m", TOY, "-t", "induction_contrast", "-a", "path_patching",
                                                     "-o", "sender_layers=5"], message="sender_layers 5 is out of range"),
    Case("patching_unknown_positions", ["score", "-m", TOY, "-t", "induction_contrast", "-a", "activation_patching",
                                        "-o", "positions=middle"], message="positions must be"),
    Case("path_patching_receiver_out_of_range", ["score", "-m", TOY, "-t", "induction_contrast", "-a", "path_patching",
                                                 "-o", "receivers=9.9:q"], message="layer 9 is out of range"),
    Case("relation_unknown", ["score", "-m", TOY, "-t", "relation", "-a", "maps", "-o", "relation=foo"],
         message="unknown relation 'foo'"),
    Case("relation_file_not_json", ["score", "-m", TOY, "-t", "relation", "-a", "maps", "-o", "path=pairs.json"],
         message="is not JSON", setup=lambda b: write(b / "pairs.json", "Paris -> France\n")),
    Case("score_heads_option_syntax", ["score", "-m", "nope-model-never-loaded", "-t", "safety", "-a", "ships", "-o", "heads=x.y"],
         message="cannot parse head 'x.y' in -o heads"),  # checked before the (missing) model would load
    Case("safety_request_file_missing", ["score", "-m", "toy-refusal", "-t", "safety", "-o", "source=nope.json"],
         message="does not exist"),
    Case("safety_request_file_not_json", ["score", "-m", "toy-refusal", "-t", "safety", "-o", "source=req.json"],
         message="is not JSON (line 1", setup=lambda b: write(b / "req.json", "{requests: [oops]}")),
    Case("safety_request_jsonl_bad_line", ["score", "-m", "toy-refusal", "-t", "safety", "-o", "source=req.jsonl"],
         message="line 2 is not valid JSON", setup=lambda b: write(b / "req.jsonl", '{"prompt": "hi"}\n{oops\n')),
    Case("user_file_is_directory", ["score", "-m", TOY, "-t", "user_file", "-o", "path=adir"], message="is a directory",
         setup=lambda b: (b / "adir").mkdir()),
    Case("compare_csv_wrong_suffix", ["compare", "a.parquet", "a.parquet", "--csv", "x.txt"], message="should end in .csv",
         setup=lambda b: scores_file(b / "a.parquet")),
    Case("report_not_a_result", ["report", "other.parquet"], message="not a headscope result",
         setup=lambda b: __import__("pandas").DataFrame({"a": [1]}).to_parquet(b / "other.parquet")),
    Case("lens_decode_k_zero", ["lens", "decode", "-m", "toy-copying", "--heads", "1.1", "--prompt", "A", "--k", "0"],
         message="--k"),
    Case("lens_train_negative_steps", _replace(LENS_TRAIN, "--steps", "-1"), message="--steps"),
    Case("lens_train_zero_lr", _replace(LENS_TRAIN, "--lr", "0"), message="lr must be a positive number"),
    Case("lens_train_nan_lr", _replace(LENS_TRAIN, "--lr", "nan"), message="lr must be a positive number"),
    Case("lens_train_missing_corpus", LENS_TRAIN + ["--corpus", "nope.txt"], message="corpus file nope.txt does not exist"),
    Case("recipe_unknown_figure_kind", ["run", "r.yaml"], message="figure kind 'pie'",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores}\n", "figures: [{kind: pie}]\n"))),
    Case("recipe_figures_not_mappings", ["run", "r.yaml"], message="'figures' must be a list of mappings",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores}\n", "figures: [1, 2]\n"))),
    Case("recipe_steps_not_list", ["run", "r.yaml"], message="'steps' must be a non-empty list",
         setup=lambda b: write(b / "r.yaml", RECIPE_HEAD + "steps: {a: 1}\n")),
    Case("recipe_classify_not_rules", ["run", "r.yaml"], message="'classify' must be a list",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, classify: yes}\n"))),
    Case("recipe_unknown_device", ["run", "r.yaml"], message="unknown device 'gpu0'",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores}\n", "device: gpu0\n"))),
    Case("recipe_heads_from_later_step", ["run", "r.yaml"], message="is not an earlier step",
         setup=lambda b: write(b / "r.yaml", recipe("  - {id: s, analyzer: pattern_scores, options: {patterns: {heads_from: t}}}\n"))),
    # 6. permissions: follow the umask for new files, keep an existing file's mode
    Case("mode_new_file_umask_022", ["score", "-m", TOY, "-o", "n_prompts=1", "-o", "seq_len=4", "--out", "r.parquet"],
         expect=0, message="wrote", umask="022", writes=("r.parquet",), check=_mode(0o644)),
    Case("mode_new_file_umask_002", ["score", "-m", TOY, "-o", "n_prompts=1", "-o", "seq_len=4", "--out", "r.parquet"],
         expect=0, message="wrote", umask="002", writes=("r.parquet",), check=_mode(0o664)),
    Case("mode_new_file_umask_077", ["score", "-m", TOY, "-o", "n_prompts=1", "-o", "seq_len=4", "--out", "r.parquet"],
         expect=0, message="wrote", umask="077", writes=("r.parquet",), check=_mode(0o600)),
    Case("mode_existing_file_kept", ["score", "-m", TOY, "-o", "n_prompts=1", "-o", "seq_len=4", "--out", "r.parquet"],
         expect=0, message="wrote", umask="077", writes=("r.parquet",), check=_mode(0o640),
         setup=lambda b: (scores_file(b / "r.parquet"), os.chmod(b / "r.parquet", 0o640))),
    # 10. sharded sweeps (issue 14) and the needle task's user files
    Case("shard_not_i_of_n", ["score", "-m", TOY, "--shard", "2/2"], message="I must lie in 0..N-1"),
    Case("shard_unshardable_analyzer", ["score", "-m", TOY, "--shard", "0/2", "--out", "r.parquet"],
         message="cannot be split into shards"),
    Case("merge_not_a_part", ["merge", "r.parquet", "--out", "m.parquet"], message="is not a shard part",
         setup=lambda b: scores_file(b / "r.parquet")),
    Case("needle_missing_haystack", ["score", "-m", TOY, "-t", "needle", "-o", "haystack=nope.txt"],
         message="haystack file nope.txt does not exist"),
    # 9. Python API: one-line HeadscopeError, never an internal error
    Case("api_trace_float_tokens", code=TRACE.format(tokens="torch.tensor([[1.0, 2.0]])"), message="integer token ids"),
    Case("api_trace_bool_tokens", code=TRACE.format(tokens="torch.tensor([[True, False]])"), message="integer token ids"),
    Case("api_trace_list_tokens", code=TRACE.format(tokens="[[1, 2, 3]]"), message="must be a tensor, not list"),
    Case("api_trace_str_tokens", code=TRACE.format(tokens="'Monday Tuesday'"), message="must be a tensor, not str"),
    Case("api_trace_token_out_of_vocabulary", code=TRACE.format(tokens="torch.tensor([[1, 100000]])"),
         message="outside toy-gqa's vocabulary"),
    # keyword task parameters are routed as -o routes them (issue 23); given beside task_params=,
    # one goes there
    Case("api_score_task_parameter_beside_task_params",
         code="import headscope as hs\nhs.score('toy-gqa', 'induction', task_params={'seq_len': 8}, n_prompts=4)",
         message="task_params={'n_prompts': 4}"),
    Case("api_score_misspelled_keyword", code="import headscope as hs\nhs.score('toy-gqa', 'induction', n_prompt=4)",
         message="unknown option 'n_prompt'. Did you mean 'n_prompts'"),
    Case("api_make_task_bad_type", code="import headscope as hs\nhs.make_task('induction', n_prompts='many')",
         message="n_prompts='many' must be an integer"),
    Case("api_read_parquet_directory", code="import headscope as hs\nhs.read_parquet('runs')", message="is a directory",
         setup=_orphans),
    Case("api_read_runs_skips_temporary_files", expect=0, setup=_orphans,
         code="from headscope.report import read_runs\nRESULT = [len(read_runs('runs')), sorted(set(read_runs('runs')['run']))]"),
]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "duplicate case ids"


# ----------------------------------------------------------------------------- sandbox bookkeeping
def snapshot(box: Path) -> dict[str, tuple]:
    """Every file and directory below ``box``: kind, size, mode, mtime and a content hash."""
    out = {}
    for p in sorted(box.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(box))
        if p.is_dir():
            out[rel] = ("dir", st.st_mode)
        else:
            out[rel] = ("file", st.st_size, st.st_mode, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def allowed(rel: str, writes: tuple[str, ...]) -> bool:
    return any(rel == w or (w.endswith("/") and (rel + "/").startswith(w)) or w.startswith(rel + "/") for w in writes)


def _shared_lens(shared: Path) -> None:
    """A real trained lens and its checkpoints (toy-copying, 2 steps), for the lens cases."""
    from headscope.cli.app import main

    cwd = os.getcwd()
    os.chdir(shared)
    try:
        main(LENS_TRAIN)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, started):
    """Set every case up in its own sandbox, run them all in one driver process, and return
    ``(results, before, after, sandbox root, seconds)``."""
    root = tmp_path_factory.mktemp("bad_inputs")
    shared = root / "_shared"
    shared.mkdir()
    _shared_lens(shared)
    lens_bytes = (shared / "lens.safetensors").read_bytes()
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(shared / "plain.safetensors"), metadata={"format": "other"})
    payload, before = [], {}
    for case in CASES:
        box = root / case.id
        box.mkdir()
        if case.setup is not None:
            case.setup(box)
        if case.id.startswith("lens_resume"):
            _lens_ckpt(box, shared)
        if case.id == "lens_file_truncated":
            write(box / "l.safetensors", lens_bytes[: len(lens_bytes) // 2])
        if case.id == "lens_file_not_a_lens":
            write(box / "l.safetensors", (shared / "plain.safetensors").read_bytes())
        cwd = box / case.cwd
        cwd.mkdir(parents=True, exist_ok=True)
        before[case.id] = snapshot(box)
        payload.append({"id": case.id, "argv": case.argv, "code": case.code, "cwd": str(cwd), "umask": case.umask})
    (root / "cases.json").write_text(json.dumps(payload))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(DRIVER), str(root / "cases.json"), str(root / "results.json")],
                          env=_env(root), capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    after = {case.id: snapshot(root / case.id) for case in CASES}
    return results, before, after, root, seconds


@pytest.mark.parametrize("case_id", list(CASES_BY_ID))
def test_hostile_input(case_id, outcomes):
    results, before, after, root, _ = outcomes
    case, got, box = CASES_BY_ID[case_id], results[case_id], root / case_id
    if case.code:  # API case
        if case.expect == 0:
            assert got["exc_type"] is None, got.get("traceback")
        else:
            assert "HeadscopeError" in got["exc_mro"], got.get("traceback")
            assert "\n" not in got["message"] and case.message in got["message"], got["message"]
    else:
        assert got["escaped"] is None, got["escaped"]  # nothing escaped main(): no traceback
        assert got["code"] == case.expect, (got["code"], got["stderr"][-2000:])
        err = [line for line in got["stderr"].splitlines() if line.strip()]
        if case.expect == 2:
            assert len(err) == 1 and err[0].startswith("error: "), got["stderr"]
            assert case.message in err[0], err[0]
            assert "Traceback" not in got["stderr"] and "internal error" not in err[0]
        else:
            assert err == [], got["stderr"]
            assert case.message in got["stdout"], got["stdout"][-2000:]
    old, new = before[case_id], after[case_id]
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    stray = [k for k in changed if not allowed(k, case.writes)]
    assert stray == [], f"written or clobbered outside its place: {stray}"
    assert not [k for k in new if k.endswith(".partial") and k not in old], "temporary file left behind"
    if case.check is not None:
        case.check(box, got)


def test_recipe_escape_wrote_nothing_anywhere(outcomes):
    """The escaping recipe ids and dirs left no file anywhere below the sandbox root."""
    _, _, _, root, _ = outcomes
    assert not list(root.rglob("escaped*")) and not list(root.rglob("outside")) and not list(root.rglob("elsewhere"))
    assert not (Path.home() / "headscope-escaped").exists()


def test_read_runs_counts_each_file_once(outcomes):
    results, *_ = outcomes
    n_rows, runs = results["api_read_runs_skips_temporary_files"]["value"]
    assert n_rows == 2 * 4 and runs == ["r"]  # one 2 x 4 result, neither orphan


def test_user_file_cache_follows_content(tmp_path, monkeypatch):
    """A task file rewritten in place with the same size and modification time is re-read."""
    import datasets

    from headscope.tasks.user_file import read_rows

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    path = write(tmp_path / "rows.csv", GOOD_ROWS)
    stamp = path.stat().st_mtime_ns
    assert read_rows(path)["answer"] == [" B", " D"]
    write(path, GOOD_ROWS.replace(" B, C", " C, B"))  # same size
    os.utime(path, ns=(stamp, stamp))
    assert path.stat().st_size == len(GOOD_ROWS) and path.stat().st_mtime_ns == stamp
    assert read_rows(path)["answer"] == [" C", " D"]


# ----------------------------------------------------------------------------- real processes
def _interrupt(args: list[str], cwd: Path, env: dict, after: str, sig: int) -> tuple[int, str, str]:
    """Start the CLI, wait until stdout shows ``after``, send ``sig``; return (code, stdout, stderr)."""
    # restore SIGINT's default in the child, as a foreground terminal process has it: a shell starts
    # background jobs (`cmd &`, e.g. a CI runner's) with SIGINT ignored, and a child inherits that
    proc = subprocess.Popen([sys.executable, "-u", "-m", "headscope", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    deadline = time.monotonic() + 600  # a loaded CI machine starts Python and torch slowly
    while after not in seen:
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never saw {after!r}: {seen[-2000:]} {proc.stderr.read()[-2000:]}")
        seen += line
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, seen + out, err


# "slow" = tens of seconds of work even on a fast machine, so the signal sent 0.5 s after the
# marker line always lands mid-run (400 prompts of 16 tokens could finish first: a flaky race)
SLOW_SCORE = ["score", "-m", TOY, "-o", "n_prompts=20000", "-o", "seq_len=32", "--out", "r.parquet"]
SLOW_RECIPE = (f"name: slow\nmodel: {TOY}\ntask: induction\nsteps:\n"
               "  - {id: quick, analyzer: pattern_scores, task_params: {n_prompts: 2, seq_len: 8}}\n"
               "  - {id: slow, analyzer: pattern_scores, task_params: {n_prompts: 20000, seq_len: 32}}\n")


def _user_error(box: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "headscope", "score", "-m", TOY, "-o", "n_prompts=abc"], cwd=box,
                          env=_env(box), capture_output=True, text=True, timeout=300)
    return {"code": done.returncode, "err": done.stderr}


def _and_chain(box: Path) -> dict:
    done = subprocess.run(["bash", "-c", f"{sys.executable} -m headscope show nope.parquet && touch ran"], cwd=box,
                          env=_env(box), capture_output=True, text=True, timeout=300)
    return {"code": done.returncode, "err": done.stderr}


def _signal_score(sig: int) -> Callable[[Path], dict]:
    def run(box: Path) -> dict:
        code, out, err = _interrupt(SLOW_SCORE, box, _env(box), "model Model(", sig)
        return {"code": code, "err": err}

    return run


def _recipe_twice(box: Path) -> dict:
    write(box / "r.yaml", SLOW_RECIPE)
    args = ["run", "r.yaml", "--out-dir", "out", "--no-report"]
    first = _interrupt(args, box, _env(box), "[2/2] slow:", signal.SIGINT)  # step 1 done, step 2 running
    files = sorted(p.name for p in (box / "out").iterdir())
    kept = (box / "out" / "quick.parquet").read_bytes() if files == ["quick.parquet"] else b""
    second = _interrupt(args, box, _env(box), f"loaded {TOY}", signal.SIGINT)  # resumed: now in step 2
    return {"first": first, "files_after_first": files, "second": second,
            "files_after_second": sorted(p.name for p in (box / "out").iterdir()),
            "quick_unchanged": kept != b"" and (box / "out" / "quick.parquet").read_bytes() == kept}


SCENARIOS = {"user_error": _user_error, "and_chain": _and_chain, "sigint_score": _signal_score(signal.SIGINT),
             "sigterm_score": _signal_score(signal.SIGTERM), "recipe_twice": _recipe_twice}


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Start every real-process scenario in the background (each starts Python and torch, so they
    run concurrently, and alongside the driver process of ``outcomes``)."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("real")
    boxes = {name: root / name for name in SCENARIOS}
    for box in boxes.values():
        box.mkdir()
    pool = ThreadPoolExecutor(len(SCENARIOS))
    futures = {name: pool.submit(fn, boxes[name]) for name, fn in SCENARIOS.items()}
    yield futures, boxes
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def real_runs(started):
    """name -> (result, sandbox) of every real-process scenario."""
    futures, boxes = started
    out: dict[str, tuple[object, Path]] = {}
    for name, f in futures.items():
        try:
            out[name] = (f.result(timeout=900), boxes[name])
        except Exception as exc:  # noqa: BLE001 - reported by the scenario's own test, not as 5 errors
            out[name] = (exc, boxes[name])
    return out


def _scenario(real_runs: dict, name: str) -> tuple[dict, Path]:
    """One scenario's (result, sandbox); a scenario that could not run fails its own test only."""
    got, box = real_runs[name]
    if isinstance(got, Exception):
        raise AssertionError(f"scenario {name!r} did not run to the end: {type(got).__name__}: {got}")
    return got, box


def _nothing_written(box: Path) -> bool:
    return not list(box.rglob("*.parquet")) and not list(box.rglob("*.partial")) and not (box / "results").exists()


def test_user_error_exits_2_in_a_real_process(real_runs):
    got, box = _scenario(real_runs, "user_error")
    assert got["code"] == 2 and got["err"].count("\n") == 1 and got["err"].startswith("error: "), got
    assert _nothing_written(box)


def test_failed_command_stops_an_and_chain(real_runs):
    got, box = _scenario(real_runs, "and_chain")
    assert got["code"] == 2 and not (box / "ran").exists(), got


def test_ctrl_c_during_score_exits_130_and_writes_nothing(real_runs):
    got, box = _scenario(real_runs, "sigint_score")
    assert got["code"] == 130 and got["err"].strip() == "interrupted", got
    assert _nothing_written(box)


def test_sigterm_during_score_exits_143_and_writes_nothing(real_runs):
    got, box = _scenario(real_runs, "sigterm_score")
    assert got["code"] == 143 and got["err"].strip() == "terminated", got
    assert _nothing_written(box)


def test_ctrl_c_during_recipe_keeps_finished_steps(real_runs):
    """Ctrl-C in step 2 exits 130 and keeps step 1's result; a rerun skips step 1 (resumes)."""
    got, _ = _scenario(real_runs, "recipe_twice")
    code, out, err = got["first"]
    assert code == 130 and err.strip() == "interrupted", (code, err)
    assert got["files_after_first"] == ["quick.parquet"]
    code, out, err = got["second"]
    assert "[1/2] quick: up to date" in out and code == 130 and err.strip() == "interrupted", (code, err)
    assert got["files_after_second"] == ["quick.parquet"] and got["quick_unchanged"]


def test_option_values_follow_their_annotations():
    """Text and values against annotations (headscope.params), by hand-written expectation."""
    from headscope.errors import HeadscopeError
    from headscope.params import coerce

    lengths = tuple[int, ...] | list[int] | str | int
    ok = [("8", int, 8), (8.0, int, 8), ("0.5", float, 0.5), (3, float, 3.0), ("yes", bool, True), ("off", bool, False),
          ("9.10", str, "9.10"), (5, str, "5"), ("none", int | None, None), ("1,3", list[int] | None, [1, 3]),
          ("[1, 3]", list[int] | None, [1, 3]), ("256", lengths, 256), ("256,512", lengths, (256, 512)),
          ([256, 512], lengths, [256, 512]), ("5", str | int | None, 5), ("9.6,10.1", str | int | None, "9.6,10.1"),
          ("induction", tuple[str, ...] | list[str] | str, "induction")]
    for value, annotation, want in ok:
        got = coerce("x", value, annotation)
        assert got == want and type(got) is type(want), (value, annotation, got)
    for value, annotation in [("abc", int), ("2.5", int), (2.5, int), (True, int), ("true", int), ("maybe", bool),
                              (True, float), (9.6, str), ("1,x", list[int] | None), ("", list[int])]:
        with pytest.raises(HeadscopeError) as info:
            coerce("x", value, annotation, "task 't' parameter", 16)
        assert "\n" not in str(info.value) and str(info.value).startswith("task 't' parameter x=")
