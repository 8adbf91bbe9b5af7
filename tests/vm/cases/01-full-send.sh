#!/bin/bash
# qzb-vm: full-only (pins real ZFS behaviour; the driver cases cover this data path)
# Full send + receive -s of a zvol (template root @qubes-clean), a clone zvol (no origin: full
# content) and a filesystem (dom0); byte-for-byte / tree compare; guids preserved.
set -euo pipefail
. "$(dirname "$0")/../guest/lib.sh"
qzb_ensure_fixture
C=$QZB_CONTAINER
DST=$(qzb_case_dest full)

src="$C/fedora-41/root@$QZB_CLEAN_SNAP"
zfs send "$src" | zfs receive -s "$DST/fedora-41-root"
qzb_cmp_zvols "$src" "$DST/fedora-41-root@$QZB_CLEAN_SNAP"
[ "$(qzb_prop guid "$src")" = "$(qzb_prop guid "$DST/fedora-41-root@$QZB_CLEAN_SNAP")" ] || qzb_fail "guid not preserved"
want=$(awk -v n="$src" '$4==n{print $1}' "$QZB_FIXTURE_DIR/hashes.txt")
got=$(qzb_hash_zvol "$DST/fedora-41-root@$QZB_CLEAN_SNAP")
[ "$want" = "$got" ] || qzb_fail "received content does not match the fixture manifest ($want vs $got)"
[ "$(qzb_prop volsize "$DST/fedora-41-root")" = "$(qzb_prop volsize "$C/fedora-41/root")" ] || qzb_fail "volsize"

# A clone sent without -i is a full, self-contained stream.
zfs snapshot "$C/work/root@qzb-t01"
zfs send "$C/work/root@qzb-t01" | zfs receive -s "$DST/work-root"
qzb_cmp_zvols "$C/work/root@qzb-t01" "$DST/work-root@qzb-t01"
[ "$(qzb_prop origin "$DST/work-root")" = "-" ] || qzb_fail "full stream of a clone must not be a clone"

# Filesystem.
zfs snapshot "$QZB_SRC_POOL/dom0@qzb-t01"
zfs send "$QZB_SRC_POOL/dom0@qzb-t01" | zfs receive -s "$DST/dom0"
qzb_cmp_fs "$QZB_SRC_POOL/dom0@qzb-t01" "$DST/dom0@qzb-t01"
qzb_cmp_fs "$QZB_SRC_POOL/dom0@qzb-t01" "$DST/dom0"

zfs destroy "$C/work/root@qzb-t01"
zfs destroy "$QZB_SRC_POOL/dom0@qzb-t01"
zfs destroy -r "$DST"
echo "OK: full sends of zvol, clone zvol and filesystem match byte for byte"
