"""Unknown option / parameter names are one-line errors naming the owner, a close match and the
accepted names, before any model work (expectations written by hand)."""

import pytest

from headscope.analyzers import run_analyzer
from headscope.circuits.methods import run_circuit_method
from headscope.errors import HeadscopeError
from headscope.tasks import make_task


def test_unknown_names_are_refused_before_any_work():
    with pytest.raises(HeadscopeError, match=r"^analyzer 'pattern_scores' has no option 'bogus'\..* Options: "):
        run_analyzer("pattern_scores", None, None, bogus=1)
    with pytest.raises(HeadscopeError, match=r"^task 'induction' has no parameter 'n_promts'\. Did you mean 'n_prompts'"):
        make_task("induction", n_promts=2)
    with pytest.raises(HeadscopeError, match=r"^circuit method 'eap' has no option 'stepz'\..* Options: "):
        run_circuit_method("eap", None, None, stepz=1)
