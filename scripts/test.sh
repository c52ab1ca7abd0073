#!/usr/bin/env bash
# Runs every test in the workspace and ends with one plain summary line
# ("tests: N passed, N failed"), so a reader of CI output sees the total
# rather than the last crate's count.
set -uo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
if [[ $status -ne 0 && $failed -eq 0 ]]; then
  # A build error or a crashed test binary: count it as a failure.
  failed=1
fi
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
