# Shared by the HTTP load scripts (sourced, not run): checks for wrk,
# builds nzela in release mode, and starts and watches it.
#
#   start_nzela CONFIG PORT   runs nzela on CONFIG (log in $work/nzela.log),
#                             sets $pid, waits until /health answers
#   rss                       nzela's resident memory, KiB
#   ticks, per_order          nzela's CPU time, and per order
#   children_cpu FILE         CPU seconds the script's finished children
#                             (wrk, once it has ended) had used when
#                             `times > FILE` ran in the script's own shell

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
# NZELA=path/to/nzela measures another build (one of an earlier commit).
bin=${NZELA:-${CARGO_TARGET_DIR:-target}/release/nzela}
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

start_nzela() {
  "$bin" run --config "$1" 2> "$work/nzela.log" &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$2/health" >/dev/null && break; sleep 0.1; done
}

rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }

# CPU time (user + system, clock ticks) nzela has used so far, and the
# microseconds of it per order between two readings: per_order T0 T1 N.
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
per_order() { echo "($2 - $1) * 1000000 / $hz / $3" | bc; }

# User and system seconds of the children a shell had waited for, from
# what its `times` wrote (second line, such as "0m1.250s 0m0.310s").
children_cpu() {
  awk 'NR == 2 {
    split($1, u, /[ms]/); split($2, s, /[ms]/)
    printf "%.3f\n", u[1] * 60 + u[2] + s[1] * 60 + s[2]
  }' "$1"
}
