#!/usr/bin/env bash
# Runs a command again until it succeeds, for machines that crash or get preempted:
#   launch/autorestart.sh launch/local.sh --config.total_epochs=300
#   launch/autorestart.sh python -m vit_jax.main --config configs/register.py --workdir runs/reg
#
# Each run resumes from the workdir's last checkpoint. Exit codes of vit_jax.main:
#   0   finished                      -> stop, exit 0
#   2   one-line error (bad input, non-finite loss, full disk, ...): a retry would
#       fail the same way            -> stop, exit 2
#   75  preempted by SIGTERM, checkpoint written -> run again at once (no retry used)
#   other (a crash, SIGKILL = 137, out of memory) -> run again after a backoff
# Edit (or set in the environment): MAX_RETRIES, the crashes tolerated in a row;
# BACKOFF_S, the first wait, doubled after each crash up to BACKOFF_MAX_S.
# SIGTERM or SIGINT to this script is passed to the run, and nothing is restarted.
set -u
MAX_RETRIES=${MAX_RETRIES:-10}
BACKOFF_S=${BACKOFF_S:-30}
BACKOFF_MAX_S=${BACKOFF_MAX_S:-600}

if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi

child=''
stopping=0
trap 'stopping=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT

crashes=0
backoff=$BACKOFF_S
while true; do
  "$@" &
  child=$!
  echo "autorestart: started pid $child: $*" >&2
  wait "$child"
  rc=$?
  while kill -0 "$child" 2>/dev/null; do   # wait returned early for a trapped signal
    wait "$child"
    rc=$?
  done
  child=''
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || [ "$stopping" -eq 1 ]; then
    echo "autorestart: exit code $rc; stopping" >&2
    exit "$rc"
  fi
  if [ "$rc" -eq 75 ]; then
    echo "autorestart: preempted (exit code 75); resuming" >&2
    crashes=0
    backoff=$BACKOFF_S
    continue
  fi
  crashes=$((crashes + 1))
  if [ "$crashes" -gt "$MAX_RETRIES" ]; then
    echo "autorestart: exit code $rc; giving up after $MAX_RETRIES retries" >&2
    exit "$rc"
  fi
  echo "autorestart: exit code $rc; retry $crashes/$MAX_RETRIES in ${backoff}s" >&2
  sleep "$backoff" &
  wait $! || true
  [ "$stopping" -eq 1 ] && exit "$rc"
  backoff=$((backoff * 2 > BACKOFF_MAX_S ? BACKOFF_MAX_S : backoff * 2))
done
