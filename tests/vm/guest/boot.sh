#!/bin/bash
# Runs inside the VM (started by tests/vm/run.sh): loads ZFS, shows its version, runs the guest
# program, and writes its exit status to $QZB_VM_OUT/guest-status.
set -uo pipefail
env_file=$1
# shellcheck disable=SC1090
. "$env_file"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LC_ALL=C
t0=$(date +%s.%N)
echo "QZB-GUEST-START $(uname -r) $(date -u +%FT%TZ)"
rm -f "$QZB_VM_OUT/guest-status"

if ! modprobe zfs; then
  echo "QZB-GUEST-SKIP: modprobe zfs failed in the guest (kernel $(uname -r))"
  echo 3 > "$QZB_VM_OUT/guest-status"
  echo "QZB-GUEST-END status=3"
  exit 3
fi
t1=$(date +%s.%N)
echo "QZB-GUEST: modprobe zfs took $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s"
echo "QZB-GUEST: zfs version:"
zfs version 2>&1 | sed 's/^/  /'
zfs version > "$QZB_VM_OUT/zfs-version" 2>&1 || true

# A writable work area inside the guest (guest / is read-only; /tmp is a tmpfs).
export QZB_WORK=${QZB_WORK:-/tmp/qzb}
mkdir -p "$QZB_WORK"

"${QZB_GUEST_ARGV[@]}"
rc=$?
echo "$rc" > "$QZB_VM_OUT/guest-status"
sync
echo "QZB-GUEST-END status=$rc"
exit "$rc"
