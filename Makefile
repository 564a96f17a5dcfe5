# The two commands: `make demo` and `make test`. Both install what is missing
# first and are safe to run again.

VENV   := .venv
PY     := $(VENV)/bin/python
# openssl: the TLS tests and bench/write.py --tls make their certificates with it
APT    := fuse3 libfuse3-dev pkg-config openssl
STAMP  := $(VENV)/.installed

.PHONY: demo test deps lint bench clean

deps: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for p in $(APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: deps
	$(PY) -m fsrep._demo

# pytest exits 5 when it collects nothing; that is a failure here too. Three
# workers (pytest-xdist) on two cores: most of a mount test's time is spent
# waiting on its daemons (measured here: 1718 tests in 11 min 56 s with three,
# 20 min 27 s with two).
test: deps
	$(PY) -m pytest -q -p no:cacheprovider -n 3 tests

lint: deps
	$(VENV)/bin/ruff check fsrep tracking transport tools tests bench

# bench/run.py installs what it misses (fio, GlusterFS, rsync, iproute2) itself.
bench: deps
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
