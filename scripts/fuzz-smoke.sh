#!/usr/bin/env bash
# Fuzz smoke run for CI (issue 6, item 2): builds every target in fuzz/ and runs each one for a
# bounded time over its seed corpus (fuzz/corpus/<target>/, regression inputs included).
# Prints per target the executions and the result, then "N passed, M failed"; exits non-zero if
# any target crashed (panic, failed check, timeout, allocation over the cap, out of memory).
#
#   FUZZ_SECONDS=20     seconds of fuzzing per target (after the corpus has been replayed)
#   FUZZ_JOBS=<nproc>   targets run at the same time
#   FUZZ_TARGETS="a b"  only these targets (default: all in fuzz/Cargo.toml)
#   FUZZ_ZSTREAM_SECONDS  budget of the zstream target in a run of all targets (default: the
#                       smaller of FUZZ_SECONDS and 10, to keep CI's total); named in
#                       FUZZ_TARGETS it gets FUZZ_SECONDS
#   FUZZ_MANIFEST_SECONDS  the same for the manifest_header target (default: the smaller of
#                       FUZZ_SECONDS and 10)
#   FUZZ_KEY_FILE_SECONDS  the same for the key_file target (default: the smaller of
#                       FUZZ_SECONDS and 10)
#   FUZZ_KEEP=1         keep fuzz/target/smoke-*/ (logs, new inputs) after a clean run too
#   FUZZ_BUILD=plain|cargo-fuzz
#       plain (default): plain stable `cargo build` with the instrumentation flags cargo-fuzz
#       0.13 passes for `cargo fuzz build -s none`; the binaries are the same libFuzzer binaries.
#       cargo-fuzz: `cargo fuzz build -s none`, installing cargo-fuzz with `cargo install
#       --locked` when missing. Same result, but the install costs 40-90 s on a fresh 2-core
#       machine, which would push this script past its 5-minute budget (docs/fuzzing.md).
#
# Needs a stable Rust toolchain and a C++ compiler (libFuzzer is built from source by the
# libfuzzer-sys crate). No sanitizer: ASan needs a nightly compiler, and every crate under test
# forbids unsafe code; a custom allocator catches oversized allocations instead (see
# docs/fuzzing.md). New inputs found during the run go to fuzz/target/smoke-*/ (removed after a
# clean run), never into the committed corpus; crashing inputs go to fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
FUZZ_JOBS=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}
FUZZ_BUILD=${FUZZ_BUILD:-plain}
CARGO_FUZZ_VERSION=0.13.2
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
TARGET_DIR=$ROOT/fuzz/target
BIN_DIR=$TARGET_DIR/$TRIPLE/release
started=$(date +%s)

if [[ -n ${FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(awk '/^\[\[bin\]\]/ { bin = 1; next } /^\[/ { bin = 0 }
        bin && /^name = / { gsub(/"/, "", $3); print $3 }' fuzz/Cargo.toml)
fi

if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
    echo "fuzz-smoke: no C++ compiler (libFuzzer needs one): apt-get install g++" >&2
    exit 2
fi

echo "== fuzz-smoke: building ${#targets[@]} targets ($FUZZ_BUILD)"
case $FUZZ_BUILD in
cargo-fuzz)
    if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
        echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION"
        cargo install --locked --quiet --version "$CARGO_FUZZ_VERSION" cargo-fuzz
    fi
    # -s none: no sanitizer, so no nightly compiler is needed (see docs/fuzzing.md).
    cargo fuzz build --fuzz-dir fuzz --sanitizer none --target "$TRIPLE"
    ;;
plain)
    # The flags cargo-fuzz 0.13 passes for `build -s none` (checked with `cargo fuzz build -v`).
    RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
        cargo build --release --manifest-path fuzz/Cargo.toml --target "$TRIPLE" \
        --target-dir "$TARGET_DIR" --bins
    ;;
*)
    echo "fuzz-smoke: FUZZ_BUILD must be cargo-fuzz or plain" >&2
    exit 2
    ;;
esac
built=$(date +%s)
echo "== fuzz-smoke: built in $((built - started)) s; fuzzing each target ${FUZZ_SECONDS} s, $FUZZ_JOBS at a time"

dict_for() {
    case $1 in
    config | config_report | yaml) echo fuzz/dict/yaml.dict ;;
    zfs_list) echo fuzz/dict/zfs_list.dict ;;
    qubesd_reply | vm_list) echo fuzz/dict/qubes.dict ;;
    xl_attachments) echo fuzz/dict/xl.dict ;;
    resume_token) echo fuzz/dict/resume_token.dict ;;
    send_size) echo fuzz/dict/send_size.dict ;;
    zstream) echo fuzz/dict/zstream.dict ;;
    esac
}

