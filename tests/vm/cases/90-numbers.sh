#!/bin/bash
# Real-ZFS numbers (issue 13): a benchmark, not a test. Skipped (exit 0 at once) unless
# QZB_VM_NUMBERS=1, so CI's default run of every case does not pay for it:
#   QZB_VM_NUMBERS=1 QZB_VM_TIMEOUT=3600 \
#     tests/vm/ci.sh 90-numbers.sh
# (build the release binaries first: cargo build --release --workspace --bins). With the
# fixture it takes 20-35 min of TCG on a loaded 2-core host: more than run.sh's default 1800 s.
#
# On one zvol of QZB_VM_NUMBERS_MIB (default 256) MiB of random data, volblocksize 16K, with
# the REAL driver and agent (key set: the tap builds the manifest, verify reads back):
#  1. `send` by the driver vs `zfs send -L -p | zfs receive -s -u -o volmode=none` of the same
#     snapshot, alternating, QZB_VM_NUMBERS_ROUNDS (default 2) rounds each (target: direct
#     time / driver time ≥ 0.95);
#  2. stream bytes and time of `zfs send -L -p` (the driver's zvol flags) vs `-L -p -c`, on
#     that zvol and on one of half random, half compressible data (lz4);
#  3. `verify` (read-back of the received snapshot, every block checked against the
#     manifest) vs `zfs send -L <received snapshot> | cat > /dev/null` on the backup pool (the
#     agent's read-back command), alternating (target ≥ 0.8);
#  4. manifest bytes on the medium per GiB of stream, and the peak RSS (VmHWM, sampled every
#     0.2 s) of the driver and of the agent (target < 64 MiB each).
# Prints a table and writes it to $QZB_VM_OUT/numbers.txt. Fails only if something does not
# work (a send, verify or comparison), never on a number.
set -euo pipefail
if [ "${QZB_VM_NUMBERS:-0}" != 1 ]; then
  echo "SKIP: the numbers case runs only with QZB_VM_NUMBERS=1"
  exit 0
fi
. "$(dirname "$0")/../guest/lib.sh"
. "$(dirname "$0")/../guest/driver.sh"
qzb_ensure_fixture
MIB=1048576
SIZE=${QZB_VM_NUMBERS_MIB:-256}
ROUNDS=${QZB_VM_NUMBERS_ROUNDS:-2}
P=$QZB_SRC_POOL
N=$P/num
BK=$QZB_BK_POOL/t/num
W=$QZB_WORK/case90
OUT=$QZB_VM_OUT/numbers.txt
rm -rf "$W"; mkdir -p "$W"
qzb_drv_setup numbers minimal
qzb_drv_key_init

# The driver and the agent through wrappers that record their pid and exec the real binary (the
# pid stays), for the RSS sampler below.
REAL_DRV=$QZB_DRV_BIN REAL_AGENT=$QZB_AGENT_BIN
PIDS=$W/pids
: > "$PIDS"
for w in drv:"$REAL_DRV" agent:"$REAL_AGENT"; do
  printf '#!/bin/sh\necho "$$ %s" >> %s\nexec %s "$@"\n' "${w%%:*}" "$PIDS" "${w#*:}" > "$W/${w%%:*}-wrap"
  chmod +x "$W/${w%%:*}-wrap"
done
QZB_DRV_BIN=$W/drv-wrap QZB_AGENT_BIN=$W/agent-wrap

