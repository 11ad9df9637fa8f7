#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the build prerequisites
# and the AWS API emulator the control-plane tests talk to, builds the
# binaries the integration tests drive, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh

# The AWS API emulator the control-plane tests start (moto, pinned).
MOTO_PYTHON="$(bash scripts/emulator.sh)"
export MOTO_PYTHON

# Build the binaries with the tests, so dependencies are compiled once with
# the features the tests unify, not once for the binaries and again for tests.
cargo build --locked --workspace --bins --tests
cargo test --locked --workspace --no-fail-fast
