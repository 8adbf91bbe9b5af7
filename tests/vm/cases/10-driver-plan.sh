#!/bin/bash
# qzb-vm: full-only (planning against real ZFS; case 11 runs check/import/snapshot/calc/send on real ZFS in CI)
# The REAL qubes-zfs-backup driver's `check --json`, `import`, `snapshot` and `calc --json` against
# the real fixture pool (only the Qubes Admin API, xl and qrexec are fake), asserted against what
# real `zfs` says:
#  - designations and targets (qubes work, vault, personal, template fedora-41, dataset
#    mainpool/dom0): exists/missing per real `zfs list`, kinds, transient volumes (volatile, AppVM
#    root) and the disposable excluded;
#  - progressive + honour-origins: clone targets carry the real `origin` property as their
#    incremental source; progressive primers are each dataset's oldest snapshot;
#  - since = an existing snapshot (@qubes:before-start:<t>): incremental exactly where it exists;
#  - snapshot: one createtxg per qube (atomic per qube and pool); a running qube whose volumes are
#    attached in xl is deferred, and snapshotted once halted;
#  - calc --json: every size estimate equals real `zfs send -n -v -P -L [-e -c] -p [-i|-I src]`
#    (-e -c for filesystems only).
set -euo pipefail
. "$(dirname "$0")/../guest/lib.sh"
. "$(dirname "$0")/../guest/driver.sh"
qzb_ensure_fixture
C=$QZB_CONTAINER
W=$QZB_WORK/case10
rm -rf "$W"; mkdir -p "$W"
qzb_drv_setup plan full
LABEL=qzb-plan-1

# Non-transient clones (a zvol cloned from the template root, a filesystem cloned from dom0),
# so honour-origins has something to honour: the fixture's own clones are all transient.
zfs snapshot "$QZB_SRC_POOL/dom0@qzb-plan-base"
zfs create "$QZB_SRC_POOL/archive"
zfs clone "$C/fedora-41/root@$QZB_CLEAN_SNAP" "$QZB_SRC_POOL/archive/f41-root-copy"
zfs clone "$QZB_SRC_POOL/dom0@qzb-plan-base" "$QZB_SRC_POOL/archive/dom0-old"

cleanup() ( # a subshell: its set +e stays inside
  set +e
  zfs list -H -o name -t snapshot -r "$QZB_SRC_POOL" | grep "@$LABEL\$" | xargs -r -n1 zfs destroy
  zfs destroy -r "$QZB_SRC_POOL/archive"
  zfs destroy "$QZB_SRC_POOL/dom0@qzb-plan-base"
  true
)
trap cleanup EXIT

config() { # config <file> <name> <since> <progressive> <honour-origins> <extra dataset members>
  cat > "$1" <<EOF
name: $2
scope:
  target-snapshot: "@$LABEL"
  since: $3
  progressive: $4
  honour-origins: $5
allowed-behaviours:
  snapshot-creation: yes
  patching: no
receiver:
  qube: $QZB_RECEIVER_QUBE
  dataset: $QZB_BK_ROOT
include-groups:
  - appvms
  - templates
  - dom0
forgo-groups:
  - system
void-groups: []
appvms:
  type: qubes
  members: [work, vault, personal, disp4242]
templates:
  type: qubes
  members: [fedora-41]
dom0:
  type: datasets
  members: [mainpool/dom0$6]
system:
  type: qubes
  members: [default-dvm]
EOF
}
config "$W/a.yaml" plan-a beginning no no ""
config "$W/b.yaml" plan-b beginning yes yes ", mainpool/archive"
config "$W/c.yaml" plan-c "\"@$QZB_REV2\"" no no ""

# What real ZFS says, for the assertions.
snapshot_zfs_state() {
  zfs list -H -p -t all -o name,type,origin,createtxg,guid -s createtxg -r "$QZB_SRC_POOL" > "$W/zfs-list.tsv"
}
snapshot_zfs_state

