#!/bin/bash
# tests/vm/guest/fixture.sh: runs INSIDE the VM. Builds a source pool laid out like Qubes' ZFS
# pool driver plus a backup pool, fills the volumes with random data, and writes manifests:
#   $QZB_FIXTURE_DIR/fixture.env      shell variables for cases (snapshot names, ...)
#   $QZB_FIXTURE_DIR/dom0.json        tests/fake-system state format (src/state.rs HostFile): the qubes as
#                                     the Qubes Admin API sees them + the real datasets (guids, txgs)
#   $QZB_FIXTURE_DIR/fixture-manifest.json  our own format: qubes, volumes, origins, hashes
#   $QZB_FIXTURE_DIR/hashes.txt       "sha256 blake3 type name" for every volume/snapshot/file
# (copied to $QZB_VM_OUT/fixture/ so the host sees them).
#
# Layout (pool "zfs-main", driver zfs, container mainpool/qubes):
#   mainpool                      pool on a sparse file
#   mainpool/qubes                container (filesystem)
#   mainpool/qubes/<vm>           filesystem, holding zvols root, private, volatile
#   fedora-41     TemplateVM   root@qubes-clean-<8hex>, root changed after it; private@qubes:before-start:<t>
#   work          AppVM (Running)  root = clone of fedora-41/root@qubes-clean-*, private with 2 revisions
#   vault         AppVM (Halted)   root = clone, private with 1 revision
#   personal      StandaloneVM     own root
#   default-dvm   AppVM (dispvm template) root = clone, private@qubes-clean-<8hex>
#   disp4242      DispVM (Running) root = clone of template root, private = clone of default-dvm/private@qubes-clean-*
#   mainpool/dom0                 filesystem with files (mounted under the altroot)
#   backuppool/backups/mydesktop  receiver dataset on a second pool
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MIB=$((1024 * 1024))
t0=$(date +%s)
mkdir -p "$QZB_VDEVS" "$QZB_ALTROOT" "$QZB_FIXTURE_DIR"

if zpool list -H "$QZB_SRC_POOL" >/dev/null 2>&1; then
  echo "fixture: $QZB_SRC_POOL already exists; nothing to do"; exit 0
fi

qzb_log "fixture: creating pools (sparse files in $QZB_VDEVS, altroot $QZB_ALTROOT)"
truncate -s 3G "$QZB_VDEVS/mainpool.img"
truncate -s 3G "$QZB_VDEVS/backuppool.img"
zpool create -f -R "$QZB_ALTROOT" -O compression=lz4 -O atime=off "$QZB_SRC_POOL" "$QZB_VDEVS/mainpool.img"
zpool create -f -R "$QZB_ALTROOT" -O compression=lz4 -O atime=off "$QZB_BK_POOL" "$QZB_VDEVS/backuppool.img"
zfs create "$QZB_CONTAINER"
zfs create -p "$QZB_BK_ROOT"

hex8() { od -An -N4 -tx1 /dev/urandom | tr -d ' \n'; }
CLEAN="qubes-clean-$(hex8)"
DVM_CLEAN="qubes-clean-$(hex8)"
now=$(date +%s)
REV1="qubes:before-start:$((now - 7200))"
REV2="qubes:before-start:$((now - 3600))"

# write_random <zvol> <offset MiB> <count MiB>
write_random() {
  local dev
  dev=$(qzb_zvol_dev "$1")
  dd if=/dev/urandom of="$dev" bs=1M seek="$2" count="$3" iflag=fullblock conv=fsync status=none
}
mkvol() { # mkvol <name> <size MiB>
  zfs create -s -V "$2M" "$1"
}
mkvm() { zfs create "$QZB_CONTAINER/$1"; }
C=$QZB_CONTAINER

qzb_log "fixture: template fedora-41"
mkvm fedora-41
mkvol "$C/fedora-41/root" 64; write_random "$C/fedora-41/root" 0 20
mkvol "$C/fedora-41/private" 32; write_random "$C/fedora-41/private" 0 4
mkvol "$C/fedora-41/volatile" 16; write_random "$C/fedora-41/volatile" 0 1
zfs snapshot "$C/fedora-41/root@$CLEAN"
zfs snapshot "$C/fedora-41/private@$REV1"
# The template got updated after its clean snapshot.
write_random "$C/fedora-41/root" 40 4
write_random "$C/fedora-41/private" 8 2

qzb_log "fixture: AppVMs work, vault, default-dvm (roots cloned from fedora-41/root@$CLEAN)"
for vm in work vault default-dvm; do
  mkvm "$vm"
  zfs clone "$C/fedora-41/root@$CLEAN" "$C/$vm/root"
  mkvol "$C/$vm/private" 32
  mkvol "$C/$vm/volatile" 16
done
write_random "$C/work/root" 48 2            # running: its root changed since the clone
write_random "$C/work/volatile" 0 2
write_random "$C/work/private" 0 6
zfs snapshot "$C/work/private@$REV1"
write_random "$C/work/private" 6 3
zfs snapshot "$C/work/private@$REV2"
write_random "$C/work/private" 12 2          # changed since the last revision
write_random "$C/vault/private" 0 8
zfs snapshot "$C/vault/private@$REV2"
write_random "$C/default-dvm/private" 0 3
zfs snapshot "$C/default-dvm/private@$DVM_CLEAN"

qzb_log "fixture: DispVM disp4242"
mkvm disp4242
zfs clone "$C/fedora-41/root@$CLEAN" "$C/disp4242/root"
zfs clone "$C/default-dvm/private@$DVM_CLEAN" "$C/disp4242/private"
mkvol "$C/disp4242/volatile" 16
write_random "$C/disp4242/private" 4 1

