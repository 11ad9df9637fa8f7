#!/usr/bin/env bash
# The failover runbook on one machine: the AWS API emulator with three
# regions, edgeroute-control mirroring it, and the demo proxy for us-east-1
# taking its table from the control plane. Run the runbook commands from
# another terminal; Ctrl-C stops all three.
#
#   scripts/runbook-demo.sh [DEMO OPTIONS]    e.g. --listen 127.0.0.1:18080 --admin 127.0.0.1:19901
#
# The emulator listens on $EMULATOR_ADDRESS (127.0.0.1:5000) and the control
# plane on $CONTROL_ADDRESS (127.0.0.1:9080); the options go to
# `edgeroute-proxy demo` (its defaults: http://127.0.0.1:8080, admin
# 127.0.0.1:9901). The configs, token and logs go to a new folder under
# $TMPDIR (/tmp), kept after the run.
set -euo pipefail
cd "$(dirname "$0")/.."
emulator_address="${EMULATOR_ADDRESS:-127.0.0.1:5000}"
control_address="${CONTROL_ADDRESS:-127.0.0.1:9080}"
bash scripts/prereqs.sh
MOTO_PYTHON="$(bash scripts/emulator.sh)"
export MOTO_PYTHON
cargo build --locked --workspace --bins
bin="$PWD/target/debug"
dir="$(mktemp -d "${TMPDIR:-/tmp}/edgeroute-runbook-demo.XXXXXX")"
# The emulator takes any signed request: dummy static credentials.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true

pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

"$bin/edgeroute-emulator" --dir "$dir" --address "$emulator_address" --control "$control_address" \
  >"$dir/emulator.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  [ -s "$dir/control.toml" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$dir/emulator.log"; exit 1; }
  sleep 0.1
done
[ -s "$dir/control.toml" ] || { echo "the emulator did not start; see $dir/emulator.log" >&2; exit 1; }

"$bin/edgeroute-control" serve --config "$dir/control.toml" >"$dir/control.log" 2>&1 &
pids+=($!)
echo "control plane log: $dir/control.log; emulator log: $dir/emulator.log"
echo "In another terminal, for the commands below:"
echo "  export C=$dir/control.toml PATH=$bin:\$PATH AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true"
"$bin/edgeroute-proxy" demo --control "http://$control_address" --token-file "$dir/token" "$@"
