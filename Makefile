# gslb-edge: `make lab` to run it, `make test` to test it.
# Every target installs what it needs first (idempotent, quick when already done).

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
GSLB    := $(BIN)/gslb
STAMP   := $(VENV)/.installed
# Debian packages the tests and the lab use: command -> package
# (gdnsd and nginx: the bench's unit tests check the peers' generated configs with them;
#  go and HashiCorp's yamux source: the tunnel's interop test builds its Go peer offline;
#  delv, drill, ldns-verify-zone: real DNSSEC validators judge the signed answers;
#  prometheus: the lab's metrics host scrapes every daemon's /metrics;
#  systemd-analyze, strace: tests/test_deploy_units.py and test_deploy_syscalls.py check the units of deploy/;
#  pebble: the lab's ACME CA, and with pebble-challtestsrv the ACME client's tests;
#  node, npm: the lab's idp host runs npm oidc-provider (netns/idp/); chromium: headless logins in tests)
SYSTOOLS := dig:dnsutils kdig:knot-dnsutils delv:bind9-dnsutils drill:ldnsutils \
            ldns-verify-zone:ldnsutils unbound:unbound curl:curl ip:iproute2 etcd:etcd-server \
            etcdctl:etcd-client gdnsd:gdnsd nginx:nginx-light \
            /usr/lib/nginx/modules/ngx_stream_module.so:libnginx-mod-stream \
            go:golang-go tmux:tmux prometheus:prometheus node:nodejs npm:npm chromium:chromium systemd-analyze:systemd strace:strace \
            pebble:pebble pebble-challtestsrv:pebble xmlsec1:xmlsec1 \
            /usr/share/gocode/src/github.com/hashicorp/yamux/session.go:golang-github-hashicorp-yamux-dev
BENCHTOOLS := dnsperf:dnsperf wrk:wrk

.PHONY: install systools test unit integration lab lab-down lab-status bench clean help

help:
	@echo "make install   create .venv, install gslb-edge and the system tools the tests use"
	@echo "make lab       build the lab (network namespaces; needs root)"
	@echo "make lab-down  remove the lab"
	@echo "make test      unit + integration + lab tests"
	@echo "make bench     benchmarks against gdnsd and nginx"

# System tools, only where missing; apt-get update only when something is missing.
systools:
	@$(PY) scripts/ensure_tools.py $(SYSTOOLS)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

examples/lab.mmdb: examples/geo-table.toml $(STAMP)
	$(GSLB) geo build-mmdb examples/geo-table.toml --out examples/lab.mmdb

# The lab idp host's OpenID Connect provider: its npm project, installed from the lock file.
IDP_MODULES := netns/idp/node_modules/.package-lock.json
$(IDP_MODULES): netns/idp/package.json netns/idp/package-lock.json
	cd netns/idp && npm ci --omit=dev --no-audit --no-fund

install: systools $(STAMP) examples/lab.mmdb $(IDP_MODULES)

test: install
	$(BIN)/python -m pytest tests

unit: install
	$(BIN)/python -m pytest tests -m "not integration and not lab"

integration: install
	$(BIN)/python -m pytest tests -m "integration or lab"

lab: install
	$(GSLB) lab up

lab-down: install
	$(GSLB) lab down

lab-status: install
	$(GSLB) lab status

# make bench [QUICK=1] [PROFILE=1]: ours vs gdnsd and nginx, same run, own namespaces (root)
bench: install
	@$(PY) scripts/ensure_tools.py $(BENCHTOOLS)
	$(BIN)/python -m bench.run $(if $(QUICK),--quick) $(if $(PROFILE),--profile)

clean:
	rm -rf $(VENV) *.egg-info examples/lab.mmdb .pytest_cache
