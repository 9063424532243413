#!/usr/bin/env bash
# Benchmarks the relay end to end on this machine: builds release binaries, starts the counting
# sink (TLS) and the relay (HTTPS with client certificates in, TLS out), runs the load generator,
# samples the relay's CPU time and peak RSS from /proc, waits until the sink has every
# acknowledged event (or 10 s pass without a new one: the row then shows the shortfall), and
# prints one Markdown table row plus a JSON record (appended to target/bench/results.jsonl).
#
# Usage: scripts/bench.sh SCENARIO [SCENARIO...]
#   S1        4 connections, 100-event batches of ~700 B Metadata events, disk queue (fsync), 20 s
#   latency   S1's setup at a fixed 50 000 events/s, for latency percentiles (disk, then memory queue)
#   memory    S1 with the memory queue (like the peers' memory buffers)
#   conns     1, 2, 4, 8, 16 connections (disk queue)
#   sizes     event sizes ~0.7, 2, 20, 200 KB (4 connections, disk queue)
#   relp      S1 with the destination over RELP (relp:// and relp+tls://; the sink acknowledges
#             every message), next to S1 over tls://
#   integrity S1 with syslog.enterprise_id (which [integrity] needs), then also with
#             syslog.sequence_id, then with [integrity] (hash chain + signed checkpoints);
#             ROUNDS (default 3) times each, interleaved, in the same run
#   verify    writes a trail of RECORDS (default 10 000 000) chained records with the relay's own
#             code (`kube-audit-relay-bench trail`; ~1.1 KB each, so ~11 GB in BENCH_DIR) and
#             times `kube-audit-relay verify` on it (one core), then deletes it
#   ceiling   the bare forwarder (`kube-audit-relay-bench ceiling`) next to the relay with the
#             memory queue and with the disk queue, at 4 and 16 connections, in one run
#   large     200 KB events, 4 connections (about 80 MB of bodies in flight), disk and memory
#             queue: peak RSS against the bytes in flight
#   h2streams HTTP/2 with 4 streams in flight on 1 and on 4 connections, next to HTTP/1.1 with
#             as many requests in flight (4 and 16 connections); memory and disk queue
#   h2ceiling the same four rows for the bare forwarder (what HTTP/2 costs without the relay)
#   dedupe    the bare forwarder, the memory queue, and the memory queue with deduplication off
#             (dedupe.max_entries = 0), 4 connections, ROUNDS (default 3) times, interleaved:
#             what the dedupe window costs against the ceiling
#   readcache the bare forwarder and the disk queue with and without its read cache
#             (queue.read_cache_bytes = 0), 16 connections, ROUNDS (default 3) times, interleaved
#   smoke     2 s of S1, for CI: proves the tools work, measures nothing
# Environment: DURATION (default 20s), HTTP2=1 for h2 (STREAMS: requests in flight per h2
# connection, default 1), BENCH_DIR (default target/bench),
# ROUNDS (integrity), RECORDS (verify), RELAY_BIN (another build of the relay, to compare),
# CONFIRM_AFTER (the destination's confirm_after, e.g. 50ms), QUEUE_MAX_BYTES (queue.max_bytes, e.g. 8MiB),
# DEDUPE_MAX_ENTRIES (dedupe.max_entries; 0 turns deduplication off),
# READ_CACHE_BYTES (queue.read_cache_bytes; 0 turns the disk queue's read cache off).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out_dir=${BENCH_DIR:-$root/target/bench}
mkdir -p "$out_dir"
results=$out_dir/results.jsonl

cargo build --release --locked --bins >/dev/null 2>&1 || cargo build --release --locked --bins
relay_bin=${RELAY_BIN:-$root/target/release/kube-audit-relay}
bench_bin=$root/target/release/kube-audit-relay-bench

pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# run NAME CONNECTIONS QUEUE RATE EVENT_BYTES PROFILE DURATION [SCHEME] [INTEGRITY]
# SCHEME is the destination's: tls (default), relp or relp+tls. INTEGRITY=1 turns on the
# hash chain and signed checkpoints (with syslog.enterprise_id); INTEGRITY=pen sets only
# syslog.enterprise_id, INTEGRITY=seq that and syslog.sequence_id.
run() {
  local name=$1 conns=$2 queue=$3 rate=$4 event_bytes=$5 profile=$6 duration=$7 scheme=${8:-tls}
  local integrity=${9:-0}
  local work; work=$(mktemp -d "$out_dir/run.XXXXXX")
  local sink_args=(--tls-cert certs/server.crt --tls-key certs/server.key)
  case "$scheme" in
    relp) sink_args=(--framing relp) ;;
    relp+tls) sink_args+=(--framing relp) ;;
  esac
  "$bench_bin" sink "${sink_args[@]}" --stats "$work/sink.json" \
      > "$work/sink.out" 2> "$work/sink.err" &
  local sink_pid=$!; pids+=("$sink_pid")
  local sink_addr=""
  for _ in $(seq 100); do
    sink_addr=$(grep -o '127.0.0.1:[0-9]*' "$work/sink.out" 2>/dev/null || true)
    [ -n "$sink_addr" ] && break; sleep 0.05
  done
  [ -n "$sink_addr" ] || { echo "sink did not start" >&2; exit 1; }
  local port; port=$(free_port)
  cat > "$work/relay.toml" <<EOF