# The assertions: python reads the driver's JSON and real `zfs list`.
cat > "$W/assert.py" <<'EOF'
import json, sys
mode, report, zlist = sys.argv[1:4]
extra = sys.argv[4:]
d = json.load(open(report))
rows = {}
snaps = {}  # dataset -> [(label, createtxg)] in createtxg order
for line in open(zlist):
    name, typ, origin, txg, guid = line.rstrip("\n").split("\t")
    rows[name] = dict(type=typ, origin=None if origin == "-" else origin, txg=int(txg), guid=int(guid))
    if "@" in name:
        ds, lab = name.split("@", 1)
        snaps.setdefault(ds, []).append(lab)
C = "mainpool/qubes"
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

label = extra[0]
check(d["valid"] is True, f"config not valid: {d['errors']}")
desig = {(x["dataset"], x["type"]) for x in d["designations"]}
for q in ["work", "vault", "personal", "fedora-41"]:
    check((f"{C}/{q}", "include") in desig, f"qube {q} not designated include: {desig}")
check(("mainpool/dom0", "include") in desig, "mainpool/dom0 not included")
check((f"{C}/default-dvm", "forgo") in desig, "default-dvm not forgone")
check(any("disp4242" in w["message"] and "disposable" in w["message"] for w in d["warnings"]),
      f"no warning that the disposable contributes nothing: {d['warnings']}")

# Expected target datasets: each included qube's filesystem and its volumes minus transient
# ones (volatile; an AppVM's root), plus the dataset members (and their descendants).
appvms = {"work", "vault"}
expected = set()
for q in ["work", "vault", "personal", "fedora-41"]:
    expected.add(f"{C}/{q}")
    for v in ["root", "private", "volatile"]:
        if v == "volatile" or (v == "root" and q in appvms):
            continue
        expected.add(f"{C}/{q}/{v}")
for top in ["mainpool/dom0"] + (["mainpool/archive"] if mode == "b" else []):
    expected |= {n for n in rows if "@" not in n and (n == top or n.startswith(top + "/"))}
targets = d["targets"]
final = {t["snapshot"].split("@")[0] for t in targets if t["snapshot"].endswith("@" + label)}
check(final == expected, f"target datasets differ from the real pool's:\n  planned  {sorted(final)}\n  expected {sorted(expected)}")
for t in targets:
    ds = t["snapshot"].split("@")[0]
    check("disp4242" not in ds and not ds.endswith("/volatile")
          and not (ds.endswith("/root") and ds.rsplit("/", 2)[-2] in appvms),
          f"transient or disposable dataset planned: {t['snapshot']}")
    real = rows.get(t["snapshot"])
    check(t["exists"] == (real is not None), f"{t['snapshot']}: exists={t['exists']} but zfs says {real is not None}")
    if real:
        check(int(t["guid"]) == real["guid"], f"{t['snapshot']}: guid {t['guid']} != real {real['guid']}")
    want_kind = {"volume": "volume", "filesystem": "filesystem"}[rows[ds]["type"]]
    check(t["kind"] == want_kind, f"{t['snapshot']}: kind {t['kind']} != {want_kind}")

pos = {t["snapshot"]: i for i, t in enumerate(targets)}
if mode == "a":
    for t in targets:
        check(t["incremental_source"] is None and t["origin"] is None,
              f"{t['snapshot']}: expected a full send, got {t['incremental_source']}")
    check(len(targets) == len(expected), "plan-a has extra targets")
