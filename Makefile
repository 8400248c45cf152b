# moat — see README.md. Every target installs what it needs on Debian 12.
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests and the demo use
DEB_PKGS := busybox-static umoci tar gzip zstd iproute2 util-linux ca-certificates
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build lint test demo clean

all: build

deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest

build:
	cargo build --workspace --all-targets

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

test: deps lint
	cargo nextest run --workspace --no-fail-fast

demo: deps
	cargo build --release -p moat
	MOAT=$(CURDIR)/target/release/moat ./scripts/demo.sh

clean:
	cargo clean
