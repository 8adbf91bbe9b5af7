#!/bin/bash
# Diagnostic guest program: shows the guest's kernel, mounts, memory and ZFS state.
# usage (host): tests/vm/run.sh tests/vm/guest/info.sh
set -uo pipefail
uname -a
echo "--- mounts"; findmnt -rn -o TARGET,FSTYPE,OPTIONS | grep -vE '^/(proc|sys)/' | head -40
echo "--- memory"; free -m
echo "--- zfs"; zfs version; lsmod | grep -E '^(zfs|spl)'
echo "--- writable /tmp?"; touch /tmp/x && echo yes
echo "--- QZB_VM_OUT=$QZB_VM_OUT writable?"; touch "$QZB_VM_OUT/x" && echo yes
echo "--- udev?"; pgrep -a udevd || echo "no udevd"