seconds_for() {
    if [[ $1 == zstream && -z ${FUZZ_TARGETS:-} ]]; then
        echo "${FUZZ_ZSTREAM_SECONDS:-$((FUZZ_SECONDS < 10 ? FUZZ_SECONDS : 10))}"
    elif [[ $1 == manifest_header && -z ${FUZZ_TARGETS:-} ]]; then
        echo "${FUZZ_MANIFEST_SECONDS:-$((FUZZ_SECONDS < 10 ? FUZZ_SECONDS : 10))}"
    elif [[ ($1 == key_file || $1 == sealed) && -z ${FUZZ_TARGETS:-} ]]; then
        echo "${FUZZ_KEY_FILE_SECONDS:-$((FUZZ_SECONDS < 10 ? FUZZ_SECONDS : 10))}"
    else
        echo "$FUZZ_SECONDS"
    fi
}

run_one() {
    local t=$1 log=$WORK/$t.log dict
    rm -rf "$WORK/corpus/$t"
    mkdir -p "$WORK/corpus/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
    local args=(
        "$WORK/corpus/$t" "fuzz/corpus/$t"
        -max_total_time="$(seconds_for "$t")" -timeout=10 -rss_limit_mb=2048
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1
    )
    dict=$(dict_for "$t")
    [[ -n $dict ]] && args+=(-dict="$dict")
    local rc=0
    timeout --kill-after=10 $((FUZZ_SECONDS + 120)) "$BIN_DIR/$t" "${args[@]}" >"$log" 2>&1 </dev/null || rc=$?
    echo "$rc" >"$WORK/$t.rc"
}

# Per run, so that two runs in the same tree (a developer and scripts/test-all.sh) do not
# delete each other's logs and corpora. Removed after a clean run, kept after a failure.
mkdir -p "$TARGET_DIR"
WORK=$(mktemp -d "$TARGET_DIR/smoke-XXXXXX")
running=0
for t in "${targets[@]}"; do
    if [[ ! -x $BIN_DIR/$t ]]; then
        echo "fuzz-smoke: $BIN_DIR/$t was not built" >&2
        echo 127 >"$WORK/$t.rc"
        continue
    fi
    run_one "$t" &
    running=$((running + 1))
    if ((running >= FUZZ_JOBS)); then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

passed=0
failed=0
printf '%-16s %12s %8s  %s\n' target executions "exec/s" result
for t in "${targets[@]}"; do
    rc=$(cat "$WORK/$t.rc" 2>/dev/null || echo 127)
    log=$WORK/$t.log
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" 2>/dev/null | tail -1) || true
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" 2>/dev/null | tail -1) || true
    if [[ $rc == 0 ]]; then
        result=ok
        passed=$((passed + 1))
    else
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" 2>/dev/null | tail -1) || true
        result="FAILED (exit $rc)${artifact:+: $artifact}"
        failed=$((failed + 1))
    fi
    printf '%-16s %12s %8s  %s\n' "$t" "${execs:-?}" "${speed:-?}" "$result"
done
for t in "${targets[@]}"; do
    rc=$(cat "$WORK/$t.rc" 2>/dev/null || echo 127)
    if [[ $rc != 0 && -f $WORK/$t.log ]]; then
        echo "---- $t: last lines of $WORK/$t.log"
        grep -v '^#[0-9]' "$WORK/$t.log" | tail -40 || true
        echo "reproduce: $BIN_DIR/$t <file from fuzz/artifacts/$t/>"
    fi
done
if [[ $failed == 0 && -z ${FUZZ_KEEP:-} ]]; then
    rm -rf "$WORK"
else
    echo "logs and the inputs this run found: $WORK"
fi
echo "== fuzz-smoke: total $(($(date +%s) - started)) s"
echo "fuzz: $passed passed, $failed failed"
[[ $failed == 0 ]]
