#!/usr/bin/env bash
# Profiles the relay in S1's setup (HTTPS + client certificates in, TLS out to the bench sink,
# 4 connections, 100-event Metadata batches) and writes what BENCHMARKS.md quotes:
#   flame     perf record -g of the relay under load -> docs/flamegraph-s1.svg (inferno)
#   allocs    valgrind DHAT over EVENTS events (default 20 000) -> allocations and bytes per event
#   syscalls  strace -c -f over EVENTS events -> syscalls per request (100 events)
#   instructions  valgrind callgrind over EVENTS events -> instructions per event (repeatable,
#             unlike seconds on a shared VM; compare builds with it)
# Usage: scripts/profile.sh [flame] [allocs] [syscalls] [instructions]
#   (default: flame allocs syscalls)
# Environment: QUEUE=disk|memory (default disk), EVENTS, SECONDS_UNDER_PERF (default 10),
# RELAY_BIN (another build of the relay, to compare), INTEGRITY=pen|seq|chain (pen: only
# syslog.enterprise_id; seq: that and syslog.sequence_id; chain: also [integrity], the hash chain and signed checkpoints; compare
# the two to see what the chain costs), CALLGRIND_OUT (keep callgrind's file there, for
# callgrind_annotate), PERF_DATA (keep perf's file there, for perf report), FLAME_SVG (where
# the flame graph goes instead of docs/flamegraph-s1.svg), DHAT_OUT (keep DHAT's file there),
# LOAD_ARGS (more load generator options, e.g. "--event-bytes 200000"), TARGET=ceiling (profile
# scripts/bench.sh's bare forwarder instead of the relay, to see where the relay's extra cost is).
# Installs linux-perf, valgrind and strace from Debian and inferno with cargo when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
queue=${QUEUE:-disk}
events=${EVENTS:-20000}
work=$(mktemp -d "${TMPDIR:-/tmp}/kar-profile.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

need_apt=()
command -v perf >/dev/null || need_apt+=(linux-perf)
command -v valgrind >/dev/null || need_apt+=(valgrind)
command -v strace >/dev/null || need_apt+=(strace)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
cargo build --release --locked --bins >/dev/null 2>&1 || cargo build --release --locked --bins
relay_bin=${RELAY_BIN:-$root/target/release/kube-audit-relay}
bench_bin=$root/target/release/kube-audit-relay-bench
[ -f certs/ca.crt ] || "$relay_bin" gen-certs certs > /dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_pair [WRAPPER...]: the sink, then the relay (under WRAPPER); sets relay_pid, port.
start_pair() {
  "$bench_bin" sink --tls-cert certs/server.crt --tls-key certs/server.key --stats "$work/sink.json" \
      > "$work/sink.out" 2>&1 &
  pids+=($!)
  local sink_addr=""
  for _ in $(seq 100); do
    sink_addr=$(grep -o '127.0.0.1:[0-9]*' "$work/sink.out" 2>/dev/null || true)
    [ -n "$sink_addr" ] && break; sleep 0.05
  done
  port=$(free_port)
  rm -rf "$work/queue"
  cat > "$work/relay.toml" <<EOF
[listen]
address = "127.0.0.1:$port"
tls_cert = "$root/certs/server.crt"
tls_key = "$root/certs/server.key"
client_ca = "$root/certs/ca.crt"
[queue]
kind = "$queue"
data_dir = "$work/queue"
[syslog]
max_message_bytes = "1MiB"
[[destination]]
name = "sink"
url = "tls://$sink_addr"
ca = "$root/certs/ca.crt"
server_name = "localhost"
EOF
  case "${INTEGRITY:-}" in
    pen|chain) sed -i 's/^\[syslog\]$/[syslog]\nenterprise_id = 32473/' "$work/relay.toml" ;;
    seq) sed -i 's/^\[syslog\]$/[syslog]\nenterprise_id = 32473\nsequence_id = true/' "$work/relay.toml" ;;
  esac
  if [ "${INTEGRITY:-}" = chain ]; then
    [ -f "$work/keys/signing.key" ] || "$relay_bin" gen-signing-key "$work/keys" > /dev/null
    printf '[integrity]\nsigning_key = "%s"\n' "$work/keys/signing.key" >> "$work/relay.toml"
  fi
  # `run` re-executes itself with this value when GLIBC_TUNABLES is unset (src/heap.rs); under
  # valgrind that exec would leave the tool, so the relay gets it from the start.
  if [ "${TARGET:-relay}" = ceiling ]; then
    "$@" "$bench_bin" ceiling --listen "127.0.0.1:$port" --tls-cert certs/server.crt \
      --tls-key certs/server.key --client-ca certs/ca.crt --to "$sink_addr" --ca certs/ca.crt \
      > /dev/null 2> "$work/relay.err" &
  else
    GLIBC_TUNABLES=${GLIBC_TUNABLES-glibc.malloc.mmap_threshold=4194304} RUST_LOG=warn \
      "$@" "$relay_bin" run --config "$work/relay.toml" > /dev/null 2> "$work/relay.err" &
  fi
  relay_pid=$!; pids+=("$relay_pid")
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1
  done
  echo "relay did not start: $(cat "$work/relay.err")" >&2; exit 1
}

