#!/usr/bin/env bash
# Installs the AWS API emulator (moto in server mode, pinned: the launcher in
# tests/moto/ patches this version) into target/moto-venv, once.
# Prints the Python to run it with.
set -euo pipefail
cd "$(dirname "$0")/.."
MOTO_VERSION=5.2.5
venv=target/moto-venv
if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  echo "installing moto[server]==$MOTO_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
fi
echo "$PWD/$venv/bin/python"
