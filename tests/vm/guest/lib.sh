# shellcheck shell=bash
# Helpers for scripts that run inside the VM (fixture.sh, run-cases.sh, cases/*.sh).
# Source it: . "$(dirname "$0")/../guest/lib.sh"

QZB_VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export QZB_VM_DIR
export QZB_WORK=${QZB_WORK:-/tmp/qzb}          # writable (tmpfs) area inside the guest
export QZB_ALTROOT=${QZB_ALTROOT:-$QZB_WORK/altroot}
export QZB_VDEVS=$QZB_WORK/vdevs
export QZB_SRC_POOL=mainpool
export QZB_CONTAINER=mainpool/qubes
export QZB_BK_POOL=backuppool
export QZB_BK_ROOT=backuppool/backups/mydesktop
export QZB_FIXTURE_DIR=$QZB_WORK/fixture         # manifests written by fixture.sh
export QZB_VM_OUT=${QZB_VM_OUT:-$QZB_WORK/out}   # host-visible output dir (set by run.sh)

qzb_log() { echo "[$(date +%T)] $*"; }
qzb_fail() { echo "FAIL: $*" >&2; exit 1; }

# Run a command, echo it first.
qzb_run() { echo "+ $*"; "$@"; }

# Expect a command to fail; its combined output goes to stdout.
qzb_must_fail() {
  local out rc
  echo "+ (expect failure) $*"
  set +e; out=$("$@" 2>&1); rc=$?; set -e
  echo "$out"
  [ "$rc" -ne 0 ] || qzb_fail "expected failure, got success: $*"
}

# The block device of a zvol (or of a zvol snapshot with snapdev=visible).
# Waits for udev's /dev/zvol link, falls back to scanning /dev/zd* with zvol_id.
qzb_zvol_dev() {
  local name=$1 i d
  # Up to 60 s: on a loaded host udev can take long to make the link (20 s was seen to be too
  # short while other builds ran).
  for i in $(seq 1 300); do
    # The link can exist while udev replaces it: only a resolved block device counts.
    if [ -e "/dev/zvol/$name" ] && d=$(readlink -f "/dev/zvol/$name") && [ -b "$d" ]; then
      echo "$d"; return 0
    fi
    if [ $((i % 5)) = 0 ]; then
      for d in /dev/zd*; do
        [[ "$d" =~ ^/dev/zd[0-9]+$ ]] || continue
        if [ "$(/lib/udev/zvol_id "$d" 2>/dev/null)" = "$name" ]; then echo "$d"; return 0; fi
      done
    fi
    sleep 0.2
  done
  echo "qzb_zvol_dev: no device for zvol $name after 60s" >&2
  return 1
}

qzb_hash_dev() { sha256sum < "$1" | cut -d' ' -f1; }
qzb_b3_dev() { if command -v b3sum >/dev/null; then b3sum --no-names < "$1"; else echo "-"; fi; }

# sha256 of a zvol's (or snapshot's) whole content.
qzb_hash_zvol() {
  local name=$1 vol dev h
  if [[ "$name" == *@* ]]; then
    vol=${name%@*}
    zfs set snapdev=visible "$vol"
    dev=$(qzb_zvol_dev "$name")
    h=$(qzb_hash_dev "$dev")
    zfs inherit snapdev "$vol"
  else
    dev=$(qzb_zvol_dev "$name")
    h=$(qzb_hash_dev "$dev")
  fi
  echo "$h"
}

# Byte-for-byte compare of two zvols or zvol snapshots (names). Fails the case if different.
qzb_cmp_zvols() {
  local a=$1 b=$2 ha hb sa sb
  sa=$(zfs get -H -p -o value volsize "${a%@*}"); sb=$(zfs get -H -p -o value volsize "${b%@*}")
  [ "$sa" = "$sb" ] || qzb_fail "volsize differs: $a=$sa $b=$sb"
  ha=$(qzb_hash_zvol "$a"); hb=$(qzb_hash_zvol "$b")
  echo "compare $a ($ha) vs $b ($hb)"
  [ "$ha" = "$hb" ] || qzb_fail "content differs: $a vs $b"
}

