#!/bin/bash
# A whole backup with the REAL driver and the REAL receiver agent on real ZFS (only the Qubes
# Admin API, xl and qrexec are fake):
#  1. full: qubes work and vault (AppVMs: their private volumes; root and volatile are
#     transient), datasets mainpool/dom0 and mainpool/archive (a filesystem clone of dom0, sent
#     in full because honour-origins is off): import, snapshot, calc, send, verify, status;
#     every received zvol/filesystem compared with its source (guid, bytes / file tree).
#     (The template and the StandaloneVM are left out to keep TCG time down; case 10 plans them.)
#  2. incremental: new random data in some volumes and dom0 files, an intermediate snapshot by
#     hand, two new clones of the first backup's snapshots; config since = the first target,
#     progressive + honour-origins: -I packages (the intermediate snapshot arrives), clone sends
#     (-i <origin>, received as clones of the receiver's copy); send, verify, compare.
set -euo pipefail
. "$(dirname "$0")/../guest/lib.sh"
. "$(dirname "$0")/../guest/driver.sh"
qzb_ensure_fixture
C=$QZB_CONTAINER
P=$QZB_SRC_POOL
ROOT=$QZB_BK_ROOT
W=$QZB_WORK/case11
rm -rf "$W"; mkdir -p "$W"
qzb_drv_setup backup full
qzb_fake_qubes state work Halted      # the fixture's work runs; a backup needs it shut down
qzb_drv_key_init                      # authenticated: manifests of every zvol, verify reads back

zfs snapshot "$P/dom0@qzb-b0"
zfs create "$P/archive"
zfs clone "$P/dom0@qzb-b0" "$P/archive/dom0-old"
head -c 300000 /dev/urandom > "$(qzb_fs_path "$P/archive/dom0-old")/changed-in-clone.bin"

cleanup() ( # a subshell: its set +e stays inside
  set +e
  zfs destroy -r "$ROOT/$P" 2>/dev/null
  zfs destroy -r "$ROOT/.qzb-meta" 2>/dev/null
  zfs destroy -r "$P/archive"
  zfs list -H -o name -t snapshot -r "$P" | grep -E '@qzb-(b0|b1|b2|mid)$' | xargs -r -n1 zfs destroy
  rm -f "$QZB_DOM0_PATH/home/user/b2-new.bin"
  true
)
trap cleanup EXIT
zfs destroy -r "$ROOT/$P" 2>/dev/null || true
# Each case is a fresh medium: the agent's metadata filesystem of an earlier case (another key,
# mounted under that case's directory) goes too, or the agent refuses its mountpoint.
zfs destroy -r "$ROOT/.qzb-meta" 2>/dev/null || true

config() { # config <file> <name> <target> <since> <progressive> <honour-origins>
  cat > "$1" <<EOF
name: $2
scope:
  target-snapshot: "@$3"
  since: $4
  progressive: $5
  honour-origins: $6
allowed-behaviours:
  snapshot-creation: yes
  patching: no
receiver:
  qube: $QZB_RECEIVER_QUBE
  dataset: $ROOT
include-groups: [qubes, data]
forgo-groups: []
void-groups: []
qubes:
  type: qubes
  members: [work, vault]
data:
  type: datasets
  members: [mainpool/dom0, mainpool/archive]
EOF
}

