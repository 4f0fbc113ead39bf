"""``load_model(spec)``: one resolver for every way a user names a model.

Spec forms, tried in this order:

1. ``toy-*``: a planted-mechanism model from :mod:`headscope.toy` (built in memory);
   ``zoo-<family>``: a tiny seeded random model of one architecture family
   (:mod:`headscope.toy.zoo`), saved once in the headscope cache and loaded as a directory.
2. An alias from :data:`headscope.models.aliases.ALIASES` (e.g. ``smollm2-135m``): its GGUF from
   an installed package if present, else its hub id.
3. A path to a ``.gguf`` file: dequantized once and cached as safetensors (see ``gguf.py``).
4. A local directory with ``config.json``, weights and tokenizer files.
5. A Hugging Face hub id (``gpt2``, ``EleutherAI/pythia-70m``): the local HF cache first; then
   the hub, unless offline. Offline failures are immediate, with a message that says how to get
   the weights (no 20 s of retries).

Every form ends the same way: the HF model is wrapped by
``TransformerBridge.boot_transformers(..., hf_model=..., tokenizer=...)`` (raw HF numerics,
eager attention) and put in eval mode.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Any

import torch

from headscope.cache import file_sha256
from headscope.errors import HeadscopeError, suggest
from headscope.models.aliases import ALIASES
from headscope.models.facts import arch_facts
from headscope.models.model import Model

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Map ``"bf16"`` etc. to a torch dtype (default float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise HeadscopeError(f"unknown dtype '{dtype}'.{suggest(dtype, DTYPES)} Use one of {sorted(set(DTYPES))}.")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> str:
    """``None``/``"cpu"`` -> cpu; ``"auto"`` -> cuda if available; otherwise checked as given."""
    if device is None or str(device) == "cpu":
        return "cpu"
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = str(device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise HeadscopeError(f"device '{dev}' asked for but no CUDA GPU is visible: use --device cpu.")
    if dev.startswith("mps") and not torch.backends.mps.is_available():
        raise HeadscopeError(f"device '{dev}' asked for but MPS is not available: use --device cpu.")
    return dev


def is_offline() -> bool:
    """True when the user asked Hugging Face libraries to stay offline."""
    flags = (os.environ.get(k, "").lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in {"1", "true", "yes", "on"} for f in flags)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub, so an offline machine fails in seconds, not 20 s."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = re.sub(r"^https?://", "", endpoint).split("/")[0].split(":")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _known_names() -> list[str]:
    from headscope.toy import toy_names
    from headscope.toy.zoo import zoo_names

    return [*ALIASES, *toy_names(), *zoo_names()]


def _dir_weights_hash(directory: Path) -> str:
    files = sorted(
        p for p in directory.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"}
    )
    if not files:
        raise HeadscopeError(f"no weight files (*.safetensors) in {directory}: is this a model directory?")
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        digest.update(file_sha256(p).encode())
    return digest.hexdigest()


def state_dict_hash(model: torch.nn.Module) -> str:
    """sha256 over the state dict's names and raw bytes (models with no weight files)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _from_dir(directory: Path, dtype: torch.dtype, device_map: str | dict | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (directory / "config.json").exists():
        raise HeadscopeError(
            f"{directory} has no config.json: pass a directory saved with save_pretrained, "
            "a .gguf file, a hub id or an alias (see `headscope models`)."
        )
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    placement = {"device_map": device_map} if device_map is not None else {}  # accelerate shards
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, local_files_only=True, **placement)
    return model, tokenizer


