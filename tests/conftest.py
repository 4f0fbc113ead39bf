"""Shared test setup: offline hub, quiet progress bars, cached model fixtures."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HEADSCOPE_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct through the real GGUF path (dequantized once, then cached)."""
    import headscope as hs

    return hs.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def toy_induction():
    import headscope as hs

    return hs.load_model("toy-induction")


@pytest.fixture(scope="session")
def toy_gqa():
    import headscope as hs

    return hs.load_model("toy-gqa")