# compare_all <backup>: every target of the backup compared with its source on the receiver.
compare_all() {
  local n=0 snap
  qzb_drv status --json "$1" > "$W/status-$1.json"
  while read -r snap; do
    qzb_cmp_backup "$snap" "$ROOT" | sed 's/^/  /'
    n=$((n + 1))
  done < <(/usr/bin/python3 -c "
import json, sys
for t in json.load(open(sys.argv[1])):
    assert t['send_state'] == 'done', t
    print(t['snapshot'])" "$W/status-$1.json")
  echo "  $n targets of $1 identical on the receiver"
}

qzb_log "1. full backup"
config "$W/full.yaml" vm-full qzb-b1 beginning no no
t0=$(date +%s)
qzb_drv_ok import "$W/full.yaml"
qzb_drv_ok snapshot vm-full
qzb_drv_json "$W/calc-full.json" calc --json vm-full
qzb_drv_ok send vm-full
out=$(qzb_drv verify vm-full 2>&1) || qzb_fail "verify vm-full: $out"
echo "$out" | sed 's/^/    /'
n=$(grep -c '^verified  ' <<< "$out" || true)
[ "$n" -ge 2 ] || qzb_fail "verify vm-full read back $n zvols, expected work and vault private"
echo "  verify read $n zvols back from the receiver's own zfs send and checked every block"
grep -q "^ok        set index of .*settings of [1-9][0-9]* qube(s)): MACs match" <<< "$out" \
  || qzb_fail "verify vm-full did not check a set index with settings"
read -r done total < <(qzb_status_check vm-full "$W/st-full.json" "$ROOT")
[ "$done" = "$total" ] || qzb_fail "full backup: $done/$total targets done"
echo "  full backup: $total targets sent in $(( $(date +%s) - t0 ))s"
compare_all vm-full
[ "$(qzb_prop volmode "$ROOT/$C/vault/private")" = none ] || qzb_fail "received zvol volmode is not none"
[ "$(qzb_prop canmount "$ROOT/$P/dom0")" = noauto ] || qzb_fail "received filesystem canmount is not noauto"
[ "$(qzb_prop origin "$ROOT/$P/archive/dom0-old")" = "-" ] || qzb_fail "honour-origins off: a clone should arrive as a full copy"

qzb_log "2. new data, an intermediate snapshot, new clones; incremental progressive backup"
qzb_write_random "$C/vault/private" 20 3
zfs snapshot "$C/vault/private@qzb-mid"
qzb_write_random "$C/vault/private" 24 2
qzb_write_random "$C/work/private" 16 2
head -c 2000000 /dev/urandom > "$QZB_DOM0_PATH/home/user/b2-new.bin"
zfs clone "$C/vault/private@qzb-b1" "$P/archive/vault-private-copy"
qzb_write_random "$P/archive/vault-private-copy" 0 2
zfs clone "$P/dom0@qzb-b1" "$P/archive/dom0-b1"
head -c 500000 /dev/urandom > "$(qzb_fs_path "$P/archive/dom0-b1")/clone-only.bin"
sync

config "$W/incr.yaml" vm-incr qzb-b2 '"@qzb-b1"' yes yes
t0=$(date +%s)
qzb_drv_ok import "$W/incr.yaml"
qzb_drv_ok snapshot vm-incr
qzb_drv_json "$W/calc-incr.json" calc --json vm-incr
/usr/bin/python3 - "$W/calc-incr.json" "$P" "$C" <<'EOF' || qzb_fail "incremental plan"
import json, sys
d = json.load(open(sys.argv[1])); P, C = sys.argv[2], sys.argv[3]
by = {t["snapshot"]: t for t in d["targets"]}
def need(snap, src, origin=None):
    t = by.get(snap)
    assert t is not None, f"{snap} not planned: {sorted(by)}"
    assert t["incremental_source"] == src, f"{snap}: source {t['incremental_source']} != {src}"
    assert t["origin"] == origin, f"{snap}: origin {t['origin']} != {origin}"
need(f"{C}/vault/private@qzb-b2", f"{C}/vault/private@qzb-b1")
assert by[f"{C}/vault/private@qzb-b2"]["progressive"], "vault/private not -I"
need(f"{P}/dom0@qzb-b2", f"{P}/dom0@qzb-b1")
need(f"{P}/archive/vault-private-copy@qzb-b2", f"{C}/vault/private@qzb-b1", f"{C}/vault/private@qzb-b1")
need(f"{P}/archive/dom0-b1@qzb-b2", f"{P}/dom0@qzb-b1", f"{P}/dom0@qzb-b1")
need(f"{P}/archive/dom0-old@qzb-b2", f"{P}/archive/dom0-old@qzb-b1")
print(f"  plan: {len(by)} targets; -I packages and clone sends as expected")
EOF
qzb_drv_ok send vm-incr
# A zvol clone sent from its origin (honour-origins) has no manifest yet (its chain would start
# on another dataset): verify checks it by guid only and says so, exit 10. Every other zvol is
# read back and verified.
set +e; out=$(qzb_drv verify vm-incr 2>&1); rc=$?; set -e
echo "$out" | sed 's/^/    /'
[ "$rc" = 10 ] || qzb_fail "verify vm-incr exited $rc, expected 10 (the zvol clone is unverifiable)"
grep -q "^UNVERIFIABLE $ROOT/$P/archive/vault-private-copy@qzb-b2" <<< "$out" || qzb_fail "the zvol clone is not the unverifiable one"
[ "$(grep -c '^UNVERIFIABLE' <<< "$out")" = 1 ] || qzb_fail "more than the clone is unverifiable"
grep -q "^verified  $ROOT/$C/vault/private@qzb-b2" <<< "$out" || qzb_fail "vault/private@qzb-b2 (-I with an intermediate snapshot) not verified"
read -r done total < <(qzb_status_check vm-incr "$W/st-incr.json" "$ROOT")
[ "$done" = "$total" ] || qzb_fail "incremental backup: $done/$total targets done"
echo "  incremental backup: $total targets sent in $(( $(date +%s) - t0 ))s"
compare_all vm-incr
qzb_cmp_backup "$C/vault/private@qzb-mid" "$ROOT" | sed 's/^/  (intermediate, -I) /'
for c in vault-private-copy dom0-b1; do
  o=$(qzb_prop origin "$ROOT/$P/archive/$c")
  case "$o" in "$ROOT/"*@qzb-b1) echo "  $ROOT/$P/archive/$c is a clone of $o on the receiver" ;;
    *) qzb_fail "$ROOT/$P/archive/$c: origin $o, expected the receiver's copy of its origin" ;; esac