cleanup() ( # a subshell: its set +e stays inside
  set +e
  touch "$W/sampler.stop"
  [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
  zfs destroy -r "$BK" 2>/dev/null
  zfs destroy -r "$N" 2>/dev/null
  true
)
trap cleanup EXIT
cleanup

# sampler: every 0.2 s, for every live pid in $PIDS, "<name> <VmHWM kB> <utime+stime ticks>"
# into $W/p.<pid> (the last sample of a process is within 0.2 s of its end; VmHWM is its peak).
# Builtins only (no fork per sample: TCG makes forks expensive).
sampler() {
  local pid name k v _ hwm fifo=$W/sleep.fifo sfd
  local -a f
  mkfifo "$fifo"; exec {sfd}<>"$fifo"
  while [ ! -e "$W/sampler.stop" ]; do
    while read -r pid name; do
      [ -r "/proc/$pid/status" ] || continue
      hwm=0
      while read -r k v _; do
        if [ "$k" = VmHWM: ]; then hwm=$v; break; fi
      done 2>/dev/null < "/proc/$pid/status" || continue
      # the command names have no spaces: utime and stime are fields 14 and 15
      read -r -a f 2>/dev/null < "/proc/$pid/stat" || continue
      echo "$name $hwm $(( f[13] + f[14] ))" > "$W/p.$pid"
    done < "$PIDS"
    read -r -t 0.2 -u "$sfd" _ || true
  done
}
rm -f "$W/sampler.stop"
sampler > /dev/null 2>&1 &   # nothing of it holds the case's output pipe
SAMPLER=$!
# own_cpu <first line of $PIDS> <name>: CPU seconds of the processes of that name started since.
own_cpu() {
  local pid name
  tail -n +"$1" "$PIDS" | while read -r pid name; do
    [ "$name" = "$2" ] && [ -f "$W/p.$pid" ] && cut -d' ' -f3 "$W/p.$pid"
  done | awk -v hz="$(getconf CLK_TCK)" '{s+=$1} END{printf "%.2f", s / hz}'
}
# timed <label> <command...>: runs it, appends "<real> <user+sys of it and its children>
# <driver CPU> <agent CPU>" to $W/t-<label>; output to $W/<label>.log.
TIMEFORMAT='TIME %R %U %S'
mkfifo "$W/wait.fifo"; exec {WAIT_FD}<>"$W/wait.fifo"
timed() {
  local label=$1 first rc t r u s
  shift
  first=$(( $(wc -l < "$PIDS") + 1 ))
  sync
  { time "$@" > "$W/$label.log" 2>&1; } 2> "$W/$label.time" && rc=0 || rc=$?
  [ "$rc" = 0 ] || { cat "$W/$label.log"; qzb_fail "$label: $* exited $rc"; }
  read -r _ r u s < <(grep '^TIME' "$W/$label.time")
  # the sampler's last look at the processes that just ended
  read -r -t 0.5 -u "$WAIT_FD" _ || true
  t=$(awk -v r="$r" -v u="$u" -v s="$s" 'BEGIN{printf "%.2f %.2f", r, u + s}')
  echo "$t $(own_cpu "$first" drv) $(own_cpu "$first" agent)" >> "$W/t-$label"
}
direct_send() { zfs send -L -p "$N/vol@n1" | zfs receive -s -u -o volmode=none "$BK/direct/$N/vol"; }
# (2.1 refuses to write to /dev/null directly: "zfs send [...] | cat > /dev/null", as it says;
# the agent reads it through a pipe too)
read_back() { zfs send -L "$RECV" | cat > /dev/null; }

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b - a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a / b}'; }
# median <column> <file>
median() { cut -d' ' -f"$1" "$2" | sort -g | awk '{v[NR]=$1} END{if (NR%2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2]+v[NR/2+1])/2}'; }

qzb_log "sources: $N/vol ($SIZE MiB random) and $N/mix (half random, half compressible)"
zfs create -o compression=lz4 "$N"
zfs create -s -V "${SIZE}M" -o volblocksize=16K "$N/vol"
qzb_write_random "$N/vol" 0 "$SIZE"
HALF=$(( SIZE / 4 ))   # mix: SIZE/2 MiB in all
zfs create -s -V "$(( 2 * HALF ))M" -o volblocksize=16K "$N/mix"
dev=$(qzb_zvol_dev "$N/mix")
{ head -c $(( HALF * MIB )) /dev/urandom
  # compressible: text and binaries of the guest's /usr, as a tar
  tar -c /usr/share /usr/lib 2>/dev/null | head -c $(( HALF * MIB )) || true
} | dd of="$dev" bs=1M iflag=fullblock conv=fsync status=none
zfs snapshot "$N/vol@n1"
zfs snapshot "$N/mix@n1"
sync

