#!/usr/bin/env bash
# tests/vm/run.sh <guest-program> [args...]
#
# Boots one throwaway QEMU VM (virtme-ng, TCG) with the guest kernel and ZFS module installed by
# tests/vm/setup.sh, and runs <guest-program> inside it as root. The host's / is visible read-only
# (so /work/main and its target/ are at the same paths); a per-run directory is shared read-write
# and exported to the guest as $QZB_VM_OUT.
#
# Exit status: the guest program's. If the VM cannot be started (setup not done, no qemu, no
# kernel, no module, boot failure), prints "VM-SKIP: <reason>" and exits 3; with
# QZB_VM_ALLOW_SKIP=1 (local developers only, never CI) a skip exits 0 instead.
#
# Environment:
#   QZB_VM_CACHE      cache dir used by setup.sh (default /var/cache/qzb-vm)
#   QZB_VM_MEMORY     guest memory (default 3G)     QZB_VM_CPUS  guest CPUs (default 2)
#   QZB_VM_TIMEOUT    seconds before the VM is killed (default 1800)
#   QZB_VM_RUN_DIR    where the log and outputs go (default $QZB_VM_CACHE/runs/<timestamp>)
#   QZB_VM_RECORD=1   copy recorded real ZFS outputs ($QZB_VM_OUT/recorded/*, plus the fixture's
#                     manifests) into tests/vm/recorded/<zfs version>/
#   QZB_VM_KVM=1      try KVM instead of TCG (does not work on the usual CI machine)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE="${QZB_VM_CACHE:-/var/cache/qzb-vm}"
SKIP_RC=3

skip() {
  echo "VM-SKIP: $*" >&2
  [ -n "${LOG:-}" ] && echo "VM-SKIP: $*" >> "$LOG"
  if [ "${QZB_VM_ALLOW_SKIP:-0}" = 1 ]; then
    echo "VM-SKIP: exiting 0 because QZB_VM_ALLOW_SKIP=1 (nothing was tested)" >&2
    exit 0
  fi
  exit "$SKIP_RC"
}

[ $# -ge 1 ] || { echo "usage: $0 <guest-program> [args...]" >&2; exit 2; }
prog=$1; shift
case "$prog" in /*) ;; *) prog="$(cd "$(dirname "$prog")" && pwd)/$(basename "$prog")" ;; esac
[ -e "$prog" ] || { echo "run.sh: no such guest program: $prog" >&2; exit 2; }

RUN_DIR="${QZB_VM_RUN_DIR:-$CACHE/runs/$(date +%Y%m%d-%H%M%S)-$$}"
mkdir -p "$RUN_DIR/out"
LOG="$RUN_DIR/vm.log"
: > "$LOG"

[ -r "$CACHE/current.env" ] || skip "setup not done ($CACHE/current.env missing): run tests/vm/setup.sh"
# shellcheck disable=SC1091
. "$CACHE/current.env"
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not installed (run tests/vm/setup.sh)"
[ -r "$KERNEL" ] || skip "guest kernel $KERNEL missing (run tests/vm/setup.sh)"
modinfo -k "$KVER" -F version zfs >/dev/null 2>&1 || skip "no zfs module for kernel $KVER (run tests/vm/setup.sh)"
[ -x "$VNG" ] || skip "virtme-ng not found at $VNG (run tests/vm/setup.sh)"
command -v zfs >/dev/null || skip "zfs userspace (zfsutils-linux) not installed (run tests/vm/setup.sh)"

# Arguments and settings go to the guest through a file (the guest sees the host filesystem).
{
  printf 'export QZB_VM_OUT=%q\n' "$RUN_DIR/out"
  printf 'export QZB_VM_RUN_DIR=%q\n' "$RUN_DIR"
  printf 'export QZB_REPO=%q\n' "$(cd "$HERE/../.." && pwd)"
  printf 'export QZB_ZFS_VERSION_PKG=%q\n' "$ZFS_VERSION"
  for v in $(compgen -e | grep -E '^QZB_' || true); do
    case "$v" in QZB_VM_OUT|QZB_VM_RUN_DIR|QZB_REPO) continue ;; esac
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  printf 'QZB_GUEST_ARGV=(%q' "$prog"
  for a in "$@"; do printf ' %q' "$a"; done
  printf ')\n'
} > "$RUN_DIR/guest.env"

# vng runs virtme-run etc. from PATH: put the venv first.
export PATH="$(dirname "$VNG"):$PATH"
accel=(--disable-kvm)
[ "${QZB_VM_KVM:-0}" = 1 ] && accel=()

echo "run.sh: kernel $KVER, ZFS package $ZFS_VERSION (series $ZFS_SERIES), log $LOG"
t0=$(date +%s)
set +e
timeout --signal=KILL "${QZB_VM_TIMEOUT:-1800}" \
  "$VNG" --run "$KERNEL" "${accel[@]}" --memory "${QZB_VM_MEMORY:-3G}" --cpus "${QZB_VM_CPUS:-2}" \
    --rwdir "$RUN_DIR" \
    --exec "/bin/bash $HERE/guest/boot.sh $RUN_DIR/guest.env" </dev/null 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
t1=$(date +%s)
echo "run.sh: VM exited with status $rc after $((t1 - t0))s; full log: $LOG" | tee -a "$LOG"

if [ "$rc" = 137 ] && ! grep -q '^QZB-GUEST-END' "$LOG"; then
  echo "run.sh: VM killed after ${QZB_VM_TIMEOUT:-1800}s (QZB_VM_TIMEOUT)" | tee -a "$LOG"
  exit 124
fi
if ! grep -q '^QZB-GUEST-START' "$LOG"; then
  skip "the VM did not boot to the guest program (vng status $rc); see $LOG"
fi
if grep -q '^QZB-GUEST-SKIP:' "$LOG"; then
  skip "$(grep -m1 '^QZB-GUEST-SKIP:' "$LOG" | sed 's/^QZB-GUEST-SKIP: *//'); see $LOG"
fi
# Prefer the status the guest wrote itself (vng's status should be the same).
if [ -r "$RUN_DIR/out/guest-status" ]; then
  grc=$(cat "$RUN_DIR/out/guest-status")
  if [ "$grc" != "$rc" ]; then
    echo "run.sh: note: vng returned $rc, guest program returned $grc; using $grc" | tee -a "$LOG"
  fi
  rc=$grc
fi

if [ "${QZB_VM_RECORD:-0}" = 1 ] && [ -d "$RUN_DIR/out/recorded" ]; then
  for d in "$RUN_DIR/out/recorded"/*/; do
    [ -d "$d" ] || continue
    name=$(basename "$d")
    rm -rf "$HERE/recorded/$name"
    mkdir -p "$HERE/recorded/$name"
    cp -r "$d". "$HERE/recorded/$name/"
    # The fixture the outputs were taken from (names, guids and manifests match them).
    if [ -d "$RUN_DIR/out/fixture" ]; then
      mkdir -p "$HERE/recorded/$name/fixture"
      cp "$RUN_DIR/out/fixture"/* "$HERE/recorded/$name/fixture/"
    fi
    echo "run.sh: recorded real outputs copied to tests/vm/recorded/$name/"
  done
fi
echo "run.sh: outputs from the guest: $RUN_DIR/out"
exit "$rc"
