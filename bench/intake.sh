#!/usr/bin/env bash
# Sustained intake on the default configuration: HTTP POST of the sample
# order -> journal (fsync'ed group commits) -> both mapped documents
# written to their outboxes.
#
#   bench/intake.sh [SECONDS] [CONNECTIONS]
#   INTAKE_ONLY=1 bench/intake.sh ...   # no routes: the 202 rate alone
#   WARMUP=S bench/intake.sh ...        # S seconds of load before the
#                                       # measured run (default 10; 0: none)
#
# The measured run follows a warm-up on the same process: the first
# seconds of a fresh nzela are slower than the rest (its journal and
# memory are new). The warm-up's rate is printed as well, and its orders
# count among those whose documents are awaited.
#
# Needs wrk (Debian: apt-get install wrk). Prints the rate of 202 answers
# (every one backed by a committed, fsync'ed journal write), the rate at
# which output files were written, and nzela's memory along the way.
# nzela and wrk share the machine: compare figures of one run, not across
# machines.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN=${1:-20}
CONNECTIONS=${2:-64}
PORT=${PORT:-18080}
WARMUP=${WARMUP:-10}

. bench/lib.sh

sed -e "s|127.0.0.1:8080|127.0.0.1:$PORT|" \
    -e "s|data/|$work/data/|g" \
    -e 's|level = "info"|level = "warn"|' \
    config/nzela.toml > "$work/nzela.toml"
if [ -n "${INTAKE_ONLY:-}" ]; then
  # Keep sources and destinations, drop the routes: every order is
  # committed and kept as unrouted.
  awk '/^\[routes\./ { skip = 1 } /^\[(sources|destinations)\./ { skip = 0 } !skip' \
    "$work/nzela.toml" > "$work/intake.toml" && mv "$work/intake.toml" "$work/nzela.toml"
fi
start_nzela "$work/nzela.toml" "$PORT"

# Reading a folder of 100 000 names takes CPU from nzela: done once a
# second, one folder at a time, and not at all by the memory sampler.
count() { ls -f "$work/data/out/$1" 2>/dev/null | grep -c '\.xml$' || true; }

echo "nzela RSS before: $(rss) KiB"
(while kill -0 "$pid" 2>/dev/null; do echo "$(date +%s) $(rss)"; sleep 1; done) > "$work/samples" &
load() {
  RUN=$1 ORDER_FILE=tests/fixtures/samples/marketplace/order-paid.json \
    wrk -t${WRK_THREADS:-1} -c"$CONNECTIONS" -d"$2s" --latency -s bench/post-order.lua \
    "http://127.0.0.1:$PORT/in/marketplace/orders"
}
# Requests sent and answers other than 202 of a wrk run's output.
sent() { awk '/requests in/ {print $1}' "$1"; }
not_accepted() { awk -F= '/not_accepted/ {print $2}' "$1"; }
begin=$(date +%s.%N)
t_begin=$(ticks)
warm_accepted=0
if [ "$WARMUP" -gt 0 ]; then
  load WARM "$WARMUP" > "$work/warmup.txt"
  warm_accepted=$(($(sent "$work/warmup.txt") - $(not_accepted "$work/warmup.txt")))
  echo "warm-up, not counted: $warm_accepted orders accepted in ${WARMUP} s, $(awk '/Requests\/sec/ {print $2}' "$work/warmup.txt") requests/s"
fi
t0=$(ticks)
times > "$work/times.0"
load LOAD "$SECONDS_RUN" | tee "$work/wrk.txt"
accepted=$(sent "$work/wrk.txt")
refused=$(not_accepted "$work/wrk.txt")
t1=$(ticks)
times > "$work/times.1"
echo "accepted (202): $((accepted - refused)) of $accepted requests"
echo "nzela CPU while taking them in: $(per_order "$t0" "$t1" "$accepted") us per order"
echo "wrk's own CPU: $(echo "($(children_cpu "$work/times.1") - $(children_cpu "$work/times.0")) * 1000000 / $accepted" | bc) us per request"

if [ -n "${INTAKE_ONLY:-}" ]; then
  echo "nzela RSS after: $(rss) KiB; peak sampled: $(awk '{print $2}' "$work/samples" | sort -n | tail -1) KiB"
  exit 0
fi
# Wait until every accepted order, the warm-up's too, has both documents.
want=$((accepted - refused + warm_accepted))
for outbox in customs commerce; do
  while [ "$(count $outbox)" -lt "$want" ]; do
    sleep 1
    if ! kill -0 "$pid" 2>/dev/null; then echo "nzela died" >&2; cat "$work/nzela.log" >&2; exit 1; fi
  done
done
end=$(date +%s.%N)
echo "nzela CPU from the first order to the last document: $(per_order "$t_begin" "$(ticks)" "$want") us per order"
awk -v s="$begin" -v e="$end" -v n="$want" -v c="$(count customs)" -v u="$(count commerce)" \
  'BEGIN { printf "outputs: %d declarations and %d UBL orders in %.1f s = %.0f documents/s (%.0f orders/s)\n", c, u, e - s, 2 * n / (e - s), n / (e - s) }'
echo "nzela RSS after: $(rss) KiB; peak sampled: $(awk '{print $2}' "$work/samples" | sort -n | tail -1) KiB"
kill -TERM "$pid"; wait "$pid" || true
