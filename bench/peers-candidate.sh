#!/usr/bin/env bash
# Runs the release edgeroute-proxy as the candidate of a side-by-side peer
# comparison harness: serves http://127.0.0.1:PORT by proxying to BACKEND,
# with the same settings as `edgeroute-bench throughput` (1 worker thread,
# probes and outlier detection on, access log off).
#   CANDIDATE_CMD='bench/peers-candidate.sh {port} {backend}' bash peers.sh
set -euo pipefail
port=$1
backend=$2
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${EDGEROUTE_PROXY_BIN:-$here/target/release/edgeroute-proxy}"
dir="$(mktemp -d /tmp/edgeroute-peers.XXXXXX)"
# The admin listener needs a port of its own (0 is refused): a free one.
admin_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$dir/table.json" <<JSON
{"epoch": 1, "version": 1, "primary_region": "bench", "failover_in_progress": false, "regions": [{"name": "bench", "state": "active"}]}
JSON
cat >"$dir/edgeroute.toml" <<TOML
local_region = "bench"
[[listeners]]
address = "127.0.0.1:$port"
[admin]
address = "127.0.0.1:$admin_port"
[[regions]]
name = "bench"
backends = ["$backend"]
[table]
source = "file"
path = "table.json"
[log]
access = false
level = "warn"
[runtime]
threads = 1
TOML
# Run as a child, so that the scratch folder goes when the harness stops
# this script.
"$bin" run --config "$dir/edgeroute.toml" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
wait "$pid"
