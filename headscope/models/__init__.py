"""Model loading: one resolver for hub ids, local dirs, GGUF files, aliases and planted toys."""

from headscope.models.aliases import ALIASES, ModelAlias
from headscope.models.load import load_model
from headscope.models.model import Model
from headscope.models.wrap import from_bridge, from_hf

__all__ = ["ALIASES", "Model", "ModelAlias", "from_bridge", "from_hf", "load_model"]
