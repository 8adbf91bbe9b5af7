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
t1=$(date +%s)
echo "== tests/vm/ci.sh: setup took $((t1 - t0))s; booting the VM for all cases"
set +e
"$HERE/run.sh" "$HERE/guest/run-cases.sh" "$@"
rc=$?
set -e
t2=$(date +%s)
. "${QZB_VM_CACHE:-/var/cache/qzb-vm}/current.env" 2>/dev/null || true
echo "== tests/vm/ci.sh: ZFS ${ZFS_VERSION:-?} (kernel ${KVER:-?}); setup $((t1 - t0))s, VM run $((t2 - t1))s, total $((t2 - t0))s; exit $rc"
exit "$rc"
