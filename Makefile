# Two commands do all set-up on a fresh Debian 12 machine (as root):
#   make demo   installs what the demo needs, then runs it
#   make test   installs what the tests need, then runs them (CI: .ci/run)
PYTHON ?= /usr/bin/python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python

# What migmanagerd needs on a node (Debian packages pydbus, PyGObject, sdnotify).
RUNTIME_APT := python3-gi python3-pydbus python3-yaml python3-sdnotify python3-venv dbus systemd
# What the tests add: the package build and lintian (tests/test_package.py),
# a real Slurm (tests/test_integrations_slurm_real.py), and real boots of a
# Debian 12 root under systemd-nspawn (tests/test_boot.py).
TEST_APT := build-essential dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian groff-base git slurmctld slurmd slurm-client debootstrap systemd-container

.PHONY: test check demo deps test-deps bench clean

define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

# apt first, then a venv that sees the Debian packages (--system-site-packages)
# for what Debian does not package (nvidia-ml-py, the test tools).
deps: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	$(call apt_install,$(RUNTIME_APT))
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

test-deps: deps
	$(call apt_install,$(TEST_APT))

# The quality gate runs first (seconds), so CI keeps ruff and mypy at zero;
# the test suite's summary stays the last thing printed.
test: test-deps check
	$(VPY) -m pytest -q

# The quality gate (configured in pyproject.toml): ruff's rule set over every
# Python tree, and mypy --strict over the package.
check: deps
	$(VENV)/bin/ruff check migmanagerd tests benchmarks tools scripts demo
	$(VENV)/bin/mypy

demo: deps
	$(VPY) -m demo

bench: deps
	$(VPY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