elif mode == "b":
    clones = 0
    for t in targets:
        ds, lab = t["snapshot"].split("@", 1)
        origin = rows[ds]["origin"]
        src = t["incremental_source"]
        if lab == label and origin is not None:
            clones += 1
            check(t["origin"] == origin and src == origin,
                  f"{t['snapshot']}: clone of {origin} (real origin) planned with origin={t['origin']} source={src}")
            check(origin in pos and pos[origin] < pos[t["snapshot"]],
                  f"{t['snapshot']}: its origin {origin} is not planned before it")
        elif t["reason"] == "primer":
            check(src is None and lab == snaps[ds][0],
                  f"{t['snapshot']}: a primer must be the dataset's oldest snapshot {snaps[ds][0]}, full")
        elif src is not None and src.split("@")[0] == ds:
            check(t["progressive"] is True, f"{t['snapshot']}: same-dataset incremental not progressive (-I)")
            check(pos[src] < pos[t["snapshot"]], f"{t['snapshot']}: source {src} planned after it")
    # clones in mainpool/archive: the zvol (origin fedora-41 root clean) and the fs (origin dom0)
    check(clones == 2, f"expected 2 clone targets (mainpool/archive/*), got {clones}")
    for ds in expected:
        if snaps.get(ds) and rows[ds]["origin"] is None:
            first = f"{ds}@{snaps[ds][0]}"
            check(first in pos, f"{ds} has snapshots but its oldest ({first}) is not planned as primer")
elif mode == "c":
    since = extra[1]
    full = []
    for t in targets:
        ds = t["snapshot"].split("@")[0]
        has = since in snaps.get(ds, [])
        want = f"{ds}@{since}" if has else None
        check(t["incremental_source"] == want, f"{t['snapshot']}: source {t['incremental_source']}, expected {want}")
        if not has:
            full.append(ds)
    check(any("sent in full" in w["message"] for w in d["warnings"]) == bool(full),
          f"no 'sent in full' warning for {full}: {d['warnings']}")
    print(f"  since @{since}: {len(targets) - len(full)} incremental, {len(full)} full")
if errors:
    print("\n".join("FAIL: " + e for e in errors))
    sys.exit(1)
print(f"  {mode}: {len(targets)} targets match real zfs: "
      + ", ".join(f"{t['snapshot']}{' <- ' + t['incremental_source'] if t['incremental_source'] else ''}" for t in targets))
EOF

qzb_log "check --json: plain, progressive + honour-origins, since = an existing snapshot"
qzb_drv_json "$W/check-a.json" check --json "$W/a.yaml"
/usr/bin/python3 "$W/assert.py" a "$W/check-a.json" "$W/zfs-list.tsv" "$LABEL" || qzb_fail "plan-a check"
qzb_drv_json "$W/check-b.json" check --json "$W/b.yaml"
/usr/bin/python3 "$W/assert.py" b "$W/check-b.json" "$W/zfs-list.tsv" "$LABEL" || qzb_fail "plan-b check"
qzb_drv_json "$W/check-c.json" check --json "$W/c.yaml"
/usr/bin/python3 "$W/assert.py" c "$W/check-c.json" "$W/zfs-list.tsv" "$LABEL" "$QZB_REV2" || qzb_fail "plan-c check"

qzb_log "import"
qzb_drv_ok import "$W/a.yaml"
qzb_drv_ok import "$W/b.yaml"
qzb_drv_rc 6 import "$W/a.yaml"      # already imported

qzb_log "snapshot: work is Running with its volumes attached in xl: deferred"
qzb_fake_qubes state work Running 12
out=$(qzb_drv snapshot plan-a 2>&1) || true
echo "$out" | sed 's/^/    /'
echo "$out" | grep -q "Deferred qube:work" || qzb_fail "snapshot did not defer the running qube work"
if zfs list -H -o name -t snapshot -r "$C/work" | grep -q "@$LABEL\$"; then
  qzb_fail "a snapshot @$LABEL of work was taken while work runs"
fi
qzb_log "snapshot: work halted: now taken"
qzb_fake_qubes state work Halted
qzb_drv_ok snapshot plan-a
qzb_drv_ok snapshot plan-b

