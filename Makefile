# The two commands of the README: `make demo` (the main job) and `make test`.
# Both install what they need on first use: uv (if missing), then the locked environment.
SHELL := /bin/bash
# The uv make bootstraps when none is found: the version the environment itself carries (pyproject.toml)
UV_VERSION := $(shell sed -n 's/^ *"uv==\([0-9.]*\)".*/\1/p' pyproject.toml)
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
# Never download an interpreter: the machine's python3 (3.11) is the one.
export UV_PYTHON_DOWNLOADS := never
# Compile the environment's bytecode once, at install: where PYTHONDONTWRITEBYTECODE is set, every
# process (each pipeline step, each Ray worker) would otherwise compile torch and mlflow from source
# (about 14 s of a step's start-up on 2 cores)
export UV_COMPILE_BYTECODE := 1
RUN := $(UV) run --frozen --no-sync

.PHONY: demo test test-slow test-isolated bench soak sync clean browser servers docs-images

demo: .venv/.synced
	$(RUN) trendloop demo

test: .venv/.synced browser servers
	$(RUN) pytest

test-slow: .venv/.synced
	$(RUN) pytest -m slow

# Each test module alone, in a pytest of its own (as shuffled as every run: each prints its seed), so that
# no module leans on what another set up. About as long as `make test`; exit 5 is a module whose every test
# is deselected (all slow).
test-isolated: .venv/.synced browser servers
	@failed=""; for module in tests/test_*.py; do \
	  echo "== $$module"; \
	  $(RUN) pytest -q -p no:cacheprovider "$$module" || [ $$? -eq 5 ] || failed="$$failed $$module"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed when run alone:$$failed"; exit 1; fi; echo "every module passed alone"

bench: .venv/.synced
	$(RUN) python benchmarks/bench_loop.py
	$(RUN) python benchmarks/bench_startup.py
	$(RUN) python benchmarks/bench_ingest.py
	$(RUN) python benchmarks/bench_train.py
	$(RUN) python benchmarks/bench_drift.py
	$(RUN) python benchmarks/bench_active_learning.py
	$(RUN) python benchmarks/bench_serving.py
	$(RUN) python benchmarks/bench_features.py
	$(RUN) python benchmarks/bench_fusion.py

# MINUTES of mixed traffic through the deployed app while it is ramped, promoted and rolled back; it prints
# requests, errors and records lost (both must be 0), p50/p99 and the replicas' memory
MINUTES ?= 10
soak: .venv/.synced
	$(RUN) python -m benchmarks.soak --minutes $(MINUTES)

# The guides' pictures are screenshots the suite takes of the running dashboard and of a real Label Studio task
# (test-artifacts/); this refreshes the copies docs/ shows.
docs-images: .venv/.synced browser
	$(RUN) pytest -p no:randomly -q "tests/test_dashboard.py::test_screenshot_of_the_dashboard" \
	  "tests/test_labelstudio.py::test_the_labelling_page_fits_one_screen"
	cp test-artifacts/dashboard.png docs/images/dashboard.png
	cp test-artifacts/labelstudio-portrait-1366x768.png docs/images/labelstudio-task.png

# The dashboard tests drive a real headless Chromium (Debian's package; Playwright's own browser
# downloads are not used). Installed here when missing and we may (root with apt); else they skip,
# or fail where CI is set (tests/browsers.py).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; \
	  else echo "no Chromium: the dashboard's browser tests will skip, or fail under CI (Debian: sudo apt-get install chromium)"; fi; }

# The cluster's backing stores, run for real by the registry, feature and labelling tests (tests/databases.py):
# Debian's PostgreSQL and Redis servers. Installed here when missing and we may (root with apt); else those
# tests skip, or fail where CI is set. Nothing is started here: each test session starts and stops its own.
servers:
	@missing=""; { command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } \
	  || missing="postgresql"; command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; \
	  else echo "no$$missing: the PostgreSQL/Redis-backed tests will skip, or fail under CI (Debian: sudo apt-get install$$missing)"; fi; fi

sync: .venv/.synced

# The install also readies the embedded Label Studio (its own environment and an empty migrated
# database, kept under ~/.cache/trendloop): a first start then takes seconds, not a minute of CPU
.venv/.synced: pyproject.toml uv.lock Makefile | $(UV)
	$(UV) sync --frozen
	$(RUN) trendloop services prepare
	touch $@

$(CURDIR)/.tools/bin/uv:
	python3 -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

clean:
	rm -rf .venv .tools .trendloop .pytest_cache
