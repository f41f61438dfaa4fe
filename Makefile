# Two commands do everything on a fresh clone: `make run` and `make test`.
# Both create the virtual environment in .venv when it is missing and (re)install
# when the requirements change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
RUN_STAMP := $(VENV)/.run-$(shell cat requirements.txt $(LOCK) | cksum | cut -d' ' -f1)
TEST_STAMP := $(VENV)/.test-$(shell cat requirements.txt requirements-test.txt $(LOCK) | cksum | cut -d' ' -f1)

.PHONY: run test bench venv lock clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.10 or newer is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Installs pin the exact versions of requirements.lock (a constraints file), so every fresh clone, CI
# included, runs what the suite was run with.
$(RUN_STAMP): requirements.txt $(LOCK) | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt -c $(LOCK)
	@rm -f $(VENV)/.run-*; touch $@

$(TEST_STAMP): requirements.txt requirements-test.txt $(LOCK) | $(PY)
	$(PY) -m pip install --quiet -r requirements-test.txt -c $(LOCK)
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
	$(PY) -m bench.job_bench
	$(PY) -m bench.openai_bench
	$(PY) -m bench.wyoming_bench
	$(PY) -m bench.peers_bench

# Re-resolve the ranges of requirements*.txt in a throw-away environment and pin the result. Run the
# whole suite (make test) with the new lock before committing it.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -r requirements-test.txt
	{ sed -n '1,3p' $(LOCK); .lock-venv/bin/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache
