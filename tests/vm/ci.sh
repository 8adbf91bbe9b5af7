#!/usr/bin/env bash
# tests/vm/ci.sh: what CI calls. Installs/updates the VM harness (setup.sh), then boots ONE VM
# running every case in tests/vm/cases/ against real OpenZFS. Prints timings and the ZFS version;
# exits non-zero on any failure, including a VM that cannot start (VM-SKIP).
# QZB_ZFS_SERIES=2.1 (default) or 2.3 selects the ZFS version.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
t0=$(date +%s)
echo "== tests/vm/ci.sh: setup (ZFS series ${QZB_ZFS_SERIES:-2.1})"
if ! "$HERE/setup.sh"; then
  echo "VM-SKIP: tests/vm/setup.sh failed; the real-ZFS tests did not run" >&2
  exit 1
fi
# The driver cases (10-*, 11-*, 12-*, 13-*) run the workspace's real binaries inside the VM (the
# guest sees the host's / read-only, target/ included): build them first, so ci.sh works alone.
# Release builds: under TCG every exec of the 50 MiB debug driver costs about a second more than
# the 4 MiB release one, and the data path (framing, tap, blake3) is what the cases time.
REPO=$(cd "$HERE/../.." && pwd)
echo "== tests/vm/ci.sh: cargo build --release --workspace --bins"
if ! (cd "$REPO" && cargo build --release --workspace --bins); then
  echo "tests/vm/ci.sh: cargo build failed; the VM cases need target/release/qubes-zfs-backup{,-receiver} and qzb-fake" >&2
  exit 1
fi
# Where the guest finds them (run.sh passes every QZB_* variable into the guest).
export QZB_TARGET_DIR=${QZB_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}
t1=$(date +%s)
echo "== tests/vm/ci.sh: setup and build took $((t1 - t0))s; booting the VM for all cases"
set +e
"$HERE/run.sh" "$HERE/guest/run-cases.sh" "$@"
rc=$?
set -e
t2=$(date +%s)
. "${QZB_VM_CACHE:-/var/cache/qzb-vm}/current.env" 2>/dev/null || true
echo "== tests/vm/ci.sh: ZFS ${ZFS_VERSION:-?} (kernel ${KVER:-?}); setup $((t1 - t0))s, VM run $((t2 - t1))s, total $((t2 - t0))s; exit $rc"
exit "$rc"
