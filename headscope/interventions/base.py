"""The intervention protocol and runner, defined in the trace layer (:mod:`headscope.trace.hooks`)."""

from headscope.trace.hooks import HookFn, Intervention, intervention_hooks, run_with_interventions

__all__ = ["HookFn", "Intervention", "intervention_hooks", "run_with_interventions"]
