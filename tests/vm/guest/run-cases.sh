#!/bin/bash
# tests/vm/guest/run-cases.sh [case.sh ...]: runs INSIDE the VM. Builds the fixture once, then runs
# each case (default: every tests/vm/cases/*.sh) in order, each in its own bash process, and
# prints a PASS/FAIL table with timings; the last line is "N passed, M failed".
# A case with the header line "# qzb-vm: full-only" runs only with QZB_VM_FULL=1 or when named on
# the command line: CI's default run (one boot, under its 30 minutes with everything else) keeps
# the cases that exercise the project's own binaries on real ZFS; the cases that only pin real
# ZFS behaviour, or repeat a data path at more offsets, wait for the full run.
# Exit status: 0 if all passed. Each case's output goes to the log and to $QZB_VM_OUT/cases/<case>.log.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cases=("$@")
skipped=()
if [ ${#cases[@]} -eq 0 ]; then
  for c in "$QZB_VM_DIR"/cases/*.sh; do
    if [ "${QZB_VM_FULL:-0}" != 1 ] && grep -q '^# qzb-vm: full-only' "$c"; then
      skipped+=("$(basename "$c" .sh)")
    else
      cases+=("$c")
    fi
  done
fi
mkdir -p "$QZB_VM_OUT/cases"

tf0=$(date +%s)
echo "=== fixture"
if ! bash "$QZB_VM_DIR/guest/fixture.sh"; then
  echo "=== fixture FAILED: no case can run"
  echo "0 passed, ${#cases[@]} failed"
  exit 1
fi
fixture_s=$(( $(date +%s) - tf0 ))

results=()
passed=0; failed=0
for c in "${cases[@]}"; do
  case "$c" in /*) ;; *) c="$QZB_VM_DIR/cases/$(basename "$c")" ;; esac
  name=$(basename "$c" .sh)
  echo
  echo "=== case $name"
  t0=$(date +%s)
  if [ ! -f "$c" ]; then
    echo "no such case: $c"; rc=127
  else
    ( cd "$QZB_WORK" && bash -euo pipefail "$c" ) 2>&1 | tee "$QZB_VM_OUT/cases/$name.log"
    rc=${PIPESTATUS[0]}
  fi
  dt=$(( $(date +%s) - t0 ))
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1)); results+=("$(printf 'PASS  %4ss  %s' "$dt" "$name")")
  else
    failed=$((failed + 1)); results+=("$(printf 'FAIL  %4ss  %s  (exit %s)' "$dt" "$name" "$rc")")
  fi
  echo "=== case $name: exit $rc after ${dt}s"
done

echo
echo "=== results ($(zfs version | head -1), kernel $(uname -r), fixture ${fixture_s}s)"
printf '%s\n' "${results[@]}" | tee "$QZB_VM_OUT/results.txt"
[ ${#skipped[@]} -eq 0 ] || echo "not run (full-only; QZB_VM_FULL=1 runs them): ${skipped[*]}" | tee -a "$QZB_VM_OUT/results.txt"
echo "$passed passed, $failed failed" | tee -a "$QZB_VM_OUT/results.txt"
[ "$failed" = 0 ]