zfs create -p -o mountpoint=none "$BK/drv"
zfs create -p "$BK/direct/$N"
cat > "$W/numbers.yaml" <<EOF
name: numbers
scope:
  target-snapshot: "@n1"
  since: beginning
  progressive: no
  honour-origins: no
allowed-behaviours:
  snapshot-creation: no
  patching: no
receiver:
  qube: $QZB_RECEIVER_QUBE
  dataset: $BK/drv
include-groups: [data]
forgo-groups: []
void-groups: []
data:
  type: datasets
  members: [$N/vol]
EOF
qzb_drv_ok import "$W/numbers.yaml"
cp "$QZB_DRV_DIR/md/numbers.json" "$W/numbers.state"
STREAM=$(zfs send -L -p "$N/vol@n1" | wc -c)
qzb_log "stream: $STREAM bytes (zfs send -L -p)"

qzb_log "1. driver send vs zfs send | zfs receive, $ROUNDS rounds each, alternating"
echo "  (per run: wall s, CPU s of it and its children, driver CPU s, agent CPU s)"
: > "$W/t-direct"; : > "$W/t-send"
for r in $(seq 1 "$ROUNDS"); do
  zfs destroy -r "$BK/direct/$N/vol" 2>/dev/null || true
  timed direct direct_send
  zfs destroy -r "$BK/drv/$N/vol" 2>/dev/null || true
  cp "$W/numbers.state" "$QZB_DRV_DIR/md/numbers.json"
  timed send qzb_drv send numbers
  ! grep -q "without a manifest" "$W/send.log" || { cat "$W/send.log"; qzb_fail "the driver sent without a manifest"; }
  echo "  round $r: direct $(tail -1 "$W/t-direct"); driver $(tail -1 "$W/t-send")"
done
[ "$(qzb_prop guid "$BK/drv/$N/vol@n1")" = "$(qzb_prop guid "$N/vol@n1")" ] || qzb_fail "driver: wrong guid on the receiver"
qzb_cmp_backup "$N/vol@n1" "$BK/drv" | sed 's/^/  /'
zfs destroy -r "$BK/direct/$N/vol"
T_DIRECT=$(median 1 "$W/t-direct"); T_DRV=$(median 1 "$W/t-send")
SEND_RATIO=$(ratio "$T_DIRECT" "$T_DRV")

qzb_log "2. zfs send -L -p vs -L -p -c (bytes, time)"
: > "$W/c.txt"
for v in vol mix; do
  for flags in "-L -p" "-L -p -c"; do
    t0=$(now)
    # shellcheck disable=SC2086
    b=$(zfs send $flags "$N/$v@n1" | wc -c)
    t1=$(now)
    echo "$v|$flags|$b|$(secs "$t0" "$t1")" >> "$W/c.txt"
  done
done
cat "$W/c.txt"
# What hashing costs on this (emulated) CPU: b3sum on one thread over 32 MiB of the zvol's data
# in a tmpfs file (the driver and the agent hash every byte with blake3).
B3=-
if command -v b3sum > /dev/null; then
  head -c $(( 32 * MIB )) "$(qzb_zvol_dev "$N/vol")" > "$W/b3.bin"
  t0=$(now)
  b3sum --num-threads 1 "$W/b3.bin" > /dev/null
  t1=$(now)
  B3=$(awk -v t="$(secs "$t0" "$t1")" 'BEGIN{printf "%.0f", 32 / t}')
  rm -f "$W/b3.bin"
fi
echo "blake3 here (b3sum, one thread): $B3 MiB/s"

qzb_log "3. verify (read-back) vs zfs send -L of the received snapshot | cat > /dev/null, alternating"
RECV=$BK/drv/$N/vol@n1
: > "$W/t-read"; : > "$W/t-verify"
for r in $(seq 1 "$ROUNDS"); do
  timed read read_back
  timed verify qzb_drv verify numbers
  grep -q "^verified  $RECV" "$W/verify.log" || { cat "$W/verify.log"; qzb_fail "verify did not read $RECV back"; }
  echo "  round $r: zfs send | cat $(tail -1 "$W/t-read"); verify $(tail -1 "$W/t-verify")"
done
T_READ=$(median 1 "$W/t-read"); T_VERIFY=$(median 1 "$W/t-verify")
VERIFY_RATIO=$(ratio "$T_READ" "$T_VERIFY")

