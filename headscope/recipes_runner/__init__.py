"""Recipes: declarative analyses from the literature, run by ``headscope run recipes/NAME.yaml``."""

from headscope.recipes_runner.runner import RunResult, run_recipe
from headscope.recipes_runner.spec import Recipe, Step, load_recipe

__all__ = ["Recipe", "RunResult", "Step", "load_recipe", "run_recipe"]
