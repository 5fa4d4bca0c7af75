#!/usr/bin/env bash
# bench/amqp.sh run ROUNDS times in a row, with the ratio of nzela's rate
# to the broker's confirmed publish rate of each run, and their median:
# on a shared machine one run can land anywhere in a wide band.
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
# The figure of one line of bench/amqp.sh's summary table.
col() { grep -F "$2" <<<"$1" | awk -F'|' '{gsub(/ /, "", $3); print $3}'; }
echo "| round | confirmed publish | relay | nzela | nzela / publish | CPU per message (nzela, broker) |"
echo "|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
  out=$(bench/amqp.sh "$COUNT" 2>&1) || { echo "$out" >&2; exit 1; }
  pub=$(col "$out" "| broker: confirmed publish")
  relay=$(col "$out" "| broker: relay")
  nz=$(col "$out" "| nzela: consume")
  cpu=$(sed -nE 's/^CPU per message over the run: nzela ([0-9]+) us, broker ([0-9]+) us$/\1 µs, \2 µs/p' <<<"$out")
  ratio=$((nz * 100 / pub))
  ratios+=("$ratio")
  echo "| $round | $pub | $relay | $nz | $ratio % | $cpu |"
done
# The middle round; of an even number, the lower of the two middle ones.
sorted=$(printf '%s\n' "${ratios[@]}" | sort -n)
median=$(sed -n "$(((ROUNDS + 1) / 2))p" <<<"$sorted")
echo
echo "nzela / confirmed publish over $ROUNDS rounds: $(head -1 <<<"$sorted") – $(tail -1 <<<"$sorted") %, median $median %"
