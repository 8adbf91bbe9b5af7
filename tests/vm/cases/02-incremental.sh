#!/bin/bash
# qzb-vm: full-only (pins real ZFS behaviour; the driver cases cover this data path)
# Incremental sends: -i (one step) and -I (with intermediate snapshots), zvols and a filesystem.
set -euo pipefail
. "$(dirname "$0")/../guest/lib.sh"
qzb_ensure_fixture
C=$QZB_CONTAINER
DST=$(qzb_case_dest incr)
P="$C/work/private"

# -i: REV1 -> REV2 -> a new snapshot of the head.
zfs snapshot "$P@qzb-t02"
zfs send "$P@$QZB_REV1" | zfs receive -s "$DST/work-private"
zfs send -i "@$QZB_REV1" "$P@$QZB_REV2" | zfs receive -s "$DST/work-private"
zfs send -i "$P@$QZB_REV2" "$P@qzb-t02" | zfs receive -s "$DST/work-private"
for s in "$QZB_REV1" "$QZB_REV2" qzb-t02; do qzb_cmp_zvols "$P@$s" "$DST/work-private@$s"; done
qzb_cmp_zvols "$P@qzb-t02" "$DST/work-private"

# -I: carries intermediate snapshots.
F="$C/fedora-41/private"
zfs snapshot "$F@qzb-t02-a"; qzb_write_random "$F" 16 2
zfs snapshot "$F@qzb-t02-b"; qzb_write_random "$F" 20 2
zfs snapshot "$F@qzb-t02-c"
zfs send "$F@$QZB_REV1" | zfs receive -s "$DST/f41-private"
zfs send -I "@$QZB_REV1" "$F@qzb-t02-c" | zfs receive -s "$DST/f41-private"
got=$(zfs list -H -o name -t snapshot -s createtxg "$DST/f41-private" | sed 's/.*@//' | tr '\n' ' ')
[ "$got" = "$QZB_REV1 qzb-t02-a qzb-t02-b qzb-t02-c " ] || qzb_fail "-I snapshots on destination: $got"
for s in "$QZB_REV1" qzb-t02-a qzb-t02-b qzb-t02-c; do qzb_cmp_zvols "$F@$s" "$DST/f41-private@$s"; done

# Filesystem -i and -I.
D=$QZB_SRC_POOL/dom0
zfs snapshot "$D@qzb-t02-1"
head -c 1048576 /dev/urandom > "$QZB_DOM0_PATH/home/user/t02-new.bin"
rm -f "$QZB_DOM0_PATH/home/user/empty"
zfs snapshot "$D@qzb-t02-2"
echo changed >> "$QZB_DOM0_PATH/etc/qubes/qubes.xml"
zfs snapshot "$D@qzb-t02-3"
head -c 4096 /dev/urandom > "$QZB_DOM0_PATH/home/user/t02-more.bin"
zfs snapshot "$D@qzb-t02-4"
zfs send "$D@qzb-t02-1" | zfs receive -s -u "$DST/dom0"
zfs send -i @qzb-t02-1 "$D@qzb-t02-2" | zfs receive -s -u "$DST/dom0"
zfs send -I @qzb-t02-2 "$D@qzb-t02-4" | zfs receive -s -u "$DST/dom0"
for s in qzb-t02-1 qzb-t02-2 qzb-t02-3 qzb-t02-4; do qzb_cmp_fs "$D@$s" "$DST/dom0@$s"; done

# Restore the source: drop the case's snapshots and files.
rm -f "$QZB_DOM0_PATH/home/user/t02-new.bin" "$QZB_DOM0_PATH/home/user/t02-more.bin"
: > "$QZB_DOM0_PATH/home/user/empty"
for s in qzb-t02-1 qzb-t02-2 qzb-t02-3 qzb-t02-4; do zfs destroy "$D@$s"; done
for s in qzb-t02-a qzb-t02-b qzb-t02-c; do zfs destroy "$F@$s"; done
zfs destroy "$P@qzb-t02"
zfs destroy -r "$DST"
echo "OK: -i and -I incrementals of zvols and a filesystem match byte for byte"
