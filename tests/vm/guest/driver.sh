# shellcheck shell=bash
# Helpers for the cases that run the REAL qubes-zfs-backup driver and the REAL receiver agent
# against real ZFS in the VM, with only the Qubes parts faked (tests/fake-system: qubesd-query,
# xl, qrexec-client, qrexec-policy-exec). Source after lib.sh:
#   . "$(dirname "$0")/../guest/lib.sh"; . "$(dirname "$0")/../guest/driver.sh"
#
# Both pools live in this one VM: the driver (dom0 side) and the agent (backup qube side) both run
# the real `zfs`; the fake qrexec-client execs the agent with QREXEC_REMOTE_DOMAIN=dom0.

QZB_TARGET_DIR=${QZB_TARGET_DIR:-${QZB_REPO:-/work/main}/target/release}
export QZB_DRV_BIN=$QZB_TARGET_DIR/qubes-zfs-backup
export QZB_AGENT_BIN=$QZB_TARGET_DIR/qubes-zfs-backup-receiver
export QZB_FAKE_BIN=$QZB_TARGET_DIR/qzb-fake
export QZB_RECEIVER_QUBE=backups-disp

# qzb_drv_setup <name> [full|minimal]: a fresh driver environment in $QZB_WORK/drv/<name>:
#   bin/    qubesd-query, xl, qrexec-client, qrexec-policy-exec -> qzb-fake (NOT zfs: real zfs)
#   state/  QZB_FAKE_ROOT: dom0.json from the fixture (full) or with no qubes but dom0 (minimal),
#           plus the receiver qube backups-disp (Running) and the policy rule allowing the call
#   md/     --metadata-dir
# Exports QZB_DRV_DIR and QZB_DRV_STATE (the dom0.json to edit with fake-qubes.py).
qzb_drv_setup() {
  local name=$1 kind=${2:-full} b
  for b in "$QZB_DRV_BIN" "$QZB_AGENT_BIN" "$QZB_FAKE_BIN"; do
    [ -x "$b" ] || qzb_fail "$b is missing: build the workspace on the host first (cargo build --workspace --bins; tests/vm/ci.sh does)"
  done
  QZB_DRV_DIR=$QZB_WORK/drv/$name
  rm -rf "$QZB_DRV_DIR"
  mkdir -p "$QZB_DRV_DIR/state" "$QZB_DRV_DIR/md"
  "$QZB_FAKE_BIN" install-links "$QZB_DRV_DIR/bin" >/dev/null
  rm -f "$QZB_DRV_DIR/bin/zfs"
  for b in qubesd-query xl qrexec-client qrexec-policy-exec; do
    [ -L "$QZB_DRV_DIR/bin/$b" ] || qzb_fail "qzb-fake install-links made no $b link"
  done
  QZB_DRV_STATE=$QZB_DRV_DIR/state/dom0.json
  if [ "$kind" = minimal ]; then
    /usr/bin/python3 - "$QZB_FIXTURE_DIR/dom0.json" "$QZB_DRV_STATE" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
d["qubes"]["domains"] = {"dom0": {"class": "AdminVM", "state": "Running"}}
d["zfs"] = {"last_txg": 1, "datasets": {}}
json.dump(d, open(sys.argv[2], "w"), indent=2)
EOF
  else
    cp "$QZB_FIXTURE_DIR/dom0.json" "$QZB_DRV_STATE"
  fi
  qzb_fake_qubes receiver "$QZB_RECEIVER_QUBE"
  export QZB_DRV_DIR QZB_DRV_STATE
}

# qzb_fake_qubes <fake-qubes.py args>: edit the fake Admin API state (qube states, xl disks).
qzb_fake_qubes() { /usr/bin/python3 "$QZB_VM_DIR/guest/fake-qubes.py" "$QZB_DRV_STATE" "$@"; }

