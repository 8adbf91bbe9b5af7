#!/bin/bash
# qzb-vm: full-only (pins real ZFS behaviour; the driver cases cover this data path)
# zfs receive -A discards partial receive state (full: the partial dataset goes away;
# incremental: the dataset stays at its last snapshot), after which a fresh send works.
set -euo pipefail
. "$(dirname "$0")/../guest/lib.sh"
qzb_ensure_fixture
C=$QZB_CONTAINER
DST=$(qzb_case_dest abort)
MIB=1048576

# full
src="$C/personal/root@qzb-t05"
zfs snapshot "$src"
qzb_send_killed "$src" "$DST/root" $((4 * MIB))
[ "$(qzb_token "$DST/root")" != "-" ] || qzb_fail "no token"
zfs receive -A "$DST/root"
if zfs list -H "$DST/root" >/dev/null 2>&1; then qzb_fail "partial full receive still exists after -A"; fi
zfs send "$src" | zfs receive -s "$DST/root"
qzb_cmp_zvols "$src" "$DST/root@qzb-t05"

# incremental
P="$C/vault/private"
zfs snapshot "$P@qzb-t05-a"
qzb_write_random "$P" 10 4
zfs snapshot "$P@qzb-t05-b"
zfs send "$P@qzb-t05-a" | zfs receive -s "$DST/private"
qzb_send_killed "-i @qzb-t05-a $P@qzb-t05-b" "$DST/private" $((1 * MIB))
[ "$(qzb_token "$DST/private")" != "-" ] || qzb_fail "no token (incremental)"
zfs list -H -t all -o name -r "$DST/private" | sed 's/^/  before -A: /'
zfs receive -A "$DST/private"
zfs list -H -t all -o name -r "$DST/private" | sed 's/^/  after -A: /'
[ "$(qzb_token "$DST/private")" = "-" ] || qzb_fail "token still set after -A"
if zfs list -H "$DST/private/%recv" >/dev/null 2>&1; then qzb_fail "%recv still exists after -A"; fi
last=$(zfs list -H -o name -t snapshot -s createtxg "$DST/private" | tail -1)
[ "$last" = "$DST/private@qzb-t05-a" ] || qzb_fail "after -A the last snapshot is $last"
qzb_cmp_zvols "$P@qzb-t05-a" "$DST/private@qzb-t05-a"
zfs send -i @qzb-t05-a "$P@qzb-t05-b" | zfs receive -s "$DST/private"
qzb_cmp_zvols "$P@qzb-t05-b" "$DST/private@qzb-t05-b"

zfs destroy "$src"; zfs destroy "$P@qzb-t05-a"; zfs destroy "$P@qzb-t05-b"
zfs destroy -r "$DST"
echo "OK: receive -A discards partial state; a new send then succeeds"
