#!/usr/bin/env bash
# bench/amqp.sh run ROUNDS times in a row, with the ratios of nzela's rate
# to the broker's confirmed publish rate (publishing alone) and to its
# perf-test loop (confirmed publish and consume at once) of each run, and
# their medians: on a shared machine one run can land anywhere in a wide
# band.
#
#   bench/amqp-rounds.sh [ROUNDS] [COUNT]   # default 5 rounds of 20000
#
# The environment of bench/amqp.sh (AMQP_URL, NZELA, PREFETCH,
# CONCURRENCY) applies to every round.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
COUNT=${2:-20000}
ratios=()
loops=()
# The figure of one line of bench/amqp.sh's summary table.
col() { grep -F "$2" <<<"$1" | awk -F'|' '{gsub(/ /, "", $3); print $3}'; }
echo "| round | confirmed publish | perf-test loop | relay | nzela | nzela / publish | nzela / perf-test loop | CPU per message (nzela, broker) |"
echo "|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
  out=$(bench/amqp.sh "$COUNT" 2>&1) || { echo "$out" >&2; exit 1; }
  pub=$(col "$out" "| broker: confirmed publish, ")
  loop=$(col "$out" "| broker: confirmed publish and consume")
  relay=$(col "$out" "| broker: relay")
  nz=$(col "$out" "| nzela: consume")
  cpu=$(sed -nE 's/^CPU per message over the run: nzela ([0-9]+) us, broker ([0-9]+) us$/\1 µs, \2 µs/p' <<<"$out")
  ratio=$((nz * 100 / pub))
  ratios+=("$ratio")
  loops+=("$((nz * 100 / loop))")
  echo "| $round | $pub | $loop | $relay | $nz | $ratio % | ${loops[-1]} % | $cpu |"
done
# The range and the middle round of some ratios; of an even number of
# rounds, the lower of the two middle ones.
spread() {
  local sorted
  sorted=$(printf '%s\n' "$@" | sort -n)
  echo "$(head -1 <<<"$sorted") – $(tail -1 <<<"$sorted") %, median $(sed -n "$((($# + 1) / 2))p" <<<"$sorted") %"
}
echo
echo "nzela / confirmed publish over $ROUNDS rounds: $(spread "${ratios[@]}")"
echo "nzela / perf-test loop over $ROUNDS rounds: $(spread "${loops[@]}")"
