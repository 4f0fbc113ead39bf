"""``verify_model``: run every conformance check on a model and collect the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from headscope.errors import HeadscopeError
from headscope.verify.checks import ALL_CHECKS, CheckSpec
from headscope.verify.context import VerifyContext
from headscope.verify.outcomes import Crashed, NotChecked, Refused, one_line
from headscope.verify.prompts import candidate_ids, make_prompts, prompt_length, sample_heads
from headscope.verify.raw_model import RawModel, load_raw_hf
from headscope.verify.report import FAIL, NOT_CHECKED, PASS, REFUSED, CheckRow, VerifyReport

DECODE_TOKENS = 4


def run_check(ctx: VerifyContext, spec: CheckSpec) -> CheckRow:
    """One check as a report row (see :mod:`headscope.verify.report` for the statuses)."""
    row = CheckRow(spec.capability, spec.name)
    try:
        measured = spec.fn(ctx)
    except Refused as exc:
        row.status, row.reason = REFUSED, str(exc)
        return row
    except Crashed as exc:
        row.status, row.reason = FAIL, str(exc)
        return row
    except NotChecked as exc:
        row.status, row.reason = NOT_CHECKED, str(exc)
        return row
    except Exception as exc:  # noqa: BLE001 - a bug in verify itself never reads as a pass
        row.status, row.reason = NOT_CHECKED, f"verify error ({type(exc).__name__}: {one_line(exc)})"
        return row
    row.max_diff = measured.diff
    row.tolerance = 0.0 if measured.exact else ctx.rtol * max(1.0, measured.scale)
    row.status = PASS if measured.diff <= row.tolerance else FAIL  # NaN fails
    row.reason = measured.note
    return row


def _sliding_window(config: Any) -> int | None:
    window = getattr(config, "sliding_window", None)
    return int(window) if isinstance(window, int) and window > 0 else None


def verify_model(
    model: Any,
    prompts: int = 3,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    on_check: Callable[[CheckSpec], None] | None = None,
) -> VerifyReport:
    """Check headscope against an independent raw Hugging Face copy of ``model``.

    Args:
        model: a loaded :class:`~headscope.models.Model` or any spec ``load_model`` accepts.
        prompts: number of seeded random prompt pairs.
        seed: seed of the prompts and of the head sample.
        device, dtype: for loading when ``model`` is a spec.
        on_check: called before each check (e.g. to show progress).

    Returns:
        A :class:`~headscope.verify.report.VerifyReport`; ``report.failed`` is True on any FAIL.

    Raises:
        HeadscopeError: bad arguments, or a model with no directory to load a raw copy from.
    """
    from headscope.models import load_model

    if prompts < 1:
        raise HeadscopeError(f"--prompts must be at least 1; got {prompts}.")
    if isinstance(model, str):
        model = load_model(model, device=device, dtype=dtype)
    start = time.perf_counter()
    report = VerifyReport(model=model.provenance())
    try:
        raw = RawModel(load_raw_hf(model))
    except NotChecked as exc:
        report.rows = [CheckRow(s.capability, s.name, status=NOT_CHECKED, reason=str(exc)) for s in ALL_CHECKS]
        report.seconds = time.perf_counter() - start
        return report
    length = prompt_length(raw.n_heads, raw.n_kv, _sliding_window(raw.config), model.n_ctx, DECODE_TOKENS)
    vocab = min(model.d_vocab, int(raw.embed.num_embeddings))
    bos = model.bos_token_id if model.prepend_bos else None
    pr = make_prompts(prompts, length, candidate_ids(model.tokenizer, vocab), bos, seed)
    heads = sample_heads(raw.n_layers, raw.n_heads, raw.n_kv, seed)
    ctx = VerifyContext(model, raw, pr, heads, decode_tokens=DECODE_TOKENS)
    for spec in ALL_CHECKS:
        if on_check is not None:
            on_check(spec)
        report.rows.append(run_check(ctx, spec))
    report.seconds = time.perf_counter() - start
    report.settings = {
        "seed": seed,
        "prompts": prompts,
        "prompt_length": length,
        "heads": [f"{layer}.{head}" for layer, head in heads],
        "decode_tokens": DECODE_TOKENS,
        "tolerance": f"|headscope - reference| <= {ctx.rtol:g} * max(1, max |reference|) (0 for token ids)",
        "reference": "a second copy of the model as a plain Hugging Face model (eager attention) read and edited "
                     "with torch module hooks",
    }
    return report
