#!/usr/bin/env bash
# Installs what building and testing edgeroute needs beyond the Rust
# toolchain: cmake and a C compiler, which pingora-core's zlib-ng build
# uses, and Python 3 with venv, in which the tests' AWS API emulator is
# installed (scripts/emulator.sh). Safe to run again.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
# Debian's python3 leaves venv's pip bootstrap to python3-venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3 python3-venv)

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
