# Targets for a fresh machine: `make demo`, `make test`. Everything runs from the repo's .venv.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser test test-slow bench demo

install: $(STAMP)

$(PY):
	python3 -m venv $(VENV)

# torch first and pinned: it comes from local disk here, and a range could pull several GB.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[test]'
	touch $@

# The gallery test drives the system Chromium (Debian's `chromium`); nothing downloads a browser.
# apt-get runs as root directly, otherwise through sudo; skipped when chromium is already installed.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends chromium; }

# CI's suite stays under 25 minutes on 2 cores; the slow failure-injection tests (README, "What
# survives what", says how long each takes) run with `make test-slow`.
test: install browser
	RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled $(PY) -m pytest -m "not slow" --durations=20

test-slow: install
	RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled $(PY) -m pytest -m slow --durations=0

bench: install
	@for script in bench/*.py; do \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; $(PY) "$$script" || exit 1; \
	done

demo: install
	$(VENV)/bin/fsg demo
