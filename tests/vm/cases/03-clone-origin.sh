#!/bin/bash
# qzb-vm: full-only (pins real ZFS behaviour; the driver cases cover this data path)
# Clones: an AppVM root (clone of the template's @qubes-clean snapshot) sent as an incremental
# from its origin and received with -o origin=, as a full stream with -o origin=, and an
# incremental clone stream received without -o origin (auto-detected by guid).
set -euo pipefail
. "$(dirname "$0")/../guest/lib.sh"
qzb_ensure_fixture
C=$QZB_CONTAINER
DST=$(qzb_case_dest clone)
CLEAN=$QZB_CLEAN_SNAP
zfs create "$DST/fedora-41"; zfs create "$DST/work"; zfs create "$DST/vault"; zfs create "$DST/disp"

zfs send "$C/fedora-41/root@$CLEAN" | zfs receive -s "$DST/fedora-41/root"
zfs snapshot "$C/work/root@qzb-t03"
zfs snapshot "$C/vault/root@qzb-t03"
zfs snapshot "$C/disp4242/root@qzb-t03"

# 1. incremental from the origin + -o origin=
est=$(qzb_send_size "-i $C/fedora-41/root@$CLEAN $C/work/root@qzb-t03")
full=$(qzb_send_size "$C/work/root@qzb-t03")
echo "clone incremental estimate $est bytes, full estimate $full bytes"
[ "$est" -lt "$full" ] || qzb_fail "clone incremental should be smaller than a full send"
zfs send -i "$C/fedora-41/root@$CLEAN" "$C/work/root@qzb-t03" \
  | zfs receive -s -o origin="$DST/fedora-41/root@$CLEAN" "$DST/work/root"
[ "$(qzb_prop origin "$DST/work/root")" = "$DST/fedora-41/root@$CLEAN" ] || qzb_fail "origin of work/root: $(qzb_prop origin "$DST/work/root")"
qzb_cmp_zvols "$C/work/root@qzb-t03" "$DST/work/root@qzb-t03"

# 2. full stream received as a clone with -o origin=
zfs send "$C/vault/root@qzb-t03" | zfs receive -s -o origin="$DST/fedora-41/root@$CLEAN" "$DST/vault/root"
o=$(qzb_prop origin "$DST/vault/root")
echo "full stream + -o origin: origin=$o"
[ "$o" = "$DST/fedora-41/root@$CLEAN" ] || qzb_fail "full stream with -o origin did not become a clone ($o)"
qzb_cmp_zvols "$C/vault/root@qzb-t03" "$DST/vault/root@qzb-t03"

# 3. incremental clone stream without -o origin: ZFS finds the origin by guid (under the same pool)
zfs send -i "$C/fedora-41/root@$CLEAN" "$C/disp4242/root@qzb-t03" | zfs receive -s "$DST/disp/root"
o=$(qzb_prop origin "$DST/disp/root")
echo "incremental clone stream without -o origin: origin=$o"
[ "$o" = "$DST/fedora-41/root@$CLEAN" ] || qzb_fail "auto-detected origin: $o"
qzb_cmp_zvols "$C/disp4242/root@qzb-t03" "$DST/disp/root@qzb-t03"

for vm in work vault disp4242; do zfs destroy "$C/$vm/root@qzb-t03"; done
zfs destroy -r "$DST"
echo "OK: clone sends with -o origin= (incremental and full) and auto-detected origin"
