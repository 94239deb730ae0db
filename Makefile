# Two commands on a fresh machine: `make test` and `make demo`.
# Each creates .venv and installs the project with its dev extra when missing or when
# pyproject.toml changed since the last install.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo install clean promtool

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# promtool checks the Prometheus config, alert rules and dashboard queries in ops/
# (tests/test_ops_assets.py). Debian's prometheus package ships it: installed when
# missing (as root, or with sudo), a silent no-op once it is there.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

promtool:
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing Debian's prometheus package (for promtool)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

test: $(STAMP) promtool
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/shadowzoo demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
