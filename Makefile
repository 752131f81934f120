# Two commands do all the set-up: `make test` and `make demo`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

RUNNER := build/runner/fbnet-runner
RUNNER_SRC := device_agents/runner/fbnet_runner.cpp device_agents/runner/CMakeLists.txt

.PHONY: test demo lint venv clean runner

venv: $(STAMP)
runner: $(RUNNER)

# Re-installs only when the project's metadata changes. torch is installed on its own first so
# that nothing later pulls another (CUDA) build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# fbnet-runner, our C++ runner, against the installed executorch wheel's CMake package (cmake, g++,
# ninja from the system); rebuilt when its source or the wheel changes.
$(RUNNER): $(RUNNER_SRC) $(STAMP)
	cmake -S device_agents/runner -B build/runner -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -Dexecutorch_DIR=$$($(PY) -c 'import executorch; print(list(executorch.__path__)[0])')/share/cmake
	cmake --build build/runner

# PYTEST_WORKERS=auto runs the suite on every core (pytest-xdist; the tests share one export cache,
# each server has its own database or PostgreSQL schema). The default is one process: on a 2-core
# machine two workers starved the service subprocesses of the end-to-end tests (a cold v2 fit went past
# the client's 15 s timeout), so CI stays serial until those tests hold under that load.
PYTEST_WORKERS ?= 0
test: $(STAMP) $(RUNNER)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Debian's Fashion-MNIST when we can install it (root with apt); otherwise demo.py says so and uses
# scikit-learn's digits.
FASHION_DIR := /usr/share/datasets/fashion-mnist
demo: $(STAMP)
	@if [ ! -d $(FASHION_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist (apt-get)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "could not install dataset-fashion-mnist"; fi
	$(PY) demo/demo.py $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .fbnet-cache demo-out build