def _hub_snapshot(hub_id: str, hint: str = "") -> Path:
    """Local snapshot dir of a hub model, downloading it when online."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
    try:
        return Path(snapshot_download(hub_id, local_files_only=True, allow_patterns=patterns))
    except Exception:  # noqa: BLE001 - any cache miss means "not available offline"
        pass
    # a real model is never answered with a random-weight zoo stand-in (gpt2 -> zoo-gpt2)
    from headscope.toy.zoo import zoo_names

    names = [n for n in _known_names() if n not in set(zoo_names())]
    did_you_mean = suggest(hub_id, names)
    if is_offline() or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if is_offline() else "the hub cannot be reached"
        how = hint or (
            f"run `huggingface-cli download {hub_id}` on a machine with internet and copy the cache, "
            "or pass a local directory or .gguf file"
        )
        raise HeadscopeError(
            f"model '{hub_id}' is not available offline ({why}).{did_you_mean} To get it: {how}."
        )
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001
        raise HeadscopeError(
            f"could not download '{hub_id}' from the hub ({type(exc).__name__}).{did_you_mean} "
            "Check the id, or pass a local directory or .gguf file."
        ) from None


def _quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and info logs (we show our own)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _model_from_dir(
    directory: Path,
    spec: str,
    source: str,
    device: str,
    dtype: torch.dtype,
    device_map: str | dict | None,
    weights_hash: str | None = None,
    summary: str = "",
) -> Model:
    """Load a saved HF model directory, boot the bridge on it and wrap it.

    ``weights_hash`` defaults to the hash of the directory's weight files (computed after
    loading, so a directory that does not load reports that error first).
    """
    model, tok = _from_dir(directory, dtype, device_map)
    bridge = boot_bridge(str(directory), model, tok, device, dtype)
    digest = weights_hash if weights_hash is not None else _dir_weights_hash(directory)
    return Model(bridge, bridge.tokenizer, spec, source, digest, device, dtype, summary=summary,
                 source_dir=str(directory))


def boot_bridge(name: str, hf_model: Any, tokenizer: Any, device: str | None, dtype: torch.dtype) -> Any:
    """TransformerBridge on ``hf_model`` (moved to ``device``/``dtype`` unless accelerate placed
    it), in eval mode, with the KV-cache keyword shim."""
    from transformer_lens.model_bridge import TransformerBridge

    if getattr(hf_model, "hf_device_map", None):  # placed by accelerate: do not move it
        hf_model, device = hf_model.eval(), None
    else:
        hf_model = hf_model.to(device=device, dtype=dtype).eval()
    from headscope.models.compat import install_cache_kwarg_shim

    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.eval()
    install_cache_kwarg_shim(bridge)
    return bridge


def load_model(
    spec: str = "smollm2-135m",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> Model:
    """Load a model by spec and wrap it for tracing.

    Args:
        spec: alias, ``toy-*`` name, ``.gguf`` path, local directory or hub id.
        device: ``cpu`` (default), ``cuda``, ``cuda:1``, ``mps`` or ``auto``.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``.
        device_map: Hugging Face accelerate placement (``"auto"``, ``"balanced"`` or a dict
            module -> device), passed to ``from_pretrained`` for alias/GGUF/directory/hub models
            so a model too large for one GPU is sharded across GPUs; ``device`` is then ignored
            and ``Model.device`` is the embedding's device (see docs/devices.md).

    Raises:
        UnsupportedArchitectureError: the model contradicts its family file
            (:mod:`headscope.models.facts`).
    """
    if not isinstance(spec, (str, Path)):
        from headscope.models.wrap import not_a_model_message

        raise HeadscopeError(not_a_model_message(spec) or
                             f"load_model takes a name, path or hub id; got {type(spec).__name__}.")
    if device_map is not None and str(spec).startswith("toy-"):
        raise HeadscopeError("device_map applies to models loaded from files or the hub, not toy models.")
    model = _load_model(spec, device, dtype, device_map)
    if device_map is not None:
        model.device = str(model.bridge.cfg.device)
    arch_facts(model)  # read once: a checkpoint contradicting its family file stops here
    return model


def _load_model(
    spec: str,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    device_map: str | dict[str, Any] | None,
) -> Model:
    """:func:`load_model` without the device_map bookkeeping.

    Args:
        spec: alias, ``toy-*`` name, ``.gguf`` path, local directory or hub id.
        device: ``cpu`` (default), ``cuda``, ``cuda:1``, ``mps`` or ``auto``.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``.

    Returns:
        A :class:`Model` whose bridge is in eval mode.

    Raises:
        HeadscopeError: unknown spec (with close-name suggestions), missing files, or weights
            that cannot be found offline (with how to get them).
    """
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    _quiet_transformers()
    spec = str(spec)

    if spec.startswith("toy-"):
        from headscope.toy import TOY_MODELS, build_toy

        if spec not in TOY_MODELS:
            raise HeadscopeError(
                f"unknown toy model '{spec}'.{suggest(spec, TOY_MODELS)} "
                f"Toy models: {', '.join(TOY_MODELS)}."
            )
        hf_model, tokenizer = build_toy(spec)
        toy = TOY_MODELS[spec]
        bridge = boot_bridge(spec, hf_model, tokenizer, dev, torch_dtype)
        return Model(
            bridge, bridge.tokenizer, spec, "toy", state_dict_hash(hf_model), dev, torch_dtype,
            planted=dict(toy.planted), summary=toy.summary,
        )

    if spec.startswith("zoo-"):
        from headscope.toy.zoo import ZOO_FAMILIES, cached_zoo_dir, zoo_names

        family = ZOO_FAMILIES.get(spec[4:])
        if family is None:
            raise HeadscopeError(f"unknown zoo model '{spec}'.{suggest(spec, zoo_names())} Zoo models: {', '.join(zoo_names())}.")
        return _model_from_dir(cached_zoo_dir(family.name), spec, "zoo", dev, torch_dtype, device_map, summary=family.summary)

    if spec in ALIASES:
        alias = ALIASES[spec]
        gguf = alias.find_local()
        if gguf is not None:
            directory, sha = _load_gguf_dir(gguf)
            return _model_from_dir(directory, spec, "gguf", dev, torch_dtype, device_map, sha, alias.summary)
        directory = _hub_snapshot(alias.hub_id, hint=alias.hint())
        return _model_from_dir(directory, spec, "hub", dev, torch_dtype, device_map, summary=alias.summary)

    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.exists() or spec.startswith((".", "/", "~")):
        if not path.exists():
            raise HeadscopeError(f"no such file or directory: {path}. Check the path.")
        if path.is_file():
            if path.suffix != ".gguf":
                raise HeadscopeError(
                    f"{path} is a file but not a .gguf: pass a .gguf file or a model directory."
                )
            directory, sha = _load_gguf_dir(path)
            return _model_from_dir(directory, spec, "gguf", dev, torch_dtype, device_map, sha)
        return _model_from_dir(path, spec, "dir", dev, torch_dtype, device_map)

    if not HUB_ID.match(spec):
        raise HeadscopeError(
            f"'{spec}' is not a model alias, toy model, path or hub id.{suggest(spec, _known_names())} "
            "See `headscope models`."
        )
    directory = _hub_snapshot(spec)
    return _model_from_dir(directory, spec, "hub", dev, torch_dtype, device_map)


def _load_gguf_dir(path: Path) -> tuple[Path, str]:
    from headscope.models.gguf import dequantized_dir

    try:
        return dequantized_dir(path)
    except ImportError as exc:
        raise HeadscopeError(f"reading GGUF needs the 'gguf' package ({exc}): pip install gguf.") from None
    except Exception as exc:  # noqa: BLE001 - gguf raises struct/value/key errors on bad files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HeadscopeError(f"cannot read GGUF file {path} ({reason}): is it a complete .gguf file?") from None


def offline_status() -> list[dict[str, Any]]:
    """For `headscope models`: every alias and toy, and whether it loads offline now."""
    from headscope.toy import TOY_MODELS

    rows: list[dict[str, Any]] = []
    for alias in ALIASES.values():
        local = alias.available()
        rows.append(
            {
                "name": alias.name,
                "offline": local,
                "source": "installed package (GGUF)" if local else f"hub: {alias.hub_id}",
                "summary": alias.summary,
                "install": "" if local else alias.hint(),
            }
        )
    for toy in TOY_MODELS.values():
        rows.append(
            {"name": toy.name, "offline": True, "source": "built in (planted weights)",
             "summary": toy.summary, "install": ""}
        )
    from headscope.toy.zoo import ZOO_FAMILIES

    for fam in ZOO_FAMILIES.values():
        rows.append(
            {"name": fam.spec, "offline": True, "source": "built in (seeded random weights, conformance zoo)",
             "summary": fam.summary, "install": ""}
        )
    return rows
