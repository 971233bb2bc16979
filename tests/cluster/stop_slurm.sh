#!/usr/bin/env bash
# Stops the one-node test cluster that tests/cluster/start_slurm.sh started (by the daemons' pid files;
# munged is left running: other programs may use it). Does nothing to a cluster it did not configure.
set -euo pipefail
MARKER="# written by amortbench tests/cluster/start_slurm.sh"
if ! grep -qF "$MARKER" /etc/slurm/slurm.conf 2>/dev/null; then
  echo "stop_slurm: /etc/slurm/slurm.conf was not written by start_slurm.sh; nothing stopped"
  exit 0
fi
for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    echo "stop_slurm: stopped $(basename "$pidfile" .pid)"
  fi
done
