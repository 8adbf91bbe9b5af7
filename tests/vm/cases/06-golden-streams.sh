#!/bin/bash
# qzb-vm: full-only (real streams through the tap; CI checks the committed golden streams on the host (tests/golden.rs))
# Golden send streams: records REAL `zfs send` output of small zvols with exactly the flags
# dom0 uses for zvols (`-L -p`, plus `-i`/`-I`; no -c, no -e), the resume prefix, token and
# `zfs send -t` output, and each snapshot's per-block blake3, into
# $QZB_VM_OUT/golden/zfs-<version>/ (index.txt describes the chains; format in
# protocol/src/manifest/golden.rs). Then CHECKS them with `xtask golden-check` (the stream tap,
# the records applied to an image against the real device, and the manifests through the chain
# merge and the read-back check). protocol/tests/golden/zfs-2.1.11/ is a copy of one run.
# Needs no fixture: a throwaway pool of its own.
set -euo pipefail
. "$(dirname "$0")/../guest/lib.sh"
QZB_TARGET_DIR=${QZB_TARGET_DIR:-${QZB_REPO:-/work/main}/target/release}
XTASK=$QZB_TARGET_DIR/xtask
[ -x "$XTASK" ] || qzb_fail "$XTASK is missing: cargo build --workspace --bins first (tests/vm/ci.sh does)"
command -v blkdiscard >/dev/null || qzb_fail "blkdiscard (util-linux) is missing"
command -v b3sum >/dev/null || qzb_fail "b3sum is missing (tests/vm/setup.sh installs it)"

BS=16384
KIB16=16K
POOL=qzbgolden
VER=$(zfs version | head -1 | sed -E 's/^(zfs-[0-9]+\.[0-9]+\.[0-9]+).*/\1/')
OUT=$QZB_VM_OUT/golden/$VER
rm -rf "$OUT"; mkdir -p "$OUT"
mkdir -p "$QZB_WORK"
VDEV=$QZB_WORK/golden.vdev
zpool list -H "$POOL" >/dev/null 2>&1 && zpool destroy -f "$POOL"
rm -f "$VDEV"; truncate -s 256M "$VDEV"
zpool create -f -m none "$POOL" "$VDEV"
cleanup() { zpool destroy -f "$POOL" 2>/dev/null || true; rm -f "$VDEV"; }
trap cleanup EXIT

# blk <zvol> <first block> <count> <random|zero>: writes whole volblocksize blocks.
blk() {
  local dev src
  dev=$(qzb_zvol_dev "$1")
  case $4 in random) src=/dev/urandom ;; zero) src=/dev/zero ;; *) qzb_fail "blk: $4" ;; esac
  dd if="$src" of="$dev" bs=$KIB16 seek="$2" count="$3" iflag=fullblock conv=fsync,notrunc status=none
}
# discard <zvol> <first block> <count>: TRIM (blkdiscard) of whole blocks.
discard() {
  local dev
  dev=$(qzb_zvol_dev "$1")
  blkdiscard -o $(($2 * BS)) -l $(($3 * BS)) "$dev"
  sync
}

# The same history for compression=off and compression=lz4 (where zeros become holes).
for c in off lz4; do
  V=$POOL/$c
  zfs create -V 1M -b $KIB16 -o compression=$c "$V"
  # @s1: random blocks 0-2, 5, 9, 20-21, 40; explicit zeros in block 12; the rest never written.
  blk "$V" 0 3 random; blk "$V" 5 1 random; blk "$V" 9 1 random; blk "$V" 20 2 random
  blk "$V" 40 1 random; blk "$V" 12 1 zero
  zfs snapshot "$V@s1"
  # @s2: overwrites (1, 20), a new block (30), TRIM of blocks 8-12 (data 9, zeros 12).
  blk "$V" 1 1 random; blk "$V" 20 1 random; blk "$V" 30 1 random
  discard "$V" 8 5
  zfs snapshot "$V@s2"
  # @s3: volsize 1 MiB -> 2 MiB, blocks past the old end (70, 100, 127 = the last), block 0 again.
  zfs set volsize=2M "$V"
  udevadm settle 2>/dev/null || true
  blk "$V" 70 1 random; blk "$V" 100 1 random; blk "$V" 127 1 random; blk "$V" 0 1 random
  zfs snapshot "$V@s3"
done

# Per-block blake3 of every snapshot's device.
snap_blocks() { # snap_blocks <pool/vol@snap> <file>
  local dev tmp n
  dev=$(qzb_zvol_dev "$1")
  tmp=$(mktemp -d)
  split -b $BS -d -a 5 "$dev" "$tmp/b."
  b3sum --no-names "$tmp"/b.* > "$2"
  rm -rf "$tmp"
  n=$(wc -l < "$2")
  [ $((n * BS)) = "$(qzb_prop volsize "$1")" ] || qzb_fail "$1: $n blocks but volsize $(qzb_prop volsize "$1")"
}
{
  echo "# Golden zfs send streams recorded by tests/vm/cases/06-golden-streams.sh"
  echo "# Format and checks: protocol/src/manifest/golden.rs. zfs version:"
  zfs version | sed 's/^/#   /'
  echo "# kernel $(uname -r), recorded $(date -u +%FT%TZ)"
} > "$OUT/index.txt"
for c in off lz4; do
  V=$POOL/$c
  zfs set snapdev=visible "$V"
  for s in s1 s2 s3; do
    snap_blocks "$V@$s" "$OUT/$c-$s.blocks"
    echo "snapshot $V@$s volsize=$(qzb_prop volsize "$V@$s") volblocksize=$(qzb_prop volblocksize "$V") blocks=$c-$s.blocks" >> "$OUT/index.txt"
  done
  zfs inherit snapdev "$V"
