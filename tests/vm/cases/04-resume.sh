#!/bin/bash
# qzb-vm: full-only (pins real ZFS behaviour; the driver cases cover this data path)
# zfs receive -s of an interrupted stream leaves receive_resume_token; zfs send -t <token>
# resumes it and the result matches the source byte for byte. Interruptions: sender SIGKILLed
# mid-stream (zvol full, zvol incremental, filesystem incremental), stream truncated by the
# transport (head -c), and a resume that is itself killed and resumed again.
set -euo pipefail
. "$(dirname "$0")/../guest/lib.sh"
qzb_ensure_fixture
C=$QZB_CONTAINER
DST=$(qzb_case_dest resume)
MIB=1048576

expect_partial() { # expect_partial <dest> <output of the interrupted receive>
  local tok
  echo "$2"
  tok=$(qzb_token "$1")
  [ "$tok" != "-" ] && [ -n "$tok" ] || qzb_fail "no receive_resume_token on $1 after an interrupted receive"
  echo "token on $1: ${tok:0:40}... (${#tok} chars)"
  zfs send -n -v -P -t "$tok" 2>&1 | sed 's/^/  send -nvP -t: /'
}

# 1. full zvol stream, sender SIGKILLed after 6 MiB
src="$C/fedora-41/root@$QZB_CLEAN_SNAP"
sz=$(qzb_send_size "$src"); echo "full stream estimate: $sz bytes"
[ "$sz" -gt $((12 * MIB)) ] || qzb_fail "stream too small to interrupt"
out=$(qzb_send_killed "$src" "$DST/root" $((6 * MIB)))
echo "$out" | grep -q 'pipeline status: 137 ' || qzb_fail "the sender was not SIGKILLed: $out"
expect_partial "$DST/root" "$out"
# Resume, and kill the resume too: the token moves forward.
tok1=$(qzb_token "$DST/root")
out=$(qzb_send_killed "-t $tok1" "$DST/root" $((3 * MIB)))
expect_partial "$DST/root" "$out"
tok2=$(qzb_token "$DST/root")
[ "$tok1" != "$tok2" ] || qzb_fail "token did not change after more data was received"
zfs send -t "$tok2" | zfs receive -s "$DST/root"
[ "$(qzb_token "$DST/root")" = "-" ] || qzb_fail "token still set after a complete resume"
qzb_cmp_zvols "$src" "$DST/root@$QZB_CLEAN_SNAP"

# 2. incremental zvol stream, truncated by the transport (head -c), then resumed
P="$C/work/private"
zfs send "$P@$QZB_REV1" | zfs receive -s "$DST/private"
isz=$(qzb_send_size "-i @$QZB_REV1 $P@$QZB_REV2"); echo "incremental estimate: $isz bytes"
set +e
out=$(zfs send -i "@$QZB_REV1" "$P@$QZB_REV2" | head -c $((isz / 2)) | zfs receive -s "$DST/private" 2>&1)
set -e
expect_partial "$DST/private" "$out"
zfs list -H -t all -o name -r "$DST/private" | sed 's/^/  dataset: /'
zfs send -t "$(qzb_token "$DST/private")" | zfs receive -s "$DST/private"
qzb_cmp_zvols "$P@$QZB_REV2" "$DST/private@$QZB_REV2"
qzb_cmp_zvols "$P@$QZB_REV1" "$DST/private@$QZB_REV1"

# 3. incremental filesystem stream, sender SIGKILLed
D=$QZB_SRC_POOL/dom0
zfs snapshot "$D@qzb-t04-1"
head -c $((6 * MIB)) /dev/urandom > "$QZB_DOM0_PATH/home/user/t04-big.bin"
zfs snapshot "$D@qzb-t04-2"
zfs send "$D@qzb-t04-1" | zfs receive -s -u "$DST/dom0"
out=$(qzb_send_killed "-i @qzb-t04-1 $D@qzb-t04-2" "$DST/dom0" $((2 * MIB)))
echo "$out" | grep -q 'pipeline status: 137 ' || qzb_fail "the sender was not SIGKILLed: $out"
expect_partial "$DST/dom0" "$out"
zfs send -t "$(qzb_token "$DST/dom0")" | zfs receive -s -u "$DST/dom0"
qzb_cmp_fs "$D@qzb-t04-2" "$DST/dom0@qzb-t04-2"

rm -f "$QZB_DOM0_PATH/home/user/t04-big.bin"
zfs destroy "$D@qzb-t04-1"; zfs destroy "$D@qzb-t04-2"
zfs destroy -r "$DST"
echo "OK: interrupted receives leave a token; send -t resumes to identical content"
