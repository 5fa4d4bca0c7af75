#!/usr/bin/env bash
# AMQP throughput: consume -> journal -> map -> publish with confirms,
# next to the broker's own rates measured in the same run.
#
#   bench/amqp.sh [COUNT]          # default 20000 messages
#   AMQP_URL=amqp://... bench/amqp.sh
#   NZELA=/path/to/other/nzela bench/amqp.sh  # another build, same broker
#   PREFETCH=N CONCURRENCY=N bench/amqp.sh     # nzela's consumer prefetch
#                                              # and publishes in flight
#
# Needs RabbitMQ (default amqp://guest:guest@127.0.0.1:5672/%2f). Every
# message is the sample order (2.4 KiB), persistent, in durable classic
# queues; all confirms and acknowledgements are awaited.
#
# 1. raw publish: one client publishes COUNT messages with confirms
#    (as many in flight as nzela keeps: CONCURRENCY, default 1024) to a
#    queue;
# 2. raw consume: one client consumes them back, acknowledging each
#    (prefetch 500);
# 2a. raw publish and consume at once, the loop of rabbitmq-perf-test
#    with --confirm: one client publishes COUNT messages with confirms
#    (the same window) while another, on its own connection, consumes and
#    acknowledges them (prefetch 500): per message the broker takes a
#    confirmed publish, a delivery and an acknowledgement, what it does for
#    each of nzela's messages below;
# 2b. raw relay: COUNT messages wait in a queue; one client consumes them
#    (prefetch: the same window), publishes each to another queue with confirms and
#    acknowledges it once confirmed: a bridge with no journal and no
#    mapping, the most any consume -> publish path gets from this broker;
# 3. nzela: COUNT orders wait in its input queue; nzela consumes them
#    (prefetch 500, or PREFETCH), commits each to its journal (fsync'ed group commits)
#    before acknowledging it, maps it to the customs declaration and
#    publishes that with confirms (the destination's default of 1024 in
#    flight; CONCURRENCY=N to change it); timed from the first declaration
#    to the last as they arrive on a bound queue, which nobody consumes (as
#    for the raw publish): `amqp_rate count` polls its length. Consuming
#    the declarations as well took a fifth of the machine.
#
# nzela, the broker and the clients share the machine: compare figures of
# one run, not across machines.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-20000}
# Messages awaiting their confirm: nzela's destination and the raw
# clients keep the same window.
WINDOW=${CONCURRENCY:-1024}
URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
ORDER=tests/fixtures/samples/marketplace/order-paid.json

cargo build --release --quiet --bin nzela
cargo build --release --quiet -p nzela-connectors --example amqp_rate
target=${CARGO_TARGET_DIR:-target}/release
# NZELA=path/to/nzela measures another build (one of an earlier commit).
bin=${NZELA:-$target/nzela}
rate=$target/examples/amqp_rate
work=$(mktemp -d)
run=bench-$$-$(date +%s)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  for q in "$run.raw" "$run.pubsub" "$run.in" "$run.out" "$run.relay-in" "$run.relay-out"; do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
# CPU time (user + system, clock ticks) a process has used so far.
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
beam=$(pgrep -f beam.smp | head -1 || true)
# Microseconds of CPU per message between two tick counts.
per_msg() { echo "($2 - $1) * 1000000 / $hz / $COUNT" | bc; }

echo "== broker: raw publish and consume ($COUNT messages)"
b0=$(ticks "$beam")
raw_pub=$("$rate" publish "$URL" "$run.raw" "$COUNT" "$ORDER" "$WINDOW")
b1=$(ticks "$beam")
echo "$raw_pub (broker CPU $(per_msg "$b0" "$b1") us per message)"
raw_con=$("$rate" consume "$URL" "$run.raw" "$COUNT" 500)
echo "$raw_con"
raw_pubsub=$("$rate" pubsub "$URL" "$run.pubsub" "$COUNT" "$ORDER" "$WINDOW")
echo "$raw_pubsub"
"$rate" publish "$URL" "$run.relay-in" "$COUNT" "$ORDER" 256 >/dev/null
raw_relay=$("$rate" relay "$URL" "$run.relay-in" "$run.relay-out" "$COUNT" "$WINDOW")
echo "$raw_relay"

cat > "$work/nzela.toml" <<TOML
shutdown_timeout = "10s"
[journal]
path = "$work/nzela.db"
[log]
level = "warn"
[sources.orders]
type = "amqp"
url = "$URL"
queue = "$run.in"
prefetch = ${PREFETCH:-500}
format = "json"
business_key = "order.order_id"
[[sources.orders.topology.queues]]
name = "$run.in"
[destinations.customs]
type = "amqp"
url = "$URL"
exchange = "$run.customs"
routing_key = "declaration.export"
concurrency = $WINDOW
[[destinations.customs.topology.exchanges]]
name = "$run.customs"
kind = "topic"
durable = false
auto_delete = true
[[destinations.customs.topology.queues]]
name = "$run.out"
[[destinations.customs.topology.bindings]]
queue = "$run.out"
exchange = "$run.customs"
routing_key = "declaration.#"
[routes.order_to_customs]
from = "orders"
mapping = "$PWD/mappings/marketplace-order-to-asycuda-export.yaml"
to = "customs"
TOML

echo "== nzela: consume -> journal -> map -> publish with confirms ($COUNT orders)"
# The orders wait in the queue before nzela starts.
"$rate" publish "$URL" "$run.in" "$COUNT" "$ORDER" 256 >/dev/null
# The output queue exists before it is counted (nzela binds it).
"$rate" publish "$URL" "$run.out" 0 "$ORDER" >/dev/null
b0=$(ticks "$beam")
"$bin" run --config "$work/nzela.toml" > "$work/nzela.log" 2>&1 &
pid=$!
start=$(date +%s.%N)
e2e=$("$rate" count "$URL" "$run.out" "$COUNT")
end=$(date +%s.%N)
echo "$e2e (declarations arriving)"
echo "from nzela's start to the last declaration: $(echo "$end - $start" | bc) s"
echo "nzela RSS at the end: $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") KiB"
b1=$(ticks "$beam")
echo "CPU per message over the run: nzela $(per_msg 0 "$(ticks "$pid")") us, broker $(per_msg "$b0" "$b1") us"

kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

r() { sed -E 's/.*: ([0-9]+) msg\/s.*/\1/' <<<"$1"; }
echo
echo "| measure | msg/s |"
echo "|---|---|"
echo "| broker: confirmed publish, 1 client, $WINDOW in flight | $(r "$raw_pub") |"
echo "| broker: consume with acks, 1 client, prefetch 500 | $(r "$raw_con") |"
echo "| broker: confirmed publish and consume at once (perf-test loop), $WINDOW in flight | $(r "$raw_pubsub") |"
echo "| broker: relay (consume, confirmed publish, ack), 1 client, $WINDOW in flight | $(r "$raw_relay") |"
echo "| nzela: consume -> journal -> map -> confirmed publish | $(r "$e2e") |"
