#!/usr/bin/env bash
# tests/vm/setup.sh: install everything the real-OpenZFS VM harness needs, idempotently.
#
#  - apt sources for Debian contrib (bookworm, bookworm-updates, bookworm-backports)
#  - qemu-system-x86, busybox-static, a Debian kernel (linux-image-amd64, not booted on the host)
#  - zfsutils-linux of the chosen series and a zfs kernel module built for that kernel by zfs-dkms
#  - virtme-ng in a venv
#
# Built modules are cached outside the repo, keyed by kernel version + ZFS package version,
# so a later run on the same machine skips the DKMS build (and the compiler toolchain).
#
# Environment:
#   QZB_ZFS_SERIES   2.1 (default, Debian bookworm) or 2.3 (bookworm-backports)
#   QZB_VM_CACHE     cache dir (default /var/cache/qzb-vm)
#
# On success it writes $QZB_VM_CACHE/current.env (KVER, ZFS_VERSION, ZFS_SERIES, VNG, KERNEL)
# which tests/vm/run.sh reads.
set -euo pipefail

SERIES="${QZB_ZFS_SERIES:-2.1}"
CACHE="${QZB_VM_CACHE:-/var/cache/qzb-vm}"
VNG_VERSION="1.42"
SOURCES_FILE=/etc/apt/sources.list.d/qzb-vm-contrib.sources

T0=$(date +%s)
STEP_T=$T0
log() { printf '[setup %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
step_done() { local now; now=$(date +%s); log "  done: $1 ($(( now - STEP_T ))s)"; STEP_T=$now; }
die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }

case "$SERIES" in
  2.1) ZFS_RELEASE=bookworm ;;
  2.3) ZFS_RELEASE=bookworm-backports ;;
  *) die "QZB_ZFS_SERIES must be 2.1 or 2.3 (got '$SERIES')" ;;
esac

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, /lib/modules)"
command -v apt-get >/dev/null || die "needs a Debian bookworm host (apt-get not found)"