# Atomic per qube and pool: all of one qube's target snapshots share one createtxg.
snapshot_zfs_state
# One listing for every assertion (each `zfs` run costs seconds under TCG).
zfs list -H -p -t snapshot -o name,createtxg -r "$C" > "$W/snaps-after.tsv"
for q in work vault personal fedora-41; do
  txgs=$(awk -v q="$C/$q" -v l="@$LABEL" 'index($1, q) == 1 && substr($1, length($1) - length(l) + 1) == l {print $2}' "$W/snaps-after.tsv" | sort -u)
  n=$(awk -v q="$C/$q" -v l="@$LABEL" 'index($1, q) == 1 && substr($1, length($1) - length(l) + 1) == l' "$W/snaps-after.tsv" | wc -l)
  [ -n "$txgs" ] || qzb_fail "qube $q: no snapshots @$LABEL"
  [ "$(echo "$txgs" | wc -l)" = 1 ] || qzb_fail "qube $q: snapshots in several txgs: $(echo $txgs)"
  echo "  qube $q: $n snapshots @$LABEL, all createtxg $txgs"
done
for s in "$C/work/volatile" "$C/work/root" "$C/disp4242/private" "$C/disp4242/root"; do
  if awk -v n="$s@$LABEL" '$1 == n {f = 1} END {exit !f}' "$W/snaps-after.tsv"; then
    qzb_fail "transient/disposable $s was snapshotted"
  fi
done

qzb_log "check --json after snapshot: every target exists"
qzb_drv_json "$W/check-a2.json" check --json "$W/a.yaml"
/usr/bin/python3 "$W/assert.py" a "$W/check-a2.json" "$W/zfs-list.tsv" "$LABEL" || qzb_fail "plan-a check after snapshot"
/usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if all(t['exists'] for t in d['targets']) else 1)" "$W/check-a2.json" \
  || qzb_fail "targets still missing after snapshot"

qzb_log "calc --json: estimates equal real zfs send -n -v -P -L [-e -c] -p (-e -c for filesystems only)"
send_args() { # send_args <src> <progressive> <kind>: the driver's send_args_from, as an array ARGS
  # zvols go without -e -c (plain blocks for the manifest tap)
  if [ "$3" = volume ]; then ARGS=(-L -p); else ARGS=(-L -e -c -p); fi
  if [ "$1" != "-" ]; then
    # -I when progressive (also from a clone origin), else -i
    if [ "$2" = True ]; then ARGS+=(-I "$1"); else ARGS+=(-i "$1"); fi
  fi
}
for b in plan-a plan-b; do
  qzb_drv_json "$W/calc-$b.json" calc --json "$b"
  /usr/bin/python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
assert d['receiver_available'] is not None, 'calc: no receiver free space'
for t in d['targets']:
    print(t['snapshot'], t['incremental_source'] or '-', t['progressive'], t['size_estimate'], t['kind'], sep='\t')
" "$W/calc-$b.json" > "$W/calc-$b.tsv"
  # Real `zfs send -nvP` sizes, three at a time (each run costs seconds under TCG).
  i=0
  while IFS=$'\t' read -r snap src prog est kind; do
    send_args "$src" "$prog" "$kind"
    qzb_send_size_args "${ARGS[@]}" "$snap" > "$W/real-$b.$i" &
    i=$((i + 1)); [ $((i % 3)) != 0 ] || wait
  done < "$W/calc-$b.tsv"
  wait
  n=0
  while IFS=$'\t' read -r snap src prog est kind; do
    send_args "$src" "$prog" "$kind"
    real=$(cat "$W/real-$b.$n")
    [ -n "$real" ] || qzb_fail "no real size for zfs send -nvP ${ARGS[*]} $snap"
    [ "$est" = "$real" ] || qzb_fail "$b: $snap: calc says $est, zfs send -n -v -P ${ARGS[*]} says $real"
    n=$((n + 1))
  done < "$W/calc-$b.tsv"
  total=$(/usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['total_size_estimate'], d['receiver_available'])" "$W/calc-$b.json")
  echo "  $b: $n estimates equal real zfs send -nvP sizes (total, receiver available: $total)"
done

echo "OK: check/import/snapshot/calc of the real driver agree with real ZFS"
