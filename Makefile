# Spectral Lab — the two commands a newcomer needs are `make book` and `make test`.
# Every target sets up .venv itself (once; again when pyproject.toml changes).

PYTHON        ?= python3
VENV          := .venv
PY            := $(VENV)/bin/python
STAMP         := $(VENV)/.installed
# Without a CUDA GPU, a CPU build of torch goes in first, so no CUDA packages are downloaded.
# Here pip finds the local CPU wheel; elsewhere pass the CPU wheel index, for example
#   make test TORCH_CPU_PIP_ARGS="--index-url <PyTorch's CPU wheel index>"
TORCH_VERSION      ?= 2.13.0
TORCH_CPU_PIP_ARGS ?=
PIP           := $(PY) -m pip --disable-pip-version-check
.PHONY: help setup book handouts test lab bench system-deps clean

# make book FORCE=1 re-executes every chapter (otherwise only chapters whose code, the profile or the
# library changed run again); make book AUDIENCE=student builds the student edition (no solutions).
FORCE    ?=
AUDIENCE ?= instructor
BOOK_OUT := $(if $(filter student,$(AUDIENCE)),_build/student,.)

help:
	@echo "make book   execute every chapter and build the HTML book (_build/html/index.html)"
	@echo "            FORCE=1: re-execute every chapter; AUDIENCE=student: the edition without solutions"
	@echo "make handouts  a student and an instructor notebook per chapter (_build/handouts/)"
	@echo "make test   ruff, then the whole test suite (unit, contract, PEFT cross-checks, chapters, book, browser)"
	@echo "make lab    JupyterLab on the book; chapters open as notebooks"
	@echo "make bench  speed benchmarks (ratios against a peer, recorded in benchmarks/results/)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	    echo "torch already installed in $(VENV): keeping $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "CUDA GPU found: installing torch with CUDA"; $(PIP) install "torch>=2.1,<3"; \
	else \
	    echo "no CUDA GPU: installing the CPU build torch==$(TORCH_VERSION)"; \
	    $(PIP) install "torch==$(TORCH_VERSION)" $(TORCH_CPU_PIP_ARGS); \
	fi
	$(PIP) install -e ".[dev]"
	@# JupyterLab opens the chapters (.md) as notebooks through jupytext.
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@cp .jupyter-lab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $@

# Debian's Chromium and its driver for the browser tests (never a downloaded browser).
system-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium and chromium-driver"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
	    echo "note: chromium + chromium-driver are not installed; browser tests will be skipped" \
	         "(install them with your package manager, e.g. apt-get install chromium chromium-driver)"; \
	fi

book: $(STAMP)
	@case "$(AUDIENCE)" in instructor|student) ;; *) echo "AUDIENCE=$(AUDIENCE): use instructor or student"; exit 2;; esac
	$(if $(FORCE),rm -rf $${SPECTRALLAB_BOOK_CACHE:-_build/.jupyter_cache} $(BOOK_OUT)/_build/html $(BOOK_OUT)/_build/.doctrees)
	SPECTRALLAB_AUDIENCE=$(AUDIENCE) $(VENV)/bin/jupyter-book build . $(if $(FORCE),--all) -W -n --keep-going \
	    --path-output $(BOOK_OUT)
	@echo "The $(AUDIENCE) book is at file://$(abspath $(BOOK_OUT))/_build/html/index.html"

handouts: $(STAMP)
	$(PY) book/_ext/handouts.py _build/handouts

test: $(STAMP) system-deps
	@# Lint and format first (ruff; settings in pyproject.toml): seconds, and the suite needs minutes.
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	SPECTRALLAB_PROFILE=ci $(PY) -m pytest -ra $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab book/

bench: $(STAMP)
	cd benchmarks && ../$(PY) run_all.py

clean:
	rm -rf _build .pytest_cache test-artifacts