cluster_name = "bench"
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
url = "$scheme://$sink_addr"
ca = "$root/certs/ca.crt"
server_name = "localhost"
EOF
  if [ -n "${QUEUE_MAX_BYTES:-}" ]; then
    sed -i "s|^data_dir = \"$work/queue\"$|&\nmax_bytes = \"$QUEUE_MAX_BYTES\"|" "$work/relay.toml"
  fi
  if [ -n "${READ_CACHE_BYTES:-}" ]; then
    sed -i "s|^data_dir = \"$work/queue\"$|&\nread_cache_bytes = \"$READ_CACHE_BYTES\"|" "$work/relay.toml"
  fi
  if [ -n "${DEDUPE_MAX_ENTRIES:-}" ]; then
    printf '[dedupe]\nmax_entries = %s\n' "$DEDUPE_MAX_ENTRIES" >> "$work/relay.toml"
  fi
  if [ -n "${CONFIRM_AFTER:-}" ]; then
    sed -i "s/^server_name = \"localhost\"$/&\nconfirm_after = \"$CONFIRM_AFTER\"/" "$work/relay.toml"
  fi
  # The chain needs syslog.enterprise_id, which also adds the [k8saudit@PEN] element: the
  # rows compared with the chain set it too, so that the chain is the only difference.
  case "$integrity" in
    pen) sed -i 's/^max_message_bytes = "1MiB"$/&\nenterprise_id = 32473/' "$work/relay.toml" ;;
    seq) sed -i 's/^max_message_bytes = "1MiB"$/&\nenterprise_id = 32473\nsequence_id = true/' "$work/relay.toml" ;;
  esac
  if [ "$integrity" = 1 ]; then
    "$relay_bin" gen-signing-key "$work/keys" > /dev/null 2>&1
    sed -i 's/^max_message_bytes = "1MiB"$/&\nenterprise_id = 32473/' "$work/relay.toml"
    printf '[integrity]\nsigning_key = "%s"\n' "$work/keys/signing.key" >> "$work/relay.toml"
  fi
  if [ "${TARGET:-relay}" = ceiling ]; then
    "$bench_bin" ceiling --listen "127.0.0.1:$port" --tls-cert certs/server.crt --tls-key certs/server.key \
        --client-ca certs/ca.crt --to "$sink_addr" --ca certs/ca.crt > /dev/null 2> "$work/relay.err" &
  else
    RUST_LOG=warn "$relay_bin" run --config "$work/relay.toml" > /dev/null 2> "$work/relay.err" &
  fi
  local relay_pid=$!; pids+=("$relay_pid")
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05
  done
  local ticks0; ticks0=$(cpu_ticks "$relay_pid")
  local h2=(); [ "${HTTP2:-0}" = 1 ] && h2=(--http2 --streams "${STREAMS:-1}")
  "$bench_bin" load --url "https://127.0.0.1:$port/" --ca certs/ca.crt --cert certs/client.crt --key certs/client.key \
      --connections "$conns" --batch 100 --duration "$duration" --rate "$rate" --profile "$profile" \
      --event-bytes "$event_bytes" --id-prefix "$name" "${h2[@]}" > "$work/load.json"
  local acked; acked=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["events_acked"])' "$work/load.json")
  # Wait for the sink to have every acknowledged event: at most 120 s, and no longer than 10 s
  # without a new one (the row's "unique delivered" then shows what is missing).
  python3 - "$work/sink.json" "$acked" <<'PY'
import json, sys, time
path, acked = sys.argv[1], int(sys.argv[2])
start = last_change = time.monotonic()
last = -1
while time.monotonic() - start < 120 and time.monotonic() - last_change < 10:
    try:
        got = json.load(open(path))["events"]
    except Exception:
        got = 0
    if got >= acked:
        break
    if got != last:
        last, last_change = got, time.monotonic()
    time.sleep(0.1)
