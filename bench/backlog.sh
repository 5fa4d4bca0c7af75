#!/usr/bin/env bash
# A destination down while orders keep coming: the backlog must grow on
# disk (the journal), not in memory.
#
#   bench/backlog.sh [SECONDS] [CONNECTIONS]
#
# nzela runs the default routes, but both destinations are HTTP endpoints
# that refuse connections (127.0.0.1:9), retried every second or so. wrk
# posts orders for SECONDS; every 5 s the script prints nzela's resident
# memory, the journal's size on disk and the 202 count so far. Flat memory
# with a growing journal is the expected shape. Needs wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN=${1:-60}
CONNECTIONS=${2:-32}
PORT=${PORT:-18081}

. bench/lib.sh

root=$(pwd)
cat > "$work/nzela.toml" <<EOF
shutdown_timeout = "5s"
[journal]
path = "$work/nzela.db"
[log]
level = "error"
[sources.marketplace_orders]
type = "http_server"
listen = "127.0.0.1:$PORT"
path = "/in/marketplace/orders"
format = "json"
business_key = "order.order_id"
[destinations.customs]
type = "http"
url = "http://127.0.0.1:9/declarations"
timeout = "2s"
retry = { max_attempts = 100000, initial_backoff = "200ms", max_backoff = "1s", max_age = "0s" }
[destinations.commerce]
type = "http"
url = "http://127.0.0.1:9/orders"
timeout = "2s"
retry = { max_attempts = 100000, initial_backoff = "200ms", max_backoff = "1s", max_age = "0s" }
[routes.order_to_customs]
from = "marketplace_orders"
mapping = "$root/mappings/marketplace-order-to-asycuda-export.yaml"
to = "customs"
[routes.order_to_commerce]
from = "marketplace_orders"
mapping = "$root/mappings/marketplace-order-to-ubl-order.yaml"
to = "commerce"
EOF
start_nzela "$work/nzela.toml" "$PORT"

size() { du -sk "$work" | awk '{print $1}'; }
echo "t(s)  nzela RSS (KiB)  journal on disk (KiB)"
(t=0; while kill -0 "$pid" 2>/dev/null; do printf '%4d  %15s  %21s\n' "$t" "$(rss)" "$(size)"; sleep 5; t=$((t + 5)); done) &
sampler=$!
ORDER_FILE=tests/fixtures/samples/marketplace/order-paid.json \
  wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_RUN}s" -s bench/post-order.lua \
  "http://127.0.0.1:$PORT/in/marketplace/orders" > "$work/wrk.txt"
kill "$sampler" 2>/dev/null || true
accepted=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
refused=$(awk -F= '/not_accepted/ {print $2}' "$work/wrk.txt")
echo "accepted (202): $((accepted - refused)) of $accepted requests in ${SECONDS_RUN}s"
sleep 5
echo "after the stream, deliveries still retrying: RSS $(rss) KiB, journal $(size) KiB"
echo "messages with a delivery waiting: $("$bin" messages list --config "$work/nzela.toml" \
  --state pending --limit 100000000 --json | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')"
kill -TERM "$pid"; wait "$pid" || true
