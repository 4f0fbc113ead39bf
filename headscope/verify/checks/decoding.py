"""``decoding``: greedy generation equals raw full-recompute greedy decoding.

headscope: :func:`headscope.generation.greedy_generate` (KV-cached, length-grouped) on the
clean prompts. Raw side: for each new token the whole sequence is run through the raw model
again (no cache) and the arg-max is appended. Tokens are compared one by one; a difference
where the raw model's top two logits are within tolerance is a tie, not a failure. headscope
may stop early only where the raw model's next token is special (EOS, end of turn). The
difference reported is the number of mismatched tokens (tolerance 0).
"""

from __future__ import annotations

import torch

from headscope.generation import greedy_generate
from headscope.verify.checks.spec import CheckSpec
from headscope.verify.context import Measured, VerifyContext
from headscope.verify.outcomes import reference


def raw_greedy(ctx: VerifyContext, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, steps) raw greedy tokens and (n, steps) margins between the top two logits."""
    seq = ctx.prompts.clean.to(ctx.raw.device)
    tokens, margins = [], []
    with torch.inference_mode():
        for _ in range(steps):
            logits = ctx.raw.hf(input_ids=seq, use_cache=False).logits[:, -1].float()
            top = logits.topk(2, -1)
            tokens.append(top.indices[:, 0])
            margins.append(top.values[:, 0] - top.values[:, 1])
            seq = torch.cat([seq, top.indices[:, :1]], 1)
    return torch.stack(tokens, 1).cpu(), torch.stack(margins, 1).cpu()


def _stop_ids(ctx: VerifyContext) -> set[int]:
    ids = set(getattr(ctx.model.tokenizer, "all_special_ids", []) or [])
    eos = getattr(ctx.raw.config, "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, (list, tuple)) else {eos} if eos is not None else set()
    return {int(i) for i in ids if i is not None}


def _check(ctx: VerifyContext) -> Measured:
    steps = ctx.decode_tokens
    got = ctx.headscope("generate", greedy_generate, ctx.model, [row.tolist() for row in ctx.prompts.clean],
                        max_new_tokens=steps)
    want, margins = reference(raw_greedy, ctx, steps)
    stops, tol = _stop_ids(ctx), ctx.rtol * max(1.0, float(margins.abs().max()))
    bad = ties = 0
    for row, out in enumerate(got):
        for i in range(steps):
            if i == len(out):  # headscope stopped: only allowed at a special token
                bad += int(int(want[row, i]) not in stops)
                break
            if out[i] != int(want[row, i]):
                ties += int(float(margins[row, i]) <= tol)
                bad += int(float(margins[row, i]) > tol)
                break
    note = f"{ties} near-tie(s) skipped" if ties else ""
    return Measured(float(bad), exact=True, note=note)


CHECKS = [CheckSpec("decoding", "greedy tokens", _check)]
