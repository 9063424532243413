#!/usr/bin/env bash
# Fuzzes the EventList parser and render + frame with libFuzzer (cargo-fuzz), seeded from the
# real events in tests/data. Usage: scripts/fuzz.sh [RUNS]   (default 10000000 per target)
# Crashes land in fuzz/artifacts/TARGET/; keep each as a regression test (tests/fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10000000}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# cargo-fuzz passes unstable flags; the only toolchain here is stable, which accepts them with
# RUSTC_BOOTSTRAP. No sanitizer: the relay forbids unsafe code; panics and aborts are caught.
export RUSTC_BOOTSTRAP=1

python3 - <<'PY'
import json, pathlib
root = pathlib.Path(".")
seeds = root / "fuzz/seeds"
for t in ("eventlist", "render"):
    (seeds / t).mkdir(parents=True, exist_ok=True)
events = []
for f in sorted((root / "tests/data").glob("*.jsonl")):
    events += [l for l in f.read_text().splitlines() if l.strip()]
for f in sorted((root / "tests/data").glob("real-apiserver-*.json")):
    body = f.read_bytes()
    (seeds / "eventlist" / f.name).write_bytes(body)
    events += [json.dumps(i, separators=(",", ":")) for i in json.loads(body)["items"]]
for n, e in enumerate(events):
    if len(e) > 60000:
        continue
    (seeds / "render" / f"event-{n:04}").write_bytes(bytes([n % 24, n % 2, (n // 2) % 2, n % 256]) + e.encode())
    if n % 5 == 0:
        (seeds / "eventlist" / f"list-{n:04}").write_text('{"kind":"EventList","items":[' + e + "]}\n")
PY

for target in ${TARGETS:-eventlist render}; do
  mkdir -p "fuzz/corpus/$target"
  echo "== fuzzing $target for $runs runs"
  cargo fuzz run --sanitizer none "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
      -runs="$runs" -max_len=65536 -print_final_stats=1 2>&1 | tee "target/fuzz-$target.log" | grep -E "^#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss|ERROR|panicked|SUMMARY" || true
done
