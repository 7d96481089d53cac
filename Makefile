# The two commands of the README. Both install what is missing (see scripts/setup.sh).
SHELL := /bin/bash
export CARGO_TERM_COLOR ?= never

.PHONY: demo test build lint bench

# The local demo: control service + Postgres + three local machines with agents + the sample
# app. Runs until Ctrl-C.
demo:
	@url=$$(./scripts/setup.sh) && \
	cargo build --workspace --bins && \
	CANOPY_DATABASE_URL=$$url $${CARGO_TARGET_DIR:-target}/debug/canopy-localstack demo

# The whole test suite: formatting, lints, the EC2 emulator's own tests, unit, integration and
# end-to-end tests.
test:
	@url=$$(./scripts/setup.sh) && \
	cargo fmt --all --check && \
	py=$$(./localstack/moto/install.sh) && \
	$$py localstack/moto/test_canopy_moto.py && \
	cargo build --workspace --bins && \
	cargo clippy --workspace --all-targets -- -D warnings && \
	CANOPY_DATABASE_URL=$$url cargo test --workspace

build:
	cargo build --workspace --bins