# Content listing (path, type, size, sha256) of a directory tree, for comparing filesystems.
qzb_tree_digest() {
  (cd "$1" && find . -mindepth 1 \( -name .zfs -prune \) -o -printf '%y %s %m %p\n' | sort -k4 \
     && find . -type f -not -path './.zfs/*' -print0 | sort -z | xargs -0 -r sha256sum) | sha256sum | cut -d' ' -f1
}

# Mountpoint (with altroot) of a mounted filesystem dataset, or of a snapshot via .zfs/snapshot.
qzb_fs_path() {
  local name=$1 fs snap mp
  fs=${name%@*}
  mp=$(zfs get -H -o value mountpoint "$fs")
  [ "$(zfs get -H -o value mounted "$fs")" = yes ] || zfs mount "$fs"
  if [[ "$name" == *@* ]]; then snap=${name#*@}; echo "$mp/.zfs/snapshot/$snap"; else echo "$mp"; fi
}

qzb_cmp_fs() {
  local a b da db
  a=$(qzb_fs_path "$1"); b=$(qzb_fs_path "$2")
  da=$(qzb_tree_digest "$a"); db=$(qzb_tree_digest "$b")
  echo "compare $1 ($da) vs $2 ($db)"
  [ "$da" = "$db" ] || { diff -r "$a" "$b" | head -20; qzb_fail "tree differs: $1 vs $2"; }
}

qzb_prop() { zfs get -H -p -o value "$1" "$2"; }

# Make sure the Qubes-like fixture (mainpool + backuppool) exists; build it if not.
qzb_ensure_fixture() {
  if ! zpool list -H "$QZB_SRC_POOL" >/dev/null 2>&1; then
    bash "$QZB_VM_DIR/guest/fixture.sh" || qzb_fail "fixture.sh failed"
  fi
  # shellcheck disable=SC1091
  . "$QZB_FIXTURE_DIR/fixture.env"
}

# A fresh scratch destination under the backup pool for one case.
qzb_case_dest() {
  local d="$QZB_BK_POOL/t/$1"
  zfs list -H "$QZB_BK_POOL/t" >/dev/null 2>&1 || zfs create -o mountpoint=/backuppool/t "$QZB_BK_POOL/t"
  if zfs list -H "$d" >/dev/null 2>&1; then zfs destroy -r "$d"; fi
  zfs create "$d"
  echo "$d"
}

# Where a case saves real outputs for tests/vm/recorded/<zfs-version>/ (see run.sh QZB_VM_RECORD).
qzb_record_dir() {
  local v
  v=$(zfs version 2>/dev/null | head -1)
  v=${v:-zfs-unknown}
  mkdir -p "$QZB_VM_OUT/recorded/$v"
  echo "$QZB_VM_OUT/recorded/$v"
}

# Write a partial stream into a receive -s: sender is SIGKILLed after $3 bytes went through.
# usage: qzb_send_killed "<zfs send args>" <dest> <bytes>   (prints receive's output; never fails)
qzb_send_killed() {
  local sendargs=$1 dest=$2 bytes=$3 pidf
  pidf=$(mktemp)
  set +e
  # shellcheck disable=SC2086
  ( echo "$BASHPID" > "$pidf"; exec zfs send $sendargs ) \
    | { head -c "$bytes"; kill -9 "$(cat "$pidf")" 2>/dev/null; cat >/dev/null; } \
    | zfs receive -s "$dest" 2>&1
  echo "(pipeline status: ${PIPESTATUS[*]})"
  set -e
  rm -f "$pidf"
}

# qzb_write_random <zvol> <offset MiB> <count MiB>: overwrite part of a zvol with random data.
qzb_write_random() {
  local dev
  dev=$(qzb_zvol_dev "$1")
  dd if=/dev/urandom of="$dev" bs=1M seek="$2" count="$3" iflag=fullblock conv=fsync status=none
}

# The receive_resume_token of a dataset ("-" when none).
qzb_token() { zfs get -H -o value receive_resume_token "$1" 2>/dev/null || echo "-"; }

# Estimated stream size (bytes) of "zfs send -nP <args>" (the "size" line).
qzb_send_size() {
  # shellcheck disable=SC2086
  zfs send -n -P $1 2>&1 | awk '$1=="size"{print $2}' | tail -1
}