done
# The first backup's snapshots are unchanged on the receiver.
qzb_cmp_backup "$C/work/private@qzb-b1" "$ROOT" | sed 's/^/  (still) /'
qzb_log "3. a lying receiver and a tampered medium fail verify"
# A backup qube whose read-back returns other data (it keeps the snapshot with the right guid,
# but what it reads back is a decoy's blocks): a wrapper zfs, first on PATH, answers the
# agent's read-back of vault/private@qzb-b2 with the decoy's stream.
# The same size and block size as vault/private, so the lie is caught by the tags, not by the geometry.
zfs create -s -V "$(zfs get -H -p -o value volsize "$C/vault/private")" -o volblocksize="$(zfs get -H -p -o value volblocksize "$C/vault/private")" "$ROOT/decoy"
qzb_write_random "$ROOT/decoy" 0 4
zfs snapshot "$ROOT/decoy@x"
mkdir -p "$W/liar"
real_zfs=$(command -v zfs)
cat > "$W/liar/zfs" <<EOF
#!/bin/sh
if [ "\$1 \$2 \$3" = "send -L $ROOT/$C/vault/private@qzb-b2" ]; then exec $real_zfs send -L $ROOT/decoy@x; fi
exec $real_zfs "\$@"
EOF
chmod +x "$W/liar/zfs"
saved_path=$PATH
PATH="$W/liar:$PATH"
set +e; out=$(qzb_drv verify vm-incr 2>&1); rc=$?; set -e
PATH=$saved_path
echo "$out" | sed 's/^/    /'
[ "$rc" = 8 ] || qzb_fail "verify against a lying receiver exited $rc, expected 8"
grep -q "^FAILED    $ROOT/$C/vault/private@qzb-b2" <<< "$out" || qzb_fail "the lie was not named"
grep -q "^ok        $ROOT/$C/vault/private@qzb-b2 (guid)" <<< "$out" || qzb_fail "the liar should pass the guid check"
zfs destroy -r "$ROOT/decoy"
# A flipped byte in a stored manifest header: its MAC fails, verify names it.
# The agent's metadata filesystem is mounted under the pool's altroot (the pools here are
# imported with -R), so ask ZFS where it is.
meta_dir=$(zfs get -H -o value mountpoint "$ROOT/.qzb-meta")
case $meta_dir in "$QZB_ALTROOT$QZB_DRV_DIR/agent-meta/"*) ;; *) qzb_fail "metadata filesystem at $meta_dir";; esac
head=$(find "$meta_dir" -name '*.head' | sort | head -n 1)
[ -n "$head" ] || qzb_fail "no manifest header stored under $meta_dir"
cp "$head" "$W/head.bak"
printf '\001' | dd of="$head" bs=1 seek=40 conv=notrunc status=none
set +e; out=$(qzb_drv verify vm-full 2>&1); rc=$?; set -e
cp "$W/head.bak" "$head"
{ [ "$rc" = 8 ] && grep -q "MAC does not match" <<< "$out"; } || qzb_fail "a flipped manifest byte: exit $rc: $out"
# The same for the set indexes (every backup's: the blob names hash the backup's name).
mapfile -t indexes < <(find "$meta_dir/sets" -name '*.index' | sort)
[ "${#indexes[@]}" -gt 0 ] || qzb_fail "no set index stored under $meta_dir/sets"
for f in "${indexes[@]}"; do
  cp "$f" "$f.bak"
  printf '\001' | dd of="$f" bs=1 seek=20 conv=notrunc status=none
done
set +e; out=$(qzb_drv verify vm-full 2>&1); rc=$?; set -e
for f in "${indexes[@]}"; do mv "$f.bak" "$f"; done
{ [ "$rc" = 8 ] && grep -q "^FAILED    set index: .*MAC does not match" <<< "$out"; } || qzb_fail "a flipped set index byte: exit $rc: $out"
echo "  a lying receiver (decoy read-back, right guid), a flipped manifest byte and a flipped set index byte each fail verify (exit 8)"
qzb_drv_ok verify vm-full

echo "OK: full + incremental/progressive/clone backups by the real driver and agent are identical to the source; authenticated zvols verify by read-back; a lying receiver and a tampered manifest fail verify"

