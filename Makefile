# rmobike: build, test and demo entry points. Every target does its own set-up on a fresh
# Debian machine (apt packages, a venv with pinned dependencies, the lab kernel).

PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Debian packages: the lab VM (QEMU + Debian's kernel), the tools the lab drives, strongSwan as
# the interop peer, and what systemd-python needs to build.
APT_PACKAGES := qemu-system-x86 linux-image-amd64 iproute2 nftables tcpdump procps strace \
                strongswan-charon strongswan-swanctl libstrongswan-standard-plugins \
                libstrongswan-extra-plugins libsystemd-dev pkg-config gcc python3-dev

.PHONY: all deps apt venv test unit lab interop bench demo deb rpm package-test clean

all: test

deps: apt venv

# Installs only what is missing, so repeated runs cost a dpkg query.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Unit tests run anywhere without root; the kernel tests run in ONE lab boot (the VM, or the
# host itself when its kernel has ESP).
test: deps unit lab

unit: venv
	$(PY) -m pytest -q tests/unit

# The strongSwan interop tests run charon under QEMU TCG and take longer than the rest of the
# lab together, so they have their own target and lab boot.
INTEROP_TESTS := tests/kernel/test_interop_*.py tests/kernel/test_daemon_charon.py

lab: deps
	$(PY) -m tests.lab.run -q -rfEs $(addprefix --ignore-glob=,$(INTEROP_TESTS)) tests/kernel

interop: deps
	$(PY) -m tests.lab.run -q -rfEs $(INTEROP_TESTS)

bench: deps
	$(PY) -m tests.bench.run

demo: deps
	$(PY) -m tests.lab.demo

# Distribution packages, written to dist/. The scripts install their own build dependencies.
deb:
	packaging/build-deb.sh

rpm:
	packaging/build-rpm.sh

# Builds both packages and installs them into clean roots (needs root, Debian's mirror, the lab).
package-test: venv
	$(PY) -m pytest -m packaging tests/packaging -v

clean:
	rm -rf $(VENV) build dist *.egg-info