# qzb_drv_env: prints the environment (one NAME=value per line) the driver runs with.
qzb_drv_env() {
  echo "PATH=$QZB_DRV_DIR/bin:$PATH"
  echo "QZB_FAKE_ROOT=$QZB_DRV_DIR/state"
  echo "QZB_FAKE_AGENT=$QZB_AGENT_BIN"
  echo "QUBES_ZFS_BACKUP_RECEIVE_LOCK=$QZB_DRV_DIR/receive.lock"
  # Where the agent mounts its blob dataset (<root>/.qzb-meta): inside this case's work dir.
  echo "QUBES_ZFS_BACKUP_META_BASE=$QZB_DRV_DIR/agent-meta"
}

# qzb_drv_key_init: `key init` with a fixed passphrase and the cheapest Argon2 parameters, so
# every send of this environment is authenticated and `verify` reads back.
QZB_DRV_PASSPHRASE="correct horse battery staple"
qzb_drv_key_init() {
  printf '%s\n' "$QZB_DRV_PASSPHRASE" \
    | qzb_drv key init --passphrase-fd 0 --kdf-memory-mib 8 --kdf-passes 1 \
    || qzb_fail "key init failed"
}

# qzb_drv <args...>: runs the real driver (with --metadata-dir); output to stdout, its status is
# returned. Extra environment (fault injection) can be given as VAR=value before the call via
# `env`, e.g. QZB_DRV_EXTRA_ENV=(QZB_FAKE_QREXEC_CUT_TO_SERVICE=1000) qzb_drv send x.
qzb_drv() {
  local -a envv
  mapfile -t envv < <(qzb_drv_env)
  # The driver gives its children only PATH and LC_ALL=C: the fakes read the rest (state root,
  # agent, faults) from bin/fake.env beside them (tests/fake-system/README.md).
  printf '%s\n' "${envv[@]}" "${QZB_DRV_EXTRA_ENV[@]}" | grep -v '^PATH=' > "$QZB_DRV_DIR/bin/fake.env.tmp"
  mv "$QZB_DRV_DIR/bin/fake.env.tmp" "$QZB_DRV_DIR/bin/fake.env"
  env "${envv[@]}" "${QZB_DRV_EXTRA_ENV[@]}" "$QZB_DRV_BIN" --metadata-dir "$QZB_DRV_DIR/md" "$@"
}
QZB_DRV_EXTRA_ENV=()

# qzb_drv_ok <args...>: runs the driver, echoes the command and its output, fails the case on a
# non-zero status.
qzb_drv_ok() {
  local rc t0=$SECONDS
  echo "+ qubes-zfs-backup $*"
  set +e; qzb_drv "$@" 2>&1 | sed -u 's/^/    /'; rc=${PIPESTATUS[0]}; set -e
  echo "  ($1: $((SECONDS - t0))s)"
  [ "$rc" = 0 ] || qzb_fail "qubes-zfs-backup $* exited $rc"
}

# qzb_drv_rc <expected status> <args...>: like qzb_drv_ok but expects that status.
qzb_drv_rc() {
  local want=$1 rc t0=$SECONDS; shift
  echo "+ qubes-zfs-backup $* (expect exit $want)"
  set +e; qzb_drv "$@" 2>&1 | sed -u 's/^/    /'; rc=${PIPESTATUS[0]}; set -e
  echo "  ($1: $((SECONDS - t0))s)"
  [ "$rc" = "$want" ] || qzb_fail "qubes-zfs-backup $* exited $rc, expected $want"
}

# qzb_drv_json <file> <args...>: runs the driver with --json output into <file> (stderr shown),
# fails on a non-zero status.
qzb_drv_json() {
  local f=$1 rc t0=$SECONDS; shift
  echo "+ qubes-zfs-backup $* > $(basename "$f")"
  set +e; qzb_drv "$@" > "$f" 2> "$f.stderr"; rc=$?; set -e
  echo "  ($1: $((SECONDS - t0))s)"
  sed 's/^/    stderr: /' "$f.stderr"
  [ "$rc" = 0 ] || { head -c 2000 "$f"; qzb_fail "qubes-zfs-backup $* exited $rc"; }
}

# qzb_send_size_args <zfs send args...>: the size line of `zfs send -n -v -P <args>`.
qzb_send_size_args() { zfs send -n -v -P "$@" 2>/dev/null | awk '$1=="size"{print $2}' | tail -1; }