PY
  sleep 0.6
  local ticks1; ticks1=$(cpu_ticks "$relay_pid")
  local hwm; hwm=$(hwm_kib "$relay_pid")
  kill "$relay_pid" "$sink_pid" 2>/dev/null || true
  wait "$relay_pid" "$sink_pid" 2>/dev/null || true
  python3 - "$name" "$conns" "$queue" "$work" "$((ticks1 - ticks0))" "$(getconf CLK_TCK)" "$hwm" "$results" <<'PY'
import json, sys
name, conns, queue, work, ticks, hz, hwm, results = sys.argv[1:]
load = json.load(open(f"{work}/load.json"))
sink = json.load(open(f"{work}/sink.json"))
cpu_s = int(ticks) / int(hz)
# CPU is counted until the sink had everything: the relay's whole cost of the run.
delivered_rate = sink["events_per_s"]
rec = {
    "scenario": name, "connections": int(conns), "streams": load.get("streams", 1),
    "queue": queue, "http2": load["http2"],
    "event_bytes": load["event_bytes"], "batch": load["batch"], "seconds": round(load["seconds"], 2),
    "events_acked": load["events_acked"], "acked_per_s": round(load["events_per_s"]),
    "delivered": sink["events"], "unique_delivered": sink["unique_audit_ids"], "bad_frames": sink["bad_frames"],
    "delivered_per_s": round(delivered_rate), "status_503": load["status_503"],
    "latency_ms": load["latency_ms"], "relay_cpu_s": round(cpu_s, 2),
    "relay_cores": round(cpu_s / max(sink["active_seconds"], load["seconds"]), 2),
    "cpu_s_per_million": round(cpu_s / max(load["events_acked"], 1) * 1e6, 2),
    "relay_peak_rss_mib": round(int(hwm) / 1024, 1),
}
lat = rec["latency_ms"]
print(f"| {name} | {conns} | {queue} | {rec['event_bytes']} | {rec['acked_per_s']:,} | {rec['delivered_per_s']:,} | "
      f"{lat['p50']:.2f} / {lat['p99']:.2f} | {rec['relay_cores']} | {rec['cpu_s_per_million']} | {rec['relay_peak_rss_mib']} | "
      f"{rec['unique_delivered']:,} of {rec['events_acked']:,} |")
print(json.dumps(rec))
with open(results, "a") as f:
    f.write(json.dumps(rec) + "\n")
PY
  rm -rf "$work/queue"
}

