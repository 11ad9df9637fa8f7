#!/usr/bin/env bash
# The failover runbook on one machine: the AWS API emulator with three
# regions (127.0.0.1:5000), edgeroute-control mirroring it (127.0.0.1:9080),
# and the demo proxy for us-east-1 (http://127.0.0.1:8080) taking its table
# from the control plane. Run the runbook commands from another terminal;
# Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
MOTO_PYTHON="$(bash scripts/emulator.sh)"
export MOTO_PYTHON
cargo build --locked --workspace --bins
bin=target/debug
dir=target/runbook-demo
# The emulator takes any signed request: dummy static credentials.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
rm -rf "$dir" && mkdir -p "$dir"

pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

"$bin/edgeroute-emulator" --dir "$dir" >"$dir/emulator.log" 2>&1 &
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
echo "  export C=$PWD/$dir/control.toml PATH=$PWD/$bin:\$PATH AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true"
"$bin/edgeroute-proxy" demo --control http://127.0.0.1:9080 --token-file "$PWD/$dir/token"
