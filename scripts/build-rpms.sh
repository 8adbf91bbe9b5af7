#!/usr/bin/env bash
# Builds the two RPM packages from the cargo RELEASE binaries, checks them, and lints them.
#
#   scripts/build-rpms.sh            -> target/rpm/qubes-zfs-backup-<v>-1.x86_64.rpm (dom0)
#                                       target/rpm/qubes-zfs-backup-receiver-<v>-1.x86_64.rpm
#
# Steps: cargo build --release of the two binaries; stage them with the qrexec files and docs
# into an rpmbuild SOURCES dir; rpmbuild -bb both specs (no cargo inside rpmbuild; the version
# comes from [workspace.package] in Cargo.toml); check contents, modes, config flags, digests;
# rpmlint with rpm/rpmlintrc (accepted warnings are documented in rpm/README.md).
# Exits non-zero on any build failure, failed check or rpmlint error.
#
# Needs rpmbuild and rpmlint. When they are missing and we may install packages (root, e.g. CI
# with CI=true on a fresh Debian machine), they are installed with apt-get.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SECONDS=0

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-rpms: error: %s\n' "$*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------
missing=()
command -v rpmbuild >/dev/null 2>&1 || missing+=(rpm)
command -v rpmlint >/dev/null 2>&1 || missing+=(rpmlint)
if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends rpm rpmlint >/dev/null
    else
        die "rpmbuild/rpmlint not found; install them (Debian: apt-get install rpm rpmlint)"
    fi
fi

