#!/bin/bash
# The fault campaign of issue 12, on a pipeline given as $1 (default: the quickstart cut to
# ROUNDS=2 rounds of one epoch after two for round 0), against a clean run of it:
#   1. N random SIGKILLs (some back to back), each followed by a resume to completion;
#   2. a SIGKILL at every atomic write (PIPE_FAULT_KILL=write:k), then a resume;
# after each, the run's output digests and every object must equal the clean run's, and
# `pipe verify` must find the store intact. Prints one line per trial and the counts.
#
#   bash scripts/fault_campaign.sh [PIPELINE] [N]      (pipe on PATH or PIPE=path)
set -u
PIPE=${PIPE:-pipe}
FILE=${1:-pipelines/quickstart.toml}
N=${2:-30}
ROUNDS=${ROUNDS:-2}
SETS=(--set pipeline.rounds=$ROUNDS --set train.epochs=2 --set train.epochs_per_round=1)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

digests() { # the output digests of the newest run record of store $1
  python3 - "$1" <<'PY'
import json, os, sys
runs = sorted(os.listdir(os.path.join(sys.argv[1], "runs")))
r = json.load(open(os.path.join(sys.argv[1], "runs", runs[-1])))
print(r["status"], " ".join(sorted(o["digest"] for s in r["stages"] for o in s["outputs"].values())))
PY
}

$PIPE run "$FILE" --store "$W/clean" "${SETS[@]}" > /dev/null || exit 1
want=$(digests "$W/clean")
start=$(date +%s.%N); $PIPE run "$FILE" --store "$W/timing" "${SETS[@]}" > /dev/null; took=$(echo "$(date +%s.%N) - $start" | bc)

ok=0; bad=0
check() { # store, label
  local got; got=$(digests "$1")
  if [ "$got" == "$want" ] && $PIPE verify --store "$1" > /dev/null 2>&1 && [ -z "$(ls "$1/tmp")" ]; then ok=$((ok+1)); echo "ok   $2"; else bad=$((bad+1)); echo "BAD  $2"; fi
}

for i in $(seq 1 "$N"); do
  s="$W/random$i"
  kills=$(( (RANDOM % 3) + 1 ))
  for k in $(seq 1 $kills); do
    delay=$(echo "scale=3; $((RANDOM % 1000)) * $took / 1000" | bc)
    $PIPE run "$FILE" --store "$s" "${SETS[@]}" > /dev/null 2>&1 &
    pid=$!; sleep "$delay"; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  done
  $PIPE run "$FILE" --store "$s" "${SETS[@]}" > /dev/null 2>&1
  check "$s" "random: $kills kill(s), the last after ${delay}s"
  rm -rf "$s"
done

k=1
while :; do
  s="$W/write$k"
  PIPE_FAULT_KILL=write:$k $PIPE run "$FILE" --store "$s" "${SETS[@]}" > /dev/null 2>&1
  rc=$?
  [ $rc -eq 0 ] && { rm -rf "$s"; break; }
  $PIPE run "$FILE" --store "$s" "${SETS[@]}" > /dev/null 2>&1
  check "$s" "killed at write $k"
  rm -rf "$s"; k=$((k+1))
done
echo "a clean run takes ${took}s"
echo "campaign: $ok ok, $bad bad ($N random-kill trials, $((k-1)) write points)"
[ $bad -eq 0 ]
