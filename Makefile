# Two commands do all set-up on a fresh Debian 12 machine (as root):
#   make test   installs what the tests need, then runs them
#   make demo   installs what the demo needs, then runs it
PYTHON ?= /usr/bin/python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
APT_PACKAGES := python3-gi python3-pydbus python3-yaml python3-sdnotify python3-venv dbus systemd build-essential dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian groff-base git

.PHONY: test demo deps venv bench clean

deps: $(VENV)/.stamp

# apt first (Debian packages pydbus/PyGObject/sdnotify), then a venv that sees
# them (--system-site-packages) for what Debian does not package.
$(VENV)/.stamp: pyproject.toml
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

test: deps
	$(VPY) -m pytest -q

demo: deps
	$(VPY) -m migmanagerd.demo

bench: deps
	$(VPY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
