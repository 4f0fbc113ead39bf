"""GGUF files: dequantize once with transformers, cache as safetensors keyed by sha256.

transformers reads GGUF through ``from_pretrained(dir, gguf_file=name)`` (needs the ``gguf``
package) and dequantizes every tensor to float32, which takes ~10 s for SmolLM2-135M. We do
that once, ``save_pretrained`` the result (safetensors + config + tokenizer) under
``<cache>/gguf/<sha256>/``, and later loads read that directory directly (~1 s).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from headscope.cache import cache_root, file_sha256


def dequantized_dir(gguf_path: Path) -> tuple[Path, str]:
    """Return (directory with safetensors weights, sha256 of the GGUF file).

    The directory is created atomically (built under a temporary name, then renamed), so an
    interrupted conversion never leaves a half-written cache entry behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = file_sha256(gguf_path)
    target = cache_root() / "gguf" / sha
    if (target / "config.json").exists():
        return target, sha
    tmp = target.with_name(f"{sha}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32"
    )
    # transformers marks GGUF-loaded models as not serializable; the weights are plain fp32
    # tensors by now, so write them with safetensors and the config without the GGUF marker.
    from safetensors.torch import save_model

    tmp.mkdir(parents=True)
    config = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.save_pretrained(str(tmp))
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(tmp))
    (tmp / "SOURCE").write_text(f"{gguf_path}\nsha256 {sha}\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race; keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target, sha