done

# The streams, with dom0's zvol flags.
for c in off lz4; do
  V=$POOL/$c
  zfs send -L -p "$V@s1" > "$OUT/$c-full-s1.zstream"
  zfs send -L -p -i @s1 "$V@s2" > "$OUT/$c-i-s1-s2.zstream"
  zfs send -L -p -I @s1 "$V@s3" > "$OUT/$c-I-s1-s3.zstream"
  cat >> "$OUT/index.txt" <<EOF
chain $c-full expect=$V@s1 streams=$c-full-s1.zstream
chain $c-i expect=$V@s2 streams=$c-full-s1.zstream,$c-i-s1-s2.zstream
chain $c-I expect=$V@s3 streams=$c-full-s1.zstream,$c-I-s1-s3.zstream
EOF
done

# The streams must receive (full, then the -I package) to the snapshots' content.
R=$POOL/recv
zfs create "$R"
for c in off lz4; do
  zfs receive -s "$R/$c" < "$OUT/$c-full-s1.zstream"
  zfs receive -s "$R/$c" < "$OUT/$c-I-s1-s3.zstream"
  zfs set snapdev=visible "$R/$c"
  for s in s1 s2 s3; do
    snap_blocks "$R/$c@$s" "$QZB_WORK/golden-recv.blocks"
    cmp -s "$QZB_WORK/golden-recv.blocks" "$OUT/$c-$s.blocks" || qzb_fail "received $R/$c@$s differs from $POOL/$c@$s"
  done
done

# Resumed streams: the stream cut after half its bytes into `zfs receive -s`, the token, the
# `zfs send -t` output. (1) the full stream of off@s1; (2) the incremental lz4 -i @s1 @s2.
# resume <name> <stream file to cut> <receive target> <snapshot's short name> <its .blocks>:
# writes <name>-prefix.zstream, <name>.token, <name>-resumed.zstream, receives to the end and
# compares the received snapshot with the source's blocks.
resume() {
  local name=$1 stream=$2 dst=$3 snap=$4 blocks=$5 n tok
  n=$(( $(stat -c %s "$OUT/$stream") / 2 ))
  head -c "$n" "$OUT/$stream" > "$OUT/$name-prefix.zstream"
  if zfs receive -s "$dst" < "$OUT/$name-prefix.zstream" 2>"$QZB_WORK/golden-recv.err"; then
    qzb_fail "receive of a cut stream succeeded"
  fi
  sed 's/^/  receive of the cut stream: /' "$QZB_WORK/golden-recv.err"
  tok=$(qzb_token "$dst")
  [ -n "$tok" ] && [ "$tok" != - ] || qzb_fail "$dst: no receive_resume_token after a cut at byte $n"
  echo "$tok" > "$OUT/$name.token"
  zfs send -n -v -P -t "$tok" 2>&1 | sed 's/^/  send -nvP -t: /'
  zfs send -t "$tok" > "$OUT/$name-resumed.zstream"
  zfs receive -s "$dst" < "$OUT/$name-resumed.zstream"
  zfs set snapdev=visible "${dst}"
  snap_blocks "$dst@$snap" "$QZB_WORK/golden-recv.blocks"
  cmp -s "$QZB_WORK/golden-recv.blocks" "$OUT/$blocks" || qzb_fail "resumed $dst@$snap differs from its source"
  echo "resume $name: cut at byte $n of $stream; token object/offset in golden-check's report"
}
resume off-resume-full off-full-s1.zstream "$R/offres" s1 off-s1.blocks
echo "chain off-resume-full expect=$POOL/off@s1 streams=off-resume-full-resumed.zstream prefix=off-resume-full-prefix.zstream token=off-resume-full.token equals=off-full" >> "$OUT/index.txt"
zfs receive -s "$R/lz4res" < "$OUT/lz4-full-s1.zstream"
resume lz4-resume-i lz4-i-s1-s2.zstream "$R/lz4res" s2 lz4-s2.blocks
echo "chain lz4-resume-i expect=$POOL/lz4@s2 streams=lz4-full-s1.zstream,lz4-resume-i-resumed.zstream prefix=lz4-resume-i-prefix.zstream token=lz4-resume-i.token equals=lz4-i" >> "$OUT/index.txt"

ls -l "$OUT"
du -sh "$OUT"
echo "+ xtask golden-check $OUT --trace"
"$XTASK" golden-check "$OUT" --trace | tee "$QZB_VM_OUT/golden-check-$VER.txt"
echo "OK: golden streams of $VER recorded in $OUT and checked"