# --- version -------------------------------------------------------------------------------
VERSION="$(awk '
    /^\[/ { section = $0; next }
    section == "[workspace.package]" && $1 == "version" {
        gsub(/["[:space:]]/, "", $3); print $3; exit
    }' Cargo.toml)"
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    die "could not read a plain x.y.z version from [workspace.package] in Cargo.toml (got '$VERSION')"
# rpm versions must not contain '-'; the regex above guarantees that.

# --- release binaries ----------------------------------------------------------------------
log "cargo build --release (qubes-zfs-backup $VERSION)"
# In CI the committed Cargo.lock must be used as is (reproducible release binaries).
locked=()
[[ "${CI:-}" == true ]] && locked=(--locked)
cargo build --release "${locked[@]}" -p qubes-zfs-backup -p qubes-zfs-backup-receiver
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
DRIVER="$TARGET_DIR/release/qubes-zfs-backup"
RECEIVER="$TARGET_DIR/release/qubes-zfs-backup-receiver"
[[ -x "$DRIVER" && -x "$RECEIVER" ]] || die "release binaries not found under $TARGET_DIR/release"

# --- stage ---------------------------------------------------------------------------------
OUT="$ROOT/target/rpm"
TOP="$OUT/rpmbuild"
rm -rf "$TOP" "$OUT"/*.rpm
mkdir -p "$TOP"/{BUILD,BUILDROOT,RPMS,SOURCES,SPECS,SRPMS}
SRC="$TOP/SOURCES"
install -m 0755 "$DRIVER" "$SRC/qubes-zfs-backup"
install -m 0755 "$RECEIVER" "$SRC/qubes-zfs-backup-receiver"
install -m 0644 qrexec-policy/policy.d/50-qubes-zfs-backup.policy "$SRC/"
install -m 0755 qrexec-policy/qubes-rpc/zfsbackup.Receive "$SRC/zfsbackup.Receive"
install -m 0644 qrexec-policy/rpc-config/zfsbackup.Receive "$SRC/zfsbackup.Receive.rpc-config"
install -m 0644 qrexec-policy/README.md "$SRC/README.qrexec-policy.md"
install -m 0644 docs/INSTALL.md "$SRC/INSTALL.md"
install -m 0644 docs/CONFIG.md "$SRC/CONFIG.md"

# The man page and shell completions, generated from the driver's clap definitions by
# `cargo xtask assets` (the generators are not linked into the dom0 binary):
#     qubes-zfs-backup.1  qubes-zfs-backup.bash  _qubes-zfs-backup  qubes-zfs-backup.fish
# Each one present is staged and packaged (rpmbuild --with NAME). They are required unless
# QZB_REQUIRE_ASSETS=0.
ASSETS="$(mktemp -d)"
trap 'rm -rf "$ASSETS"' EXIT
cargo run --quiet "${locked[@]}" -p xtask -- assets --out-dir "$ASSETS" >/dev/null || die "cargo xtask assets failed"
dom0_with=()
for pair in manpage:qubes-zfs-backup.1 bash_completion:qubes-zfs-backup.bash \
    zsh_completion:_qubes-zfs-backup fish_completion:qubes-zfs-backup.fish; do
    f="${pair#*:}"
    if [[ -s "$ASSETS/$f" ]]; then
        install -m 0644 "$ASSETS/$f" "$SRC/$f"
        dom0_with+=(--with "${pair%%:*}")
    fi
done
if ((${#dom0_with[@]} == 0)); then
    log "no man page or completions were generated; packaging without them"
    [[ "${QZB_REQUIRE_ASSETS:-1}" == 1 ]] && die "no man page/completions were generated (set QZB_REQUIRE_ASSETS=0 to package without them)"
fi

# --- rpmbuild ------------------------------------------------------------------------------
for spec in qubes-zfs-backup qubes-zfs-backup-receiver; do
    cp "rpm/$spec.spec" "$TOP/SPECS/"
    with=()
    [[ "$spec" == qubes-zfs-backup ]] && with=("${dom0_with[@]}")
    log "rpmbuild -bb $spec.spec ${with[*]}"
    rpmbuild -bb --quiet "${with[@]}" \
        --define "_topdir $TOP" \
        --define "pkg_version $VERSION" \
        --define "_build_id_links none" \
        "$TOP/SPECS/$spec.spec"
done
DOM0_RPM="$(find "$TOP/RPMS" -name "qubes-zfs-backup-$VERSION-*.rpm")"
RECV_RPM="$(find "$TOP/RPMS" -name "qubes-zfs-backup-receiver-$VERSION-*.rpm")"
[[ -f "$DOM0_RPM" && -f "$RECV_RPM" ]] || die "rpmbuild did not produce both packages"
cp "$DOM0_RPM" "$RECV_RPM" "$OUT/"
DOM0_RPM="$OUT/$(basename "$DOM0_RPM")"
RECV_RPM="$OUT/$(basename "$RECV_RPM")"

# --- checks --------------------------------------------------------------------------------
failures=0
check() { # description, expected, actual
    if [[ "$2" == "$3" ]]; then
        printf '  ok   %s\n' "$1"
    else
        printf '  FAIL %s\n       expected: %s\n       actual:   %s\n' "$1" "$2" "$3"
        failures=$((failures + 1))
    fi
}
# One line per file: mode owner group (flags) path (flags: c=config, n=noreplace, d=doc)
file_line() { # rpm, path
    rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} (%{FILEFLAGS:fflags}) %{FILENAMES}\n]' "$1" |
        awk -v p="$2" '$NF == p'
}
digest_of() { # rpm, path
    rpm -qp --qf '[%{FILEDIGESTS} %{FILENAMES}\n]' "$1" | awk -v p="$2" '$2 == p { print $1 }'
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

for r in "$DOM0_RPM" "$RECV_RPM"; do
    log "contents of $(basename "$r")"
    rpm -qlvp "$r" >&2
done
log "checking packages"
check "file digests are sha256" "8 8" \
    "$(rpm -qp --qf '%{FILEDIGESTALGO}' "$DOM0_RPM") $(rpm -qp --qf '%{FILEDIGESTALGO}' "$RECV_RPM")"
check "dom0 package version" "$VERSION" "$(rpm -qp --qf '%{VERSION}' "$DOM0_RPM")"
check "receiver package version" "$VERSION" "$(rpm -qp --qf '%{VERSION}' "$RECV_RPM")"

check "driver binary: mode, owner" "-rwxr-xr-x root root () /usr/bin/qubes-zfs-backup" \
    "$(file_line "$DOM0_RPM" /usr/bin/qubes-zfs-backup)"
check "driver binary is the cargo release build (sha256)" "$(sha "$DRIVER")" \
    "$(digest_of "$DOM0_RPM" /usr/bin/qubes-zfs-backup)"
check "policy: %config(noreplace) 0664 root:qubes" \
    "-rw-rw-r-- root qubes (cn) /etc/qubes/policy.d/50-qubes-zfs-backup.policy" \
    "$(file_line "$DOM0_RPM" /etc/qubes/policy.d/50-qubes-zfs-backup.policy)"
check "policy content is qrexec-policy/policy.d/50-qubes-zfs-backup.policy" \
    "$(sha qrexec-policy/policy.d/50-qubes-zfs-backup.policy)" \
    "$(digest_of "$DOM0_RPM" /etc/qubes/policy.d/50-qubes-zfs-backup.policy)"
check "metadata dir 0700 root:root" "drwx------ root root () /var/lib/qubes-zfs-backup" \
    "$(file_line "$DOM0_RPM" /var/lib/qubes-zfs-backup)"

AGENT=/usr/libexec/qubes-zfs-backup/qubes-zfs-backup-receiver
check "receiver binary: mode, owner" "-rwxr-xr-x root root () $AGENT" "$(file_line "$RECV_RPM" "$AGENT")"
check "receiver binary is the cargo release build (sha256)" "$(sha "$RECEIVER")" \
    "$(digest_of "$RECV_RPM" "$AGENT")"
check "service file: executable, not config" \
    "-rwxr-xr-x root root () /etc/qubes-rpc/zfsbackup.Receive" \
    "$(file_line "$RECV_RPM" /etc/qubes-rpc/zfsbackup.Receive)"
check "rpc-config: %config(noreplace) 0644" \
    "-rw-r--r-- root root (cn) /etc/qubes/rpc-config/zfsbackup.Receive" \
    "$(file_line "$RECV_RPM" /etc/qubes/rpc-config/zfsbackup.Receive)"

# Declared dependencies (the automatic ones, libc etc., are checked below).
declared() { rpm -qpR "$1" | sed 's/ *$//' | grep -Ev '^(rpmlib\(|config\(|/bin/sh$|rtld\(|ld-linux|libc\.so|libgcc_s\.so|libm\.so)' | sort | paste -sd, -; }
check "dom0 Requires" "qubes-core-admin-client,qubes-core-qrexec-dom0 >= 4.2,zfs" "$(declared "$DOM0_RPM")"
check "receiver Requires" "qubes-core-agent,zfs" "$(declared "$RECV_RPM")"
# The binaries link against the build host's glibc. R4.2 dom0 is Fedora 37 (glibc 2.36): a
# binary needing newer symbols would not install there.
GLIBC_MAX=2.36
for r in "$DOM0_RPM" "$RECV_RPM"; do
    need="$(rpm -qpR "$r" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)"
    newest="$(printf '%s\n%s\n' "$need" "$GLIBC_MAX" | sort -V | tail -1)"
    check "$(basename "$r") needs glibc <= $GLIBC_MAX (needs $need)" "$GLIBC_MAX" "$newest"
done

((failures == 0)) || die "$failures package check(s) failed"

# --- rpmlint -------------------------------------------------------------------------------
log "rpmlint (accepted warnings: rpm/rpmlintrc, reasons in rpm/README.md)"
lint_status=0
rpmlint -r rpm/rpmlintrc "$DOM0_RPM" "$RECV_RPM" || lint_status=$?
# rpmlint 2.x: 0 = no errors (warnings allowed), 64 = errors, 66 = badness threshold exceeded.
((lint_status == 0)) || die "rpmlint reported errors (exit $lint_status)"

log "done in ${SECONDS}s:"
ls -l "$DOM0_RPM" "$RECV_RPM" >&2