# qzb_hash_received <snapshot on the receiver>: sha256 of a received zvol snapshot (received
# volumes have volmode=none: a temporary clone with volmode=dev exposes the data) or the tree
# digest of a received filesystem snapshot (a temporary clone mounted under the altroot; the
# received dataset itself stays unmounted, canmount=noauto, and its mountpoint may be dom0's).
qzb_hash_received() {
  local snap=$1 pool=${1%%/*} clone h t
  clone="$pool/qzb-cmp-$$-$RANDOM"
  t=$(zfs get -H -o value type "$snap")
  [ "$t" = snapshot ] || qzb_fail "$snap is not a snapshot on the receiver"
  if [ "$(zfs get -H -o value type "${snap%@*}")" = volume ]; then
    zfs clone -o volmode=dev "$snap" "$clone"
    local dev
    # No device is a harness failure, not a data difference: say which.
    dev=$(qzb_zvol_dev "$clone") || { zfs destroy "$clone" 2>/dev/null; qzb_fail "no block device appeared for $clone"; }
    h=$(qzb_hash_dev "$dev")
  else
    zfs clone -o canmount=on -o mountpoint="/qzb-cmp/${clone##*/}" -o readonly=on "$snap" "$clone"
    h=$(qzb_tree_digest "$(qzb_fs_path "$clone")")
    zfs unmount "$clone" 2>/dev/null || true
  fi
  zfs destroy "$clone"
  echo "$h"
}

# qzb_hash_source <snapshot in dom0>: the same digest of a source snapshot.
qzb_hash_source() {
  local snap=$1
  if [ "$(zfs get -H -o value type "${snap%@*}")" = volume ]; then
    qzb_hash_zvol "$snap"
  else
    qzb_tree_digest "$(qzb_fs_path "$snap")"
  fi
}

# qzb_cmp_backup <source snapshot> <receiver root>: the received copy (<root>/<source>) has the
# same guid and the same bytes (zvol) or tree (filesystem) as the source. Prints one line.
qzb_cmp_backup() {
  local src=$1 dst="$2/$1" gs gd hs hd
  gs=$(zfs get -H -p -o value guid "$src")
  gd=$(zfs get -H -p -o value guid "$dst" 2>/dev/null) || qzb_fail "$dst is not on the receiver"
  [ "$gs" = "$gd" ] || qzb_fail "guid differs: $src=$gs $dst=$gd"
  hs=$(qzb_hash_source "$src"); hd=$(qzb_hash_received "$dst")
  [ "$hs" = "$hd" ] || qzb_fail "content differs: $src ($hs) vs $dst ($hd)"
  echo "same: $src = $dst (guid $gs, ${hs:0:16})"
}

# qzb_status_check <backup> <file> <receiver root>: status --json into <file>; every target
# marked done must be on the receiver with the source's guid (received_guid = the planned guid =
# the receiver's real guid). Prints "<done> <total>"; fails (message on stderr) otherwise.
# (awk over the pretty-printed JSON, not python: this runs after every fault-matrix row, in TCG.)
qzb_status_check() {
  local name=$1 f=$2 root=$3 snap guid rguid n=0 total have
  qzb_drv status --json "$name" > "$f" 2>/dev/null || { echo "status --json $name failed" >&2; return 1; }
  total=$(grep -c '^    "send_state": ' "$f" || true)
  while read -r snap guid rguid; do
    n=$((n + 1))
    have=$(zfs get -H -p -o value guid "$root/$snap" 2>/dev/null || echo none)
    if [ "$guid" != "$rguid" ] || [ "$have" != "$guid" ]; then
      echo "FAIL: $snap is marked done but the receiver has guid $have (planned $guid, received_guid $rguid)" >&2
      return 1
    fi
  done < <(awk -F': ' '
    /^    "snapshot": / {s=$2; gsub(/[",]/, "", s)}
    /^    "guid": / {g=$2; gsub(/[",]/, "", g)}
    /^    "received_guid": / {r=$2; gsub(/[",]/, "", r)}
    /^    "send_state": "done"/ {d=1}
    /^  }/ {if (d) print s, g, r; d=0; s=g=r=""}' "$f")
  echo "$n $total"
}