touch "$W/sampler.stop"; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=
hwm() { cat "$W"/p.* 2>/dev/null | awk -v n="$1" '$1==n && $2>m{m=$2} END{print m+0}'; }
HWM_DRV=$(hwm drv); HWM_AGENT=$(hwm agent)
# The agent's metadata filesystem (<root>/.qzb-meta) is mounted under the pool's altroot.
META=$(zfs get -H -o value mountpoint "$BK/drv/.qzb-meta")
MAN=$(find "$META" -path '*manifests*' \( -name '*.body' -o -name '*.head' \) -printf '%s\n' | awk '{s+=$1} END{print s+0}')
[ "$MAN" -gt 0 ] || qzb_fail "no manifest on the medium under $META"
MAN_PER_GIB=$(awk -v m="$MAN" -v s="$STREAM" 'BEGIN{printf "%.2f", m / s * 1024}')
mibs() { awk -v b="$STREAM" -v t="$1" 'BEGIN{printf "%.1f", b / 1048576 / t}'; }
pass() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN{ok = (op == ">=") ? v >= t : v < t; print ok ? "met" : "NOT met"}'; }

{
  echo "numbers (issue 13): $(zfs version | head -1), kernel $(uname -r), $(nproc) vCPUs (TCG), guest load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "binaries: $QZB_TARGET_DIR; zvol $N/vol: $SIZE MiB random, volblocksize 16K; stream $STREAM bytes (-L -p); $ROUNDS rounds, medians"
  echo
  printf '%-46s %12s %12s %8s  %s\n' "measure" "value" "reference" "ratio" "target"
  printf '%-46s %10s s %10s s %8s  %s\n' "driver send vs zfs send | zfs receive" "$T_DRV" "$T_DIRECT" "$SEND_RATIO" "≥ 0.95: $(pass "$SEND_RATIO" 0.95 '>=')"
  printf '%-46s %8s MiB/s %6s MiB/s\n' "  throughput" "$(mibs "$T_DRV")" "$(mibs "$T_DIRECT")"
  printf '%-46s %10s s %10s s %8s  %s\n' "verify (read-back) vs zfs send -L | cat" "$T_VERIFY" "$T_READ" "$VERIFY_RATIO" "≥ 0.80: $(pass "$VERIFY_RATIO" 0.80 '>=')"
  printf '%-46s %8s MiB/s %6s MiB/s\n' "  throughput" "$(mibs "$T_VERIFY")" "$(mibs "$T_READ")"
  printf '%-46s %8s MiB/GiB\n' "manifest on the medium per GiB of stream" "$MAN_PER_GIB"
  printf '%-46s %8s KiB %25s\n' "peak RSS, driver (VmHWM)" "$HWM_DRV" "< 65536 KiB: $(pass "$HWM_DRV" 65536 '<')"
  printf '%-46s %8s KiB %25s\n' "peak RSS, agent (VmHWM)" "$HWM_AGENT" "< 65536 KiB: $(pass "$HWM_AGENT" 65536 '<')"
  echo
  echo "zfs send flags: the driver's (-L -p) vs -c, stream bytes and seconds (to wc -c):"
  while IFS='|' read -r v flags b t; do
    printf '  %-4s %-10s %12s bytes %7s s\n' "$v" "$flags" "$b" "$t"
  done < "$W/c.txt"
  echo
  echo "blake3 on this CPU (b3sum, one thread, tmpfs file): $B3 MiB/s"
  echo "CPU s (median; user+sys of the run and its children; of it the driver's and the agent's own):"
  for l in direct send read verify; do
    printf '  %-7s wall %7s  CPU %7s  driver %6s  agent %6s\n' "$l" "$(median 1 "$W/t-$l")" "$(median 2 "$W/t-$l")" "$(median 3 "$W/t-$l")" "$(median 4 "$W/t-$l")"
  done
  echo "rounds (wall CPU driver agent):"
  for l in direct send read verify; do echo "  $l: $(paste -sd'|' "$W/t-$l" | sed 's/|/; /g')"; done
} | tee "$OUT"