export DEBIAN_FRONTEND=noninteractive
export INITRD=No   # kernel postinst hooks: skip initramfs generation
APT=(apt-get -y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

mkdir -p "$CACHE"
log "ZFS series $SERIES (from $ZFS_RELEASE), cache $CACHE"

# ---------------------------------------------------------------- 1. apt sources + update
# Mirror the host/keyring used by the existing Debian sources.
mirror=""
signed_by=/usr/share/keyrings/debian-archive-keyring.gpg
for f in /etc/apt/sources.list.d/*.sources; do
  [ "$f" = "$SOURCES_FILE" ] && continue
  [ -f "$f" ] || continue
  if grep -qE '^Suites:.*\bbookworm\b' "$f"; then
    mirror=$(awk '/^URIs:/{print $2; exit}' "$f")
    sb=$(awk '/^Signed-By:/{print $2; exit}' "$f"); [ -n "$sb" ] && signed_by=$sb
    break
  fi
done
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1=="deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}
want_sources="# Added by qubes-zfs-backup tests/vm/setup.sh: Debian contrib (zfs-dkms, zfsutils-linux)
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates bookworm-backports
Components: contrib
Signed-By: $signed_by"
stamp_update="$CACHE/apt-updated.stamp"
if [ ! -f "$SOURCES_FILE" ] || [ "$(cat "$SOURCES_FILE")" != "$want_sources" ]; then
  printf '%s\n' "$want_sources" > "$SOURCES_FILE"
  rm -f "$stamp_update"
  log "wrote $SOURCES_FILE (mirror $mirror)"
fi
# apt-get update once (again if the lists are older than a day or the candidate is unknown).
if [ ! -f "$stamp_update" ] || [ -n "$(find "$stamp_update" -mmin +1440)" ] \
   || ! apt-cache madison zfsutils-linux 2>/dev/null | grep -q "$ZFS_RELEASE/contrib"; then
  log "apt-get update"
  "${APT[@]}" update >/dev/null || die "apt-get update failed"
  touch "$stamp_update"
fi
step_done "apt sources"

# ---------------------------------------------------------------- 2. base packages
# initramfs-tools first, so update_initramfs=no is in place before any kernel is installed.
base_pkgs=(qemu-system-x86 busybox-static python3-venv kmod udev initramfs-tools b3sum)
missing=()
for p in "${base_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  "${APT[@]}" install --no-install-recommends "${missing[@]}" >"$CACHE/apt-base.log" 2>&1 \
    || { tail -30 "$CACHE/apt-base.log"; die "apt-get install ${missing[*]} failed"; }
fi
conf=/etc/initramfs-tools/update-initramfs.conf
mkdir -p "$(dirname "$conf")"
if ! grep -qx 'update_initramfs=no' "$conf" 2>/dev/null; then
  if grep -q '^update_initramfs=' "$conf" 2>/dev/null; then
    sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$conf"
  else
    echo 'update_initramfs=no' >> "$conf"
  fi
fi
# Stop package scripts from starting services (zfs-zed, zfs-mount, ...) on the host.
if [ ! -x /usr/sbin/policy-rc.d ] || ! grep -q 'exit 101' /usr/sbin/policy-rc.d; then
  printf '#!/bin/sh\n# qubes-zfs-backup tests/vm/setup.sh: never start services from package scripts\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
fi
step_done "base packages"

# ---------------------------------------------------------------- 3. guest kernel
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 to a versioned kernel package"
KVER=${kpkg#linux-image-}
if ! dpkg-query -W -f='${Status}' "$kpkg" 2>/dev/null | grep -q 'install ok installed'; then
  log "installing $kpkg (guest kernel; not booted on the host)"
  "${APT[@]}" install --no-install-recommends linux-image-amd64 "$kpkg" >"$CACHE/apt-kernel.log" 2>&1 \
    || { tail -30 "$CACHE/apt-kernel.log"; die "kernel install failed"; }
fi
KERNEL=/boot/vmlinuz-$KVER
[ -r "$KERNEL" ] || die "$KERNEL missing after installing $kpkg"
[ -f "/lib/modules/$KVER/modules.dep" ] || depmod -a "$KVER"
log "guest kernel $KVER"
step_done "kernel"

# ---------------------------------------------------------------- 4. ZFS userspace + module
ZFS_VERSION=$(apt-cache madison zfsutils-linux | awk -v r="$ZFS_RELEASE/contrib" '$0 ~ r {print $3; exit}')
[ -n "$ZFS_VERSION" ] || die "no zfsutils-linux in $ZFS_RELEASE/contrib (apt sources?)"
KEY="${KVER}_zfs-${ZFS_VERSION}"
MODCACHE="$CACHE/modules/$KEY"
MODDIR="/lib/modules/$KVER/updates/dkms"
log "ZFS package version $ZFS_VERSION; module cache key $KEY"

installed_ver() { { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null || true; } | awk '/install ok installed/{print $4}'; }
# Userspace and its same-version libraries (apt cannot downgrade these on its own when switching series).
zfs_user_pkgs=("zfsutils-linux=$ZFS_VERSION" "libnvpair3linux=$ZFS_VERSION" "libuutil3linux=$ZFS_VERSION")
if [ "$SERIES" = 2.1 ]; then
  zfs_user_pkgs+=("libzfs4linux=$ZFS_VERSION" "libzpool5linux=$ZFS_VERSION")
else
  zfs_user_pkgs+=("libzfs6linux=$ZFS_VERSION" "libzpool6linux=$ZFS_VERSION")
fi

stamp_mod="$CACHE/installed-module.key"
if [ -f "$MODCACHE/complete" ]; then
  log "module cache hit: $MODCACHE"
  # A zfs-dkms of another version would rebuild/overwrite modules: remove it.
  dv=$(installed_ver zfs-dkms)
  if [ -n "$dv" ] && [ "$dv" != "$ZFS_VERSION" ]; then
    log "removing zfs-dkms $dv (other series)"
    "${APT[@]}" purge zfs-dkms >"$CACHE/apt-zfs.log" 2>&1 || { tail -30 "$CACHE/apt-zfs.log"; die "purge zfs-dkms failed"; }
  fi
  if [ "$(installed_ver zfsutils-linux)" != "$ZFS_VERSION" ]; then
    log "installing zfsutils-linux $ZFS_VERSION"
    "${APT[@]}" install --no-install-recommends --allow-downgrades "${zfs_user_pkgs[@]}" >"$CACHE/apt-zfs.log" 2>&1 \
      || { tail -30 "$CACHE/apt-zfs.log"; die "zfsutils-linux install failed"; }
  fi
  if [ "$(cat "$stamp_mod" 2>/dev/null)" != "$KEY" ] || [ ! -e "$MODDIR/zfs.ko" ]; then
    if [ "$(installed_ver zfs-dkms)" != "$ZFS_VERSION" ]; then
      rm -rf "$MODDIR"; mkdir -p "$MODDIR"
      cp "$MODCACHE"/*.ko* "$MODDIR"/
      depmod -a "$KVER"
    fi
    echo "$KEY" > "$stamp_mod"
  fi
else
  log "module cache miss: building with zfs-dkms (takes minutes)"
  dv=$(installed_ver zfs-dkms)
  # Clear modules copied from the cache for another version (not owned by dkms).
  if [ -z "$dv" ]; then rm -rf "$MODDIR"; fi
  log "installing linux-headers-$KVER, zfs-dkms $ZFS_VERSION, zfsutils-linux $ZFS_VERSION"
  tb=$(date +%s)
  if ! "${APT[@]}" install --no-install-recommends --allow-downgrades \
       "linux-headers-$KVER" "zfs-dkms=$ZFS_VERSION" "${zfs_user_pkgs[@]}" >"$CACHE/apt-zfs.log" 2>&1; then
    tail -40 "$CACHE/apt-zfs.log"
    for l in /var/lib/dkms/zfs/*/build/make.log; do [ -f "$l" ] && { echo "== $l"; tail -30 "$l"; }; done
    die "zfs-dkms install/build failed (log: $CACHE/apt-zfs.log)"
  fi
  log "  zfs-dkms install+build took $(( $(date +%s) - tb ))s"
  # dkms may skip a kernel silently: make sure the module exists for KVER.
  if [ ! -e "$MODDIR/zfs.ko" ] && ! ls "$MODDIR"/zfs.ko* >/dev/null 2>&1; then
    upver=${ZFS_VERSION%%-*}
    log "module not present for $KVER; running dkms install zfs/$upver -k $KVER"
    dkms install "zfs/$upver" -k "$KVER" >>"$CACHE/apt-zfs.log" 2>&1 || { tail -40 "$CACHE/apt-zfs.log"; die "dkms build failed"; }
  fi
  ls "$MODDIR"/zfs.ko* >/dev/null 2>&1 || die "no zfs module in $MODDIR after the DKMS build"
  rm -rf "$MODCACHE.tmp"; mkdir -p "$MODCACHE.tmp"
  cp "$MODDIR"/*.ko* "$MODCACHE.tmp"/
  touch "$MODCACHE.tmp/complete"
  rm -rf "$MODCACHE"; mv "$MODCACHE.tmp" "$MODCACHE"
  echo "$KEY" > "$stamp_mod"
  log "cached modules: $(du -sh "$MODCACHE" | cut -f1) in $MODCACHE"
fi
modver=$(modinfo -k "$KVER" -F version zfs 2>/dev/null || true)
[ -n "$modver" ] || die "modinfo finds no zfs module for $KVER"
log "zfs module for $KVER: version $modver; userspace $(installed_ver zfsutils-linux)"
step_done "zfs"

# ---------------------------------------------------------------- 5. virtme-ng venv
VENV="$CACHE/venv"
VNG="$VENV/bin/vng"
if ! "$VNG" --version 2>/dev/null | grep -q "$VNG_VERSION"; then
  log "creating virtme-ng $VNG_VERSION venv at $VENV"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV" || die "python3 -m venv failed"
  "$VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION" >"$CACHE/pip.log" 2>&1 \
    || { tail -30 "$CACHE/pip.log"; die "pip install virtme-ng failed"; }
fi
log "vng: $("$VNG" --version 2>&1 | head -1)"
step_done "virtme-ng"

cat > "$CACHE/current.env.tmp" <<EOF
KVER=$KVER
KERNEL=$KERNEL
ZFS_SERIES=$SERIES
ZFS_VERSION=$ZFS_VERSION
ZFS_MODULE_VERSION=$modver
VNG=$VNG
EOF
mv "$CACHE/current.env.tmp" "$CACHE/current.env"
log "setup complete in $(( $(date +%s) - T0 ))s: kernel $KVER, ZFS $ZFS_VERSION (series $SERIES)"
