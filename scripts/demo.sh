#!/usr/bin/env bash
# The demo: three simulated regions (us-east-1, eu-west-1, ap-southeast-1)
# behind a proxy for us-east-1 on http://127.0.0.1:8080, admin on
# http://127.0.0.1:9901. Extra arguments go to `edgeroute-proxy demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
exec cargo run --locked -p edgeroute-proxy -- demo "$@"
