# Two commands do everything on a fresh clone: `make run` and `make test`.
# Both create the virtual environment in .venv when it is missing and (re)install
# when the requirements change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.run-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
TEST_STAMP := $(VENV)/.test-$(shell cat requirements.txt requirements-test.txt | cksum | cut -d' ' -f1)

.PHONY: run test bench venv clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.10 or newer is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	@rm -f $(VENV)/.run-*; touch $@

$(TEST_STAMP): requirements.txt requirements-test.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-test.txt
	@rm -f $(VENV)/.test-*; touch $@

venv: $(RUN_STAMP)

run: $(RUN_STAMP)
	$(PY) run_services.py

test: $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) -m bench.stt_bench
	$(PY) -m bench.tts_bench
	$(PY) -m bench.streaming_bench

clean:
	rm -rf $(VENV) .pytest_cache
