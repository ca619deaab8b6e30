#!/bin/sh
# dpo-out.sh: where pq-dpo saves. Without --out it refuses to train (exit 2)
# unless --no-save says so; an existing --out that is a file or a directory
# other than an adapter is refused even with --overwrite, an adapter only
# with --overwrite (or when it is --resume's own), all before any work and
# leaving the path as it was. OUT.tmpPID / OUT.oldPID directories of killed
# runs (PID gone) are removed, or put back when OUT is missing; a live
# process's are left alone.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$d/m" >/dev/null
good='"chosen_ids":[1,5,9,12,40],"rejected_ids":[1,5,9,13,41,42],"prompt_len":3,"ref_chosen_logp":-20.5,"ref_rejected_logp":-31.25'
for i in 1 2 3 4; do echo "{\"id\":\"g$i\",$good}"; done >"$d/in.jsonl"
dpo() { "$PQ_BIN/pq-dpo" --raw -m "$d/m" -t 1 --lr-schedule constant --no-progress "$@"; }
refused() { # what, args...: exit 2, nothing on stdout
  what=$1; shift
  rc=0; dpo "$@" "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
  [ $rc -eq 2 ] || { echo "$what: exit $rc, want 2"; cat "$d/err"; exit 1; }
  [ ! -s "$d/out" ] || { echo "$what: trained anyway"; exit 1; }
  cat "$d/err"
}

refused "no --out"
grep -q -- "--out DIR is required" "$d/err" || { echo "no --out: no reason"; exit 1; }
dpo --no-save "$d/in.jsonl" >"$d/out" 2>"$d/err" || { cat "$d/err"; exit 1; }
[ "$(wc -l <"$d/out")" -eq 2 ] || { echo "--no-save: want 2 steps"; exit 1; }
refused "--out with --no-save" --out "$d/x" --no-save

echo precious >"$d/file"
for o in "" --overwrite; do
  refused "--out a file $o" --out "$d/file" $o
  [ "$(cat "$d/file")" = precious ] || { echo "--out a file: changed"; exit 1; }
done
mkdir "$d/dir"
echo keep >"$d/dir/notes.txt"
for o in "" --overwrite; do
  refused "--out a directory $o" --out "$d/dir" $o
  [ "$(cat "$d/dir/notes.txt")" = keep ] || { echo "--out a directory: changed"; exit 1; }
done
ls "$d" | grep -q 'old\|tmp' && { echo "left behind:"; ls "$d"; exit 1; }

# An adapter: refused, then replaced with --overwrite; --resume's own is fine.
dpo --out "$d/a" --stop-after 1 "$d/in.jsonl" >/dev/null 2>"$d/err" || { cat "$d/err"; exit 1; }
cp "$d/a/adapter_model.safetensors" "$d/first"
refused "--out an adapter" --out "$d/a"
grep -q -- "--overwrite" "$d/err" || { echo "no hint of --overwrite"; exit 1; }
cmp -s "$d/a/adapter_model.safetensors" "$d/first" || { echo "the adapter was changed"; exit 1; }
dpo --resume "$d/a" --out "$d/a" "$d/in.jsonl" >"$d/out" 2>"$d/err" || { cat "$d/err"; exit 1; }
[ "$(wc -l <"$d/out")" -eq 1 ] || { echo "resume: want step 2 only"; cat "$d/out"; exit 1; }
dpo --out "$d/a" --overwrite "$d/in.jsonl" >"$d/out" 2>"$d/err" || { cat "$d/err"; exit 1; }
grep -q '"step":[[:space:]]*2,' "$d/a/trainer_state.json" || { echo "--overwrite: not the new run's adapter"; exit 1; }

# --resume of a finished run: says so, exit 0 (by epochs, and by --max-steps).
for args in "" "--max-steps 1"; do
  rm -rf "$d/f"
  dpo --out "$d/f" $args "$d/in.jsonl" >/dev/null 2>"$d/err" || { cat "$d/err"; exit 1; }
  rc=0; dpo --resume "$d/f" --out "$d/f" $args "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
  [ $rc -eq 0 ] || { echo "--resume of a finished run ($args): exit $rc, want 0"; cat "$d/err"; exit 1; }
  grep -q "is complete" "$d/err" || { echo "--resume of a finished run: not said"; cat "$d/err"; exit 1; }
  [ ! -s "$d/out" ] || { echo "--resume of a finished run: trained"; exit 1; }
done

# --resume DIR --output FILE keeps the metrics of the steps in the
# checkpoint (it used to truncate them) and drops what came after it.
rm -rf "$d/c"
dpo --out "$d/c" --stop-after 1 --output "$d/m.jsonl" "$d/in.jsonl" 2>"$d/err" || { cat "$d/err"; exit 1; }
printf '{"step":2,"loss":9}\n{"step":3,"lo' >>"$d/m.jsonl" # written after the checkpoint, then killed
dpo --resume "$d/c" --out "$d/c" --output "$d/m.jsonl" "$d/in.jsonl" 2>"$d/err" || { cat "$d/err"; exit 1; }
grep -q "2 lines after the checkpoint's step 1 dropped" "$d/err" || { echo "not said:"; cat "$d/err"; exit 1; }
[ "$(sed -n 's/^{"step":[[:space:]]*\([0-9]*\),.*/\1/p' "$d/m.jsonl" | tr '\n' ' ')" = "1 2 " ] ||
  { echo "--resume --output: metrics lost or doubled:"; cat "$d/m.jsonl"; exit 1; }
! grep -q '"loss":9' "$d/m.jsonl" || { echo "a stale line kept"; exit 1; }

# What SIGKILL leaves: a dead pid's tmp and old directories go, a live one's stay.
dead=$(sh -c 'echo $$')
mkdir "$d/a.tmp$dead" "$d/a.old$dead" "$d/a.tmp$$" "$d/a.tmpx$dead"
echo x >"$d/a.tmp$dead/adapter_model.safetensors"
echo x >"$d/a.old$dead/adapter_config.json"
dpo --resume "$d/a" --out "$d/a" --epochs 3 --max-steps 3 "$d/in.jsonl" >"$d/out" 2>"$d/err" || { cat "$d/err"; exit 1; }
[ ! -e "$d/a.tmp$dead" ] && [ ! -e "$d/a.old$dead" ] || { echo "dead run's directories left"; ls "$d"; exit 1; }
[ -d "$d/a.tmp$$" ] && [ -d "$d/a.tmpx$dead" ] || { echo "a live run's (or another) directory removed"; exit 1; }
grep -q "removed .*a.tmp$dead, left by a run that was killed" "$d/err" || { echo "not said:"; cat "$d/err"; exit 1; }
# Killed between the two renames of a save: OUT is missing, OUT.oldPID is the checkpoint.
mv "$d/a" "$d/a.old$dead"
dpo --resume "$d/a" --out "$d/a" --epochs 3 --max-steps 4 "$d/in.jsonl" >"$d/out" 2>"$d/err" || { cat "$d/err"; exit 1; }
grep -q "put back from" "$d/err" || { echo "not put back:"; cat "$d/err"; exit 1; }
[ "$(sed -n 's/.*"step":[[:space:]]*\([0-9]*\).*/\1/p' "$d/out")" = 4 ] || { echo "resumed at the wrong step:"; cat "$d/out"; exit 1; }
echo ok
