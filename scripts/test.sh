#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the build prerequisites
# and the AWS API emulator the control-plane tests talk to, builds the
# binaries the integration tests drive, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh

# moto in server mode, pinned: tests/moto/launcher.py patches this version.
MOTO_VERSION=5.2.5
venv=target/moto-venv
if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  echo "installing moto[server]==$MOTO_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
fi
export MOTO_PYTHON="$PWD/$venv/bin/python"

# Build the binaries with the tests, so dependencies are compiled once with
# the features the tests unify, not once for the binaries and again for tests.
cargo build --locked --workspace --bins --tests
cargo test --locked --workspace --no-fail-fast
