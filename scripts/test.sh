#!/usr/bin/env bash
# The whole test suite, with the real syslog receivers the interop and fault tests need.
# Where apt-get and root (or sudo) are available, rsyslog and syslog-ng are installed first
# (scripts/install-test-receivers.sh) and the interop tests are required: a missing receiver
# fails them instead of skipping. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
  env_lines=$(scripts/install-test-receivers.sh)
  eval "$env_lines"
  export KAR_REQUIRE_INTEROP=1
else
  echo "test.sh: cannot install the test receivers here (needs apt-get and root);" \
       "interop tests skip unless rsyslog and syslog-ng are on this machine" >&2
fi

report=target/tmp/fault-report.md
rm -f "$report"
mkdir -p target
set -o pipefail
cargo test --locked --no-fail-fast "$@" 2>&1 | tee target/test-output.log
if [ -s "$report" ]; then
  echo
  echo "Fault suite (events answered 200 and what reached the receiver):"
  echo "| scenario | acknowledged | delivered | duplicates | lost | notes |"
  echo "|---|---|---|---|---|---|"
  cat "$report"
fi

# One closing line with the totals of every test binary (doc-tests report 0 and would
# otherwise close the output).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' target/test-output.log | tee target/test-summary.txt
