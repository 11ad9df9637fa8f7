#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the build prerequisites,
# builds the binaries the integration tests drive, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
cargo build --locked --workspace --bins
cargo test --locked --workspace --no-fail-fast
