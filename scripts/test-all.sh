#!/usr/bin/env bash
# Every test of the project, in order of cost. Each section runs even if an earlier one failed;
# the summary at the end lists them and the exit status is non-zero if any failed.
#
#   bash scripts/test-all.sh            everything (what CI runs)
#   QZB_SKIP_VM=1 bash scripts/test-all.sh    everything but the real-ZFS VM tests (a local shortcut; CI never sets it)
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
start=$SECONDS
passed=()
failed=()

section() {
    local name=$1
    shift
    echo
    echo "=== $name (at $((SECONDS - start))s)"
    local t0=$SECONDS
    if "$@"; then
        passed+=("$name ($((SECONDS - t0))s)")
    else
        failed+=("$name ($((SECONDS - t0))s)")
        echo "=== FAILED: $name"
    fi
}

lock_flag=()
[[ "${CI:-}" == "true" ]] && lock_flag=(--locked)

section "cargo fmt" cargo fmt --all -- --check
section "cargo clippy" cargo clippy --workspace --all-targets "${lock_flag[@]}" -- -D warnings
section "cargo test (unit, codec, black-box with the fake system)" cargo test --workspace "${lock_flag[@]}"
# One release build of every binary, here: bench-plan runs its xtask, and the VM section runs the
# driver, the agent and the fake (tests/vm/ci.sh builds again, which is then a no-op).
section "bench-plan (1,000 qubes, 5,000 datasets, 100,000 snapshots: < 1 s, < 200 MiB)" \
    bash -c 'cargo build --release --quiet "$@" --workspace --bins && "${CARGO_TARGET_DIR:-target}/release/xtask" bench-plan' _ "${lock_flag[@]}"
section "dependency audit (sources, licenses, dom0 tree vs docs/dependencies.md)" \
    cargo run --quiet "${lock_flag[@]}" -p xtask -- audit-deps
section "demo (the README's first command, as a smoke test)" bash -c 'cargo xtask demo > target/demo.log 2>&1 || { tail -40 target/demo.log; exit 1; }'
section "RPM build and rpmlint" bash scripts/build-rpms.sh
if [[ -f scripts/fuzz-smoke.sh ]]; then
    # 6 s per target (the script's own default is 20): 19 targets at 2 jobs, and the whole
    # run must stay under 30 minutes with the VM. Longer runs: FUZZ_SECONDS=300 bash
    # scripts/fuzz-smoke.sh (docs/fuzzing.md).
    section "fuzz smoke runs" env FUZZ_SECONDS="${FUZZ_SECONDS:-6}" bash scripts/fuzz-smoke.sh
fi
if [[ "${QZB_SKIP_VM:-}" == "1" && "${CI:-}" != "true" ]]; then
    echo
    echo "=== real-ZFS VM tests SKIPPED (QZB_SKIP_VM=1)"
else
    section "real OpenZFS in a VM (tests/vm)" bash tests/vm/ci.sh
fi

echo
echo "=== summary after $((SECONDS - start))s"
for p in "${passed[@]}"; do echo "  ok      $p"; done
for f in "${failed[@]}"; do echo "  FAILED  $f"; done
echo "sections: ${#passed[@]} passed, ${#failed[@]} failed"
[[ ${#failed[@]} -eq 0 ]]
