# The two commands of the README. Both install what is missing (see scripts/setup.sh).
SHELL := /bin/bash
export CARGO_TERM_COLOR ?= never

.PHONY: demo test build lint bench

# The local demo: Postgres, the emulated clouds (EC2, Azure, OpenStack, Redfish bare metal),
# the control service, machines bought or powered on for the sample apps. Runs until Ctrl-C.
demo:
	@url=$$(./scripts/setup.sh) && \
	cargo build --workspace --bins && \
	CANOPY_DATABASE_URL=$$url $${CARGO_TARGET_DIR:-target}/debug/canopy-localstack demo

# The whole test suite: formatting, lints, the emulated clouds' own tests, unit, integration
# and end-to-end tests.
test:
	@url=$$(./scripts/setup.sh test) && \
	cargo fmt --all --check && \
	py=$$(./localstack/moto/install.sh) && \
	$$py localstack/moto/test_canopy_moto.py && \
	py=$$(./localstack/redfish/install.sh) && \
	$$py localstack/redfish/test_canopy_redfish.py && \
	python3 localstack/openstack/test_canopy_openstack.py && \
	python3 localstack/azure/test_canopy_azure.py && \
	cargo build --workspace --bins && \
	cargo clippy --workspace --all-targets -- -D warnings && \
	CANOPY_DATABASE_URL=$$url cargo test --workspace

build:
	cargo build --workspace --bins