qzb_log "fixture: StandaloneVM personal"
mkvm personal
mkvol "$C/personal/root" 48; write_random "$C/personal/root" 0 12
mkvol "$C/personal/private" 32; write_random "$C/personal/private" 0 5
mkvol "$C/personal/volatile" 16
zfs snapshot "$C/personal/private@$REV2"

qzb_log "fixture: dom0 filesystem"
zfs create -o mountpoint=/dom0 "$QZB_SRC_POOL/dom0"
D0=$(qzb_fs_path "$QZB_SRC_POOL/dom0")
mkdir -p "$D0/home/user/Documents" "$D0/etc/qubes"
head -c $((3 * MIB)) /dev/urandom > "$D0/home/user/Documents/report.bin"
head -c 123457 /dev/urandom > "$D0/home/user/odd-size.bin"
printf 'qubes-zfs-backup fixture\ncreated %s\n' "$(date -u +%FT%TZ)" > "$D0/etc/qubes/qubes.xml"
ln -s Documents/report.bin "$D0/home/user/latest-report"
: > "$D0/home/user/empty"
sync

# ------------------------------------------------------------------ manifests
# The hash table (every volume and snapshot, sha256 + blake3) and the real send-size table cost
# minutes under TCG and only the full run (case 01) and recordings (QZB_VM_RECORD=1, the
# fixture manifests under tests/vm/recorded/) read them; CI's default run leaves them empty.
H="$QZB_FIXTURE_DIR/hashes.txt"
: > "$H"
: > "$QZB_FIXTURE_DIR/send-sizes.tsv"
FULL_TABLES=0
{ [ "${QZB_VM_FULL:-0}" = 1 ] || [ "${QZB_VM_RECORD:-0}" = 1 ]; } && FULL_TABLES=1
if [ "$FULL_TABLES" = 1 ]; then
qzb_log "fixture: hashing volumes and writing manifests"
hash_line() { # hash_line <type> <name> <device-or-file>
  echo "$(qzb_hash_dev "$3") $(qzb_b3_dev "$3") $1 $2" >> "$H"
}
for v in $(zfs list -H -o name -t volume -r "$QZB_SRC_POOL"); do
  hash_line volume "$v" "$(qzb_zvol_dev "$v")"
done
zfs set snapdev=visible "$QZB_SRC_POOL"
for s in $(zfs list -H -o name -t snapshot -r "$QZB_SRC_POOL"); do
  [ "$(zfs get -H -o value type "${s%@*}")" = volume ] || continue
  hash_line snapshot "$s" "$(qzb_zvol_dev "$s")"
done
zfs inherit snapdev "$QZB_SRC_POOL"
(cd "$D0" && find . -type f | sort) | while read -r f; do
  hash_line file "$QZB_SRC_POOL/dom0:${f#./}" "$D0/$f"
done
else
  qzb_log "fixture: hash and send-size tables skipped (QZB_VM_FULL=1 or QZB_VM_RECORD=1 write them)"
fi

cat > "$QZB_FIXTURE_DIR/fixture.env" <<EOF
QZB_CLEAN_SNAP='$CLEAN'
QZB_DVM_CLEAN_SNAP='$DVM_CLEAN'
QZB_REV1='$REV1'
QZB_REV2='$REV2'
QZB_DOM0_PATH='$D0'
EOF

zfs list -H -p -t all -o name,type,origin,createtxg,guid,volsize,used,referenced,creation \
  -r "$QZB_SRC_POOL" "$QZB_BK_POOL" > "$QZB_FIXTURE_DIR/zfs-list.tsv"
zfs get -H -p -s local -o name,property,value all -r "$QZB_SRC_POOL" "$QZB_BK_POOL" \
  > "$QZB_FIXTURE_DIR/zfs-local-props.tsv"
# Real send size estimates per snapshot: full, and incremental from the previous snapshot of the
# same dataset (or from the clone origin for a clone's first snapshot).
prev_ds=""; prev_snap=""
if [ "$FULL_TABLES" = 1 ]; then while IFS=$'\t' read -r snap origin; do
  ds=${snap%@*}
  full=$(qzb_send_size "$snap")
  incr="-"
  if [ "$ds" = "$prev_ds" ]; then incr=$(qzb_send_size "-i $prev_snap $snap")
  else
    o=$(zfs get -H -o value origin "$ds")
    [ "$o" != "-" ] && incr=$(qzb_send_size "-i $o $snap")
  fi
  printf '%s\t%s\t%s\n' "$snap" "$full" "${incr:--}" >> "$QZB_FIXTURE_DIR/send-sizes.tsv"
  prev_ds=$ds; prev_snap=$snap
done < <(zfs list -H -p -t snapshot -s createtxg -o name,origin -r "$QZB_SRC_POOL" | sort -s -t@ -k1,1); fi

/usr/bin/python3 "$QZB_VM_DIR/guest/write-manifest.py" \
  --hashes "$H" --zfs-list "$QZB_FIXTURE_DIR/zfs-list.tsv" --clean "$CLEAN" --dvm-clean "$DVM_CLEAN" \
  --zfs-version "$(zfs version | head -1)" --out "$QZB_FIXTURE_DIR/fixture-manifest.json"

mkdir -p "$QZB_VM_OUT/fixture"
cp "$QZB_FIXTURE_DIR"/* "$QZB_VM_OUT/fixture/" 2>/dev/null || true
qzb_log "fixture: done in $(( $(date +%s) - t0 ))s"
zfs list -t all -o name,type,origin,volsize,used -r "$QZB_SRC_POOL" "$QZB_BK_POOL"
