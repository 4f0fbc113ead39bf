"""``headscope verify``: check headscope's numbers on your own model before trusting them.

>>> from headscope.verify import verify_model
>>> report = verify_model("toy-gqa")          # or a loaded Model, a directory, a .gguf, a hub id
>>> report.to_frame()                         # capability, check, max_diff, tolerance, status, reason
>>> report.failed                             # True on any FAIL

Every check compares headscope with an independent reference: a second copy of the model,
loaded as a plain Hugging Face model with eager attention and read/edited with ``torch``
module hooks (:mod:`headscope.verify.raw_model`, :mod:`headscope.verify.raw_run`), on a few
seeded random prompts and a seeded sample of heads (:mod:`headscope.verify.prompts`).
Capabilities (:data:`CAPABILITIES`, the support-matrix columns) and their checks live in
:mod:`headscope.verify.checks`; statuses and tolerances in :mod:`headscope.verify.report`.
"""

from headscope.verify.checks import CAPABILITIES
from headscope.verify.report import FAIL, NOT_CHECKED, PASS, REFUSED, CheckRow, VerifyReport
from headscope.verify.runner import verify_model

__all__ = ["CAPABILITIES", "FAIL", "NOT_CHECKED", "PASS", "REFUSED", "CheckRow", "VerifyReport", "verify_model"]