# verify_run RECORDS: a trail of RECORDS chained records, and verify timed on it.
# ROUNDS (default 3) times, interleaved: the bare forwarder, the relay, and the relay with one
# setting changed (VAR=VALUE, one of the variables above), at CONNS connections.
with_and_without() {
  local conns=$1 queue=$2 suffix=$3 var=${4%%=*} value=${4#*=}
  for _ in $(seq "${ROUNDS:-3}"); do
    TARGET=ceiling run "ceiling-$conns" "$conns" none 0 0 metadata "$duration"
    run "$queue-$conns" "$conns" "$queue" 0 0 metadata "$duration"
    local had=${!var+x} saved=${!var-}
    export "$var=$value"
    run "$queue-$conns-$suffix" "$conns" "$queue" 0 0 metadata "$duration"
    if [ -n "$had" ]; then export "$var=$saved"; else unset "$var"; fi
  done
}

verify_run() {
  local records=$1 work; work=$(mktemp -d "$out_dir/trail.XXXXXX")
  "$relay_bin" gen-signing-key "$work/keys" > /dev/null 2>&1
  "$bench_bin" trail --records "$records" --out "$work/trail.log" --signing-key "$work/keys/signing.key" \
      > "$work/trail.json"
  local bytes; bytes=$(stat -c %s "$work/trail.log")
  # Read once so that the timed run measures verify, not the disk.
  cat "$work/trail.log" > /dev/null
  local rc=0
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" \
    taskset -c 0 "$relay_bin" verify --key "$work/keys/signing.pub" "$work/trail.log" > "$work/verify.out" || rc=$?
  python3 - "$records" "$bytes" "$rc" "$work" "$results" <<'PY'
import json, sys
records, size, rc, work, results = sys.argv[1:]
wall, user, sys_s, rss = open(f"{work}/time").read().split()[-4:]
rec = {"scenario": "verify", "records": int(records), "bytes": int(size), "exit": int(rc),
       "wall_s": float(wall), "user_s": float(user), "sys_s": float(sys_s),
       "peak_rss_mib": round(int(rss) / 1024, 1),
       "records_per_s": round(int(records) / max(float(wall), 0.01))}
print(f"verify: {int(records):,} records, {int(size) / 1e9:.2f} GB, exit {rc}: {wall} s wall "
      f"({user} s user, {sys_s} s sys, one core), {rec['records_per_s']:,} records/s, peak RSS {rec['peak_rss_mib']} MiB")
print(json.dumps(rec))
with open(results, "a") as f:
    f.write(json.dumps(rec) + "\n")
PY
  tail -1 "$work/verify.out"
  rm -rf "$work"
  [ "$rc" = 0 ]
}

header() {
  echo "| scenario | conns | queue | B/event | acked ev/s | delivered ev/s | p50 / p99 ms | relay cores | CPU-s per M events | peak RSS MiB | unique delivered |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
}

duration=${DURATION:-20s}
[ $# -ge 1 ] || { sed -n '2,32p' "$0"; exit 2; }
header
for scenario in "$@"; do
  case "$scenario" in
    S1) run S1 4 disk 0 0 metadata "$duration" ;;
    latency)
      run latency 4 disk 50000 0 metadata "$duration"
      run latency-memory 4 memory 50000 0 metadata "$duration" ;;
    memory) run memory 4 memory 0 0 metadata "$duration" ;;
    conns) for c in 1 2 4 8 16; do run "conns-$c" "$c" disk 0 0 metadata "$duration"; done ;;
    sizes)
      run size-0.7k 4 disk 0 0 metadata "$duration"
      for b in 2000 20000 200000; do run "size-$((b / 1000))k" 4 disk 0 "$b" metadata "$duration"; done ;;
    relp)
      run S1-tls 4 disk 0 0 metadata "$duration" tls
      run S1-relp 4 disk 0 0 metadata "$duration" relp
      run S1-relp+tls 4 disk 0 0 metadata "$duration" relp+tls ;;
    integrity)
      # Odd rounds run pen, sequence, chain; even rounds the other way round, so that this
      # VM's drift over minutes (a round's pen row moved 165k-214k) falls on both sides.
      for r in $(seq "${ROUNDS:-3}"); do
        if [ $((r % 2)) = 1 ]; then
          run S1-pen 4 disk 0 0 metadata "$duration" tls pen
          run S1-sequence 4 disk 0 0 metadata "$duration" tls seq
          run S1-integrity 4 disk 0 0 metadata "$duration" tls 1
        else
          run S1-integrity 4 disk 0 0 metadata "$duration" tls 1
          run S1-sequence 4 disk 0 0 metadata "$duration" tls seq
          run S1-pen 4 disk 0 0 metadata "$duration" tls pen
        fi
      done ;;
    verify) verify_run "${RECORDS:-10000000}" ;;
    large)
      # 200 KB events, 100 per request, 4 connections: ~80 MB of bodies in flight.
      for q in ${QUEUES:-disk memory}; do run "large-200k-$q" 4 "$q" 0 200000 metadata "$duration"; done ;;
    h2streams)
      # As many requests in flight over HTTP/2 streams as over HTTP/1.1 connections.
      for q in ${QUEUES:-memory disk}; do
        run "h1-4-$q" 4 "$q" 0 0 metadata "$duration"
        HTTP2=1 STREAMS=4 run "h2-1x4-$q" 1 "$q" 0 0 metadata "$duration"
        run "h1-16-$q" 16 "$q" 0 0 metadata "$duration"
        HTTP2=1 STREAMS=4 run "h2-4x4-$q" 4 "$q" 0 0 metadata "$duration"
      done ;;
    h2ceiling)
      # The same as h2streams for the bare forwarder: what HTTP/2 costs without the relay.
      TARGET=ceiling run h1-4-ceiling 4 none 0 0 metadata "$duration"
      TARGET=ceiling HTTP2=1 STREAMS=4 run h2-1x4-ceiling 1 none 0 0 metadata "$duration"
      TARGET=ceiling run h1-16-ceiling 16 none 0 0 metadata "$duration"
      TARGET=ceiling HTTP2=1 STREAMS=4 run h2-4x4-ceiling 4 none 0 0 metadata "$duration" ;;
    ceiling)
      for c in 4 16; do
        TARGET=ceiling run "ceiling-$c" "$c" none 0 0 metadata "$duration"
        run "memory-$c" "$c" memory 0 0 metadata "$duration"
        run "disk-$c" "$c" disk 0 0 metadata "$duration"
      done ;;
    dedupe) with_and_without 4 memory nodedupe DEDUPE_MAX_ENTRIES=0 ;;
    readcache) with_and_without 16 disk nocache READ_CACHE_BYTES=0 ;;
    smoke)
      run smoke 2 disk 0 0 metadata 2s; run smoke-relp 2 disk 0 0 metadata 2s relp+tls
      run smoke-integrity 2 disk 0 0 metadata 2s tls 1; verify_run 20000
      HTTP2=1 STREAMS=2 run smoke-h2-streams 1 memory 0 0 metadata 2s
      TARGET=ceiling run smoke-ceiling 2 none 0 0 metadata 2s ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
done
