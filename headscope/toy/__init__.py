"""Tiny transformers with hand-set weights, used as ground truth for head analyses.

Every toy is deterministic and builds in well under a second:

* ``toy-induction``: previous-token head 0.0 + induction head 1.0 (GPT-2, one-hot subspaces);
* ``toy-copying``: copying head 1.1 (OV = identity) + a permutation head 0.0;
* ``toy-successor``: successor head 1.0 + copying distractor 1.1, MLP0 ~ identity;
* ``toy-gqa``: a seeded-random Llama with grouped-query attention (no planted heads).

:mod:`headscope.toy.zoo` holds the architecture conformance zoo (``zoo-<family>``: one tiny
seeded random model per Hugging Face family, for checking headscope against raw HF).

See :mod:`headscope.toy.registry` for the interface and each model's module for its
construction; :mod:`headscope.toy.vocab` holds the shared vocabulary and successor families.
"""

from headscope.toy.registry import TOY_MODELS, ToySpec, build_toy, toy_names

__all__ = ["TOY_MODELS", "ToySpec", "build_toy", "toy_names"]
