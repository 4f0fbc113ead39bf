"""The embedding scale of a model, measured from its residual stream (needs the tracer).

Lives in the trace layer because it runs the model; :mod:`headscope.models.arch` holds the
facts read from the config.
"""

from __future__ import annotations

from typing import Any

from headscope.models.arch import UnsupportedArchitectureError, architecture


def embedding_scale(model: Any) -> float:
    """The factor between a token's ``W_E`` row and what it adds to the residual stream.

    1 for most models; ``sqrt(d_model)`` for Gemma (its model forward, or its scaled embedding
    module, multiplies the embeddings). Measured, not assumed: two one-token inputs ``t1, t2``
    at position 0 give residuals ``r1, r2`` entering block 0, and ``r1 - r2 = s (W_E[t1] -
    W_E[t2])`` (any position embedding cancels). Cached on the model.

    Raises:
        UnsupportedArchitectureError: the residual is not a scaled embedding row.
    """
    store = model.__dict__.setdefault("_arch_cache", {})
    if "embedding_scale" in store:
        return store["embedding_scale"]
    import torch

    from headscope.trace.stream import capture_stream

    ids = torch.tensor([[1], [2]])
    resid = capture_stream(model, ids, ["blocks.0.hook_resid_pre"])["blocks.0.hook_resid_pre"][:, 0]
    w_e = model.bridge.W_E.detach().float().cpu()
    de, dr = w_e[1] - w_e[2], resid[0] - resid[1]
    scale = float(dr @ de / (de @ de))
    tol = 1e-3 if model.dtype == torch.float32 else 3e-2
    if not torch.allclose(dr, scale * de, rtol=tol, atol=tol * float(dr.abs().max())):
        raise UnsupportedArchitectureError(
            f"{architecture(model)}: the residual entering block 0 is not a scaled embedding row, "
            "so effective embeddings cannot be computed from W_E."
        )
    store["embedding_scale"] = scale
    return scale
