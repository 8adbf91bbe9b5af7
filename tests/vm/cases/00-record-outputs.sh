#!/bin/bash
# qzb-vm: full-only (pins real ZFS behaviour; the driver cases cover this data path)
# Records real ZFS outputs that the project's parsers must handle, into
# $QZB_VM_OUT/recorded/<zfs version>/ (run.sh with QZB_VM_RECORD=1 copies them to
# tests/vm/recorded/<zfs version>/). For every command: <name>.stdout, <name>.stderr, <name>.rc,
# and a line in INDEX.tsv (name, exit status, command). Runs first, on the fresh fixture.
# qzb_send_killed (guest/lib.sh) runs `zfs send ARGS | head -c N then SIGKILL the sender |
# zfs receive -s DEST 2>&1`, so its .stdout holds zfs receive's messages and the pipeline status.
set -euo pipefail
. "$(dirname "$0")/../guest/lib.sh"
qzb_ensure_fixture
C=$QZB_CONTAINER
MIB=1048576
R=$(qzb_record_dir)
rm -f "$R"/*
printf 'name\trc\tcommand\n' > "$R/INDEX.tsv"

# rec <name> <shell command>: runs it with bash -c, keeps stdout, stderr and exit status.
rec() {
  local name=$1 cmd=$2 rc
  set +e; bash -c "$cmd" >"$R/$name.stdout" 2>"$R/$name.stderr"; rc=$?; set -e
  echo "$rc" > "$R/$name.rc"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$cmd" >> "$R/INDEX.tsv"
  echo "--- $name (exit $rc): $cmd"
  sed 's/^/  out| /' "$R/$name.stdout" | head -20
  sed 's/^/  err| /' "$R/$name.stderr" | head -20
}
must_fail() { [ "$(cat "$R/$1.rc")" != 0 ] || qzb_fail "$1 was expected to fail"; }
must_pass() { [ "$(cat "$R/$1.rc")" = 0 ] || qzb_fail "$1 was expected to succeed"; }

DST=$(qzb_case_dest record)
P="$C/work/private"
T="$C/fedora-41/root@$QZB_CLEAN_SNAP"
export -f qzb_send_killed

rec zfs-version "zfs version"; must_pass zfs-version
rec zfs-list-source "zfs list -H -p -t all -o name,type,origin,createtxg,guid -r $QZB_SRC_POOL"
must_pass zfs-list-source
rec zfs-list-source-s-createtxg "zfs list -H -p -t all -s createtxg -o name,type,origin,createtxg,guid,used,referenced,volsize -r $QZB_SRC_POOL"
zfs snapshot "$P@qzb-rec"
zfs snapshot "$C/work/root@qzb-rec"
zfs snapshot "$QZB_SRC_POOL/dom0@qzb-rec1"

# zfs send -n -v -P
rec send-nvP-full-zvol "zfs send -n -v -P '$T'"; must_pass send-nvP-full-zvol
rec send-nvP-full-fs "zfs send -n -v -P '$QZB_SRC_POOL/dom0@qzb-rec1'"
rec send-nvP-full-clone "zfs send -n -v -P '$C/work/root@qzb-rec'"
rec send-nvP-i "zfs send -n -v -P -i '@$QZB_REV1' '$P@$QZB_REV2'"; must_pass send-nvP-i
rec send-nvP-i-fullname "zfs send -n -v -P -i '$P@$QZB_REV1' '$P@$QZB_REV2'"
rec send-nvP-I "zfs send -n -v -P -I '@$QZB_REV1' '$P@qzb-rec'"; must_pass send-nvP-I
rec send-nvP-clone-i "zfs send -n -v -P -i '$T' '$C/work/root@qzb-rec'"; must_pass send-nvP-clone-i
rec send-nP-full-zvol "zfs send -n -P '$T'"
rec send-nvP-missing-snapshot "zfs send -n -v -P '$P@does-not-exist'"; must_fail send-nvP-missing-snapshot
rec send-nvP-i-not-earlier "zfs send -n -v -P -i '@$QZB_REV2' '$P@$QZB_REV1'"; must_fail send-nvP-i-not-earlier

# A partial full receive (sender SIGKILLed) and its token.
rec recv-killed-full "qzb_send_killed '$T' '$DST/root' $((6 * MIB))"
rec token-full "zfs get -H -o value receive_resume_token '$DST/root'"; must_pass token-full
tokf=$(cat "$R/token-full.stdout"); [ "$tokf" != "-" ] || qzb_fail "no token"
rec get-token-full "zfs get -H -p -o name,property,value,source receive_resume_token '$DST/root'"
rec send-nvP-t-full "zfs send -n -v -P -t '$tokf'"; must_pass send-nvP-t-full
rec zfs-list-partial-full "zfs list -H -p -t all -o name,type,origin,createtxg,guid -r '$DST'"
# Receiving a full stream again, without -t, into the partial state.
rec recv-err-full-into-partial "zfs send '$T' 2>/dev/null | zfs receive -s '$DST/root'"; must_fail recv-err-full-into-partial
# Resume killed again; then the first (stale) token.
rec recv-killed-resume "qzb_send_killed '-t $tokf' '$DST/root' $((3 * MIB))"
tokf2=$(qzb_token "$DST/root")
rec recv-err-stale-token "zfs send -t '$tokf' 2>/dev/null | zfs receive -s '$DST/root'"; must_fail recv-err-stale-token
rec recv-resume-full "zfs send -t '$(qzb_token "$DST/root")' | zfs receive -s -v '$DST/root'"; must_pass recv-resume-full
[ "$tokf2" != "-" ] || qzb_fail "no second token"
rec send-err-bad-token "zfs send -n -v -P -t 1-0123456789-abcdef"; must_fail send-err-bad-token
# A token whose receive has since completed is still accepted by zfs send (the sender cannot know).
rec send-nvP-t-completed-token "zfs send -n -v -P -t '$tokf2'"

# A partial incremental receive and its token.
zfs send "$P@$QZB_REV1" | zfs receive -s "$DST/private"
rec recv-killed-incr "qzb_send_killed '-i @$QZB_REV1 $P@$QZB_REV2' '$DST/private' $((1 * MIB))"
toki=$(qzb_token "$DST/private"); [ "$toki" != "-" ] || qzb_fail "no incremental token"
echo "$toki" > "$R/token-incr.stdout"; echo 0 > "$R/token-incr.rc"; : > "$R/token-incr.stderr"
printf 'token-incr\t0\t%s\n' "zfs get -H -o value receive_resume_token $DST/private" >> "$R/INDEX.tsv"
rec send-nvP-t-incr "zfs send -n -v -P -t '$toki'"; must_pass send-nvP-t-incr
rec zfs-list-partial-incr "zfs list -H -p -t all -o name,type,origin,createtxg,guid -r '$DST'"
rec get-recv-props "zfs get -H -p -o name,property,value,source receive_resume_token,inconsistent '$DST/private' '$DST/private/%recv'"
rec recv-abort-incr "zfs receive -A '$DST/private'"; must_pass recv-abort-incr
rec recv-err-abort-nothing "zfs receive -A '$DST/private'"; must_fail recv-err-abort-nothing

# receive errors
rec recv-err-full-into-existing "zfs send '$T' 2>/dev/null | zfs receive -s '$DST/root'"; must_fail recv-err-full-into-existing
rec recv-err-incr-no-dataset "zfs send -i '@$QZB_REV1' '$P@$QZB_REV2' 2>/dev/null | zfs receive -s '$DST/nothere'"; must_fail recv-err-incr-no-dataset
# base missing: the destination has only an unrelated snapshot
zfs send "$C/default-dvm/private@$QZB_DVM_CLEAN_SNAP" | zfs receive -s "$DST/otherbase"
rec recv-err-incr-missing-base "zfs send -i '@$QZB_REV1' '$P@$QZB_REV2' 2>/dev/null | zfs receive -s '$DST/otherbase'"; must_fail recv-err-incr-missing-base
# base name present but another guid (a different dataset's snapshot of the same name)
zfs send "$C/fedora-41/private@$QZB_REV1" | zfs receive -s "$DST/otherguid"
rec recv-err-incr-base-guid-mismatch "zfs send -i '@$QZB_REV1' '$P@$QZB_REV2' 2>/dev/null | zfs receive -s '$DST/otherguid'"; must_fail recv-err-incr-base-guid-mismatch
# the target snapshot's name already exists on the destination (another dataset's @REV2)
zfs send "$C/personal/private@$QZB_REV2" | zfs receive -s "$DST/samename"
rec recv-err-incr-target-snap-exists "zfs send -i '@$QZB_REV1' '$P@$QZB_REV2' 2>/dev/null | zfs receive -s '$DST/samename'"; must_fail recv-err-incr-target-snap-exists
# destination modified: zvol (written to) and filesystem (file added)
zfs send "$P@$QZB_REV1" | zfs receive -s "$DST/modvol"
qzb_write_random "$DST/modvol" 0 1
rec recv-err-dest-modified-zvol "zfs send -i '@$QZB_REV1' '$P@$QZB_REV2' 2>/dev/null | zfs receive -s '$DST/modvol'"; must_fail recv-err-dest-modified-zvol
zfs send "$QZB_SRC_POOL/dom0@qzb-rec1" | zfs receive -s "$DST/modfs"
echo x > "$(qzb_fs_path "$DST/modfs")/new-file"
echo y > "$QZB_DOM0_PATH/rec-file"; zfs snapshot "$QZB_SRC_POOL/dom0@qzb-rec2"
rec recv-err-dest-modified-fs "zfs send -i @qzb-rec1 '$QZB_SRC_POOL/dom0@qzb-rec2' 2>/dev/null | zfs receive -s '$DST/modfs'"; must_fail recv-err-dest-modified-fs
rec recv-incr-F-rollback "zfs send -i @qzb-rec1 '$QZB_SRC_POOL/dom0@qzb-rec2' 2>/dev/null | zfs receive -s -F -v '$DST/modfs'"; must_pass recv-incr-F-rollback
# Second receive into the same dataset while the first is still running.
mkfifo "$QZB_WORK/rec.fifo"
zfs send "$P@$QZB_REV1" | zfs receive -s "$DST/busy"
( zfs receive -s "$DST/busy" < "$QZB_WORK/rec.fifo" > "$R/recv-busy-first.out" 2>&1 ) &
bgpid=$!
exec 7>"$QZB_WORK/rec.fifo"
{ zfs send -i "@$QZB_REV1" "$P@$QZB_REV2" | head -c $((1 * MIB)) >&7; } || true   # sender gets SIGPIPE
sleep 2
rec recv-err-concurrent "zfs send -i '@$QZB_REV1' '$P@$QZB_REV2' 2>/dev/null | zfs receive -s '$DST/busy'"; must_fail recv-err-concurrent
exec 7>&-
wait "$bgpid" || true
rec recv-busy-first-after-eof "cat '$R/recv-busy-first.out'"
rm -f "$R/recv-busy-first.out" "$QZB_WORK/rec.fifo"

rec zfs-list-backup-end "zfs list -H -p -t all -o name,type,origin,createtxg,guid -r '$DST'"

rm -f "$QZB_DOM0_PATH/rec-file"
zfs destroy "$P@qzb-rec"; zfs destroy "$C/work/root@qzb-rec"
zfs destroy "$QZB_SRC_POOL/dom0@qzb-rec1"; zfs destroy "$QZB_SRC_POOL/dom0@qzb-rec2"
zfs destroy -r "$DST"
echo "OK: recorded $(($(wc -l < "$R/INDEX.tsv") - 1)) outputs in $R"
