# devicehub — the two commands of the quick start are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench soak venv mosquitto postgresql clean mosquitto-passwords

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the project's metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Tests and the demo run a private broker; install the Debian package when it is missing.
mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto (Debian package)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
	fi

# The site tests run a private PostgreSQL (initdb + pg_ctl); install Debian's when missing.
postgresql:
	@if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
		echo "installing postgresql (Debian package)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

test: venv mosquitto postgresql
	$(PY) -m pytest -q -p no:cacheprovider

demo: venv mosquitto
	$(PY) -m simulators.demo

bench: venv mosquitto
	$(PY) bench/drivers.py
	@if [ -f bench/safety.py ]; then $(PY) bench/safety.py; fi
	@if [ -f bench/mqtt.py ]; then $(PY) bench/mqtt.py; fi
	@if [ -f bench/site.py ]; then $(MAKE) -s postgresql && $(PY) bench/site.py; fi

# The fault soak (bench/soak.py): SOAK_ARGS="--minutes 60 --seed 7" for a longer one.
SOAK_ARGS ?= --minutes 10
soak: venv mosquitto
	$(PY) bench/soak.py $(SOAK_ARGS)

# Password file for the example secured broker (configs/mosquitto/).
mosquitto-passwords:
	@bash configs/mosquitto/make-passwords.sh

clean:
	rm -rf $(VENV) var .pytest_cache
