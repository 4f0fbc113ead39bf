"""Model loading: one resolver for hub ids, local dirs, GGUF files, aliases and planted toys."""

from headscope.models.aliases import ALIASES, ModelAlias
from headscope.models.load import load_model
from headscope.models.model import Model

__all__ = ["ALIASES", "Model", "ModelAlias", "load_model"]