load() {
  "$bench_bin" load --url "https://127.0.0.1:$port/" --ca certs/ca.crt --cert certs/client.crt \
      --key certs/client.key --connections 4 --batch 100 ${LOAD_ARGS:-} "$@" > "$work/load.json"
}

wait_sink() {
  for _ in $(seq 600); do
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["events"] >= int(sys.argv[2]) else 1)' \
      "$work/sink.json" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
}

stop_pair() {
  kill -TERM "$relay_pid" 2>/dev/null || true
  wait "$relay_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

flame() {
  start_pair
  load --duration "$(( ${SECONDS_UNDER_PERF:-10} + 4 ))s" &
  local load_pid=$!
  sleep 2
  perf record -F 499 -g -p "$relay_pid" -o "$work/perf.data" -- sleep "${SECONDS_UNDER_PERF:-10}" >/dev/null 2>&1
  wait "$load_pid"
  stop_pair
  if [ -n "${PERF_DATA:-}" ]; then cp "$work/perf.data" "$PERF_DATA"; fi
  local svg=${FLAME_SVG:-docs/flamegraph-s1.svg}
  perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf > "$work/folded"
  inferno-flamegraph --title "kube-audit-relay, S1 ($queue queue${INTEGRITY:+, $INTEGRITY}), $(nproc) CPUs" \
      < "$work/folded" > "$svg"
  echo "flame: $svg ($(wc -l < "$work/folded") stacks)"
}

allocs() {
  start_pair valgrind --tool=dhat --dhat-out-file="$work/dhat.out"
  load --events "$events" --duration 600s
  wait_sink "$events"
  stop_pair
  if [ -n "${DHAT_OUT:-}" ]; then cp "$work/dhat.out" "$DHAT_OUT"; fi
  python3 - "$work/dhat.out" "$events" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); n = int(sys.argv[2])
blocks = sum(p["tbk"] for p in d["pps"]); size = sum(p["tb"] for p in d["pps"])
print(f"allocs: {blocks:,} allocations, {size:,} bytes for {n:,} events: "
      f"{blocks / n:.2f} allocations and {size / n:,.0f} bytes per event (start-up included)")
PY
}

# callgrind_run N: instructions the relay executed (start-up included) for N events.
callgrind_run() {
  start_pair valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out"
  load --events "$1" --duration 600s
  wait_sink "$1"
  stop_pair
  if [ -n "${CALLGRIND_OUT:-}" ]; then cp "$work/callgrind.out" "$CALLGRIND_OUT.$1"; fi
  awk '/^summary:/ {print $2}' "$work/callgrind.out"
}

instructions() {
  local base ir
  base=$(callgrind_run 1000)
  ir=$(callgrind_run "$events")
  python3 -c 'import sys; b, ir, n = map(int, sys.argv[1:]); per = (ir - b) / (n - 1000)
print(f"instructions: {per:,.0f} per event (callgrind: {ir:,} for {n:,} events minus {b:,} for 1,000, so start-up cancels)")' \
    "$base" "$ir" "$events"
}

syscalls() {
  start_pair
  # Attached after start-up, detached (SIGINT) after the load: only the data path counts.
  strace -c -f -p "$relay_pid" -o "$work/strace.txt" 2>/dev/null &
  local strace_pid=$!
  sleep 1
  load --events "$events" --duration 600s
  wait_sink "$events"
  kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
  stop_pair
  python3 - "$work/strace.txt" "$events" <<'PY'
import sys
n = int(sys.argv[2]); requests = n / 100
rows = []
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
        calls = int(parts[3]); rows.append((calls, parts[-1]))
total = sum(c for c, _ in rows)
print(f"syscalls: {total:,} for {requests:,.0f} requests ({n:,} events): {total / requests:.1f} per request")
for calls, name in sorted(rows, reverse=True)[:8]:
    print(f"  {name:<16} {calls / requests:7.2f} per request")
PY
}

[ $# -gt 0 ] || set -- flame allocs syscalls
for what in "$@"; do
  case "$what" in
    flame|allocs|syscalls|instructions) "$what" ;;
    *) echo "unknown: $what (flame, allocs, syscalls, instructions)" >&2; exit 2 ;;
  esac
done
