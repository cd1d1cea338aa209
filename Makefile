# The two quickstart commands are `make demo` and `make test`; both install
# everything they need first (apt packages, then a venv with pinned deps).
SHELL := /bin/bash
VENV := .venv
# Debian's own python3 (an apt package below): built with PGO and LTO, it starts
# fab ~25% faster than an interpreter built without them (pyenv's default build).
PYTHON ?= /usr/bin/python3
APT_PACKAGES := python3 python3-venv systemd-container mmdebstrap nftables iproute2 openssh-client curl wrk openssl pebble
STAMP := $(VENV)/.installed

.PHONY: demo test setup lint clean

demo: setup
	$(VENV)/bin/fab lab.up
	$(VENV)/bin/fab bootstrap
	$(VENV)/bin/fab deploy
	$(VENV)/bin/fab verify
	$(VENV)/bin/fab lab.url

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

# The venv is made anew when it was made from another interpreter than $(PYTHON).
# keel's own modules byte-compiled, as pip compiles an installed package's (a
# no-change run would otherwise compile them again each time PYTHONDONTWRITEBYTECODE
# is set, ~0.1 s); compileall skips what is up to date.
setup:
	@[ "$$(readlink -f $(VENV)/bin/python 2>/dev/null)" = "$$(readlink -f $(PYTHON))" ] || rm -f $(STAMP)
	@$(MAKE) -s --no-print-directory $(STAMP)
	@$(VENV)/bin/python -m compileall -q keel roles fabfile.py

$(STAMP): requirements.lock pyproject.toml
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); }
	$(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.lock
	touch $@

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)
