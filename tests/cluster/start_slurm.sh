#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests/integration/test_slurm.py (CI calls it from .ci/run).
#
#   tests/cluster/start_slurm.sh          # install (if missing), configure, start; waits until the node is up
#   tests/cluster/stop_slurm.sh           # stops the daemons this script started
#
# What it does, as root on Debian/Ubuntu:
#   1. installs Debian's `slurm-wlm` and `munge` with apt-get when `slurmctld`/`munged` are missing;
#   2. writes a minimal /etc/slurm/slurm.conf for this host (hostname, CPUs and memory detected with
#      `slurmd -C`), with no accounting (no slurmdbd) and no cgroups (proctrack/linuxproc, task/none), so
#      it works in a container or VM; MinJobAge=3600 keeps finished jobs listed by `squeue` for an hour,
#      which is what the executor plugin polls without accounting (`--slurm-status-command squeue`); jobs
#      may share cores (OverSubscribe=FORCE:4), so a 2-core machine runs more than one tiny job at a time;
#   3. creates a munge key when there is none and starts munged, slurmctld and slurmd;
#   4. waits until `sinfo` shows the node up (idle, or mix/alloc when jobs already run).
# It is idempotent: a second call finds the same configuration and the node up, and does nothing (when the
# configuration it would write changed, it rewrites it and restarts the daemons). It never overwrites a
# slurm.conf that it did not write (a real cluster's): with such a file it only checks that a node is up.
# Exit status 0 means `sbatch` works on this machine; any other means it does not (the message says why).
set -euo pipefail

MARKER="# written by amortbench tests/cluster/start_slurm.sh"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
WAIT_S=${SLURM_START_TIMEOUT:-90}

say() { echo "start_slurm: $*"; }
die() { echo "start_slurm: error: $*" >&2; exit 1; }

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n1 | tr -d '*~#!%$@^-'; }
node_up() { case "$(node_state)" in idle | mix | alloc | comp) return 0 ;; *) return 1 ;; esac; }

# A cluster configured by someone else: use it when it is up, never touch it.
if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
  if command -v sinfo >/dev/null 2>&1 && node_up; then
    say "SLURM is up (configured in $CONF, not by this script): $(sinfo -h -N -o '%N %t cpus=%c mem=%m')"
    exit 0
  fi
  die "$CONF exists and was not written by this script; not touching it (and \`sinfo\` does not show a node up)"
fi

[ "$(id -u)" = 0 ] || die "must run as root to install and start the SLURM daemons"

# 1. packages
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
  || ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "slurm-wlm/munge are missing and there is no apt-get to install them"
  say "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  pkgs=(slurm-wlm munge)
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null; } \
    || die "apt-get could not install ${pkgs[*]}"
fi

# 2. configuration
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
HOST=$(hostname -s)
# `slurmd -C` prints this machine's node line: NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=..
# ThreadsPerCore=.. RealMemory=..; the topology must match what slurmd detects or the node is drained.
NODE_LINE=$(slurmd -C 2>/dev/null | grep '^NodeName=' | head -n1 || true)
if [ -z "$NODE_LINE" ]; then
  NODE_LINE="NodeName=$HOST CPUs=$(nproc) RealMemory=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024))"
fi
NODE_LINE=$(echo "$NODE_LINE" | sed -E "s/^NodeName=[^ ]+/NodeName=$HOST/")
NEW_CONF=$(cat <<EOF
$MARKER
# A one-node test cluster: no accounting, no cgroups, everything as root on 127.0.0.1.
ClusterName=amortbench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
# Jobs may share cores (up to 4 per core): a test VM has few of them, and the tests' jobs are short and
# mostly Python start-up, so batches that ask for all cores still run side by side.
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
)
if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$NEW_CONF" ] && node_up; then
  # Already running with this configuration (a second call): nothing to do.
  say "SLURM is up: $(sinfo -h -N -o '%N %t cpus=%c mem=%m')"
  exit 0
fi
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
  say "writing $CONF for node: $NODE_LINE"
  echo "$NEW_CONF" > "$CONF"
  CONF_CHANGED=1
else
  CONF_CHANGED=0
fi

# 3. munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null 2>&1; then mungekey --create --force >/dev/null
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
MUNGE_USER=root
id munge >/dev/null 2>&1 && MUNGE_USER=munge
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown -R "$MUNGE_USER": /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  rm -f /run/munge/munge.socket.2.lock
  if [ "$MUNGE_USER" = munge ]; then
    runuser -u munge -- /usr/sbin/munged
  else
    /usr/sbin/munged --force
  fi
  for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
  munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# 4. slurmctld and slurmd (restarted when this script changed the configuration)
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$CONF_CHANGED" = 1 ]; then
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    if running "$pidfile"; then
      kill "$(cat "$pidfile")"
      for _ in $(seq 1 100); do running "$pidfile" || break; sleep 0.2; done
    fi
  done
fi
if ! running /run/slurmctld.pid; then
  say "starting slurmctld"
  slurmctld || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
fi
if ! running /run/slurmd.pid; then
  say "starting slurmd"
  slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
fi

# 5. wait for the node
deadline=$((SECONDS + WAIT_S))
while ! node_up; do
  state=$(node_state || true)
  case "$state" in
    down | drain | drng | fail | inval)  # e.g. left down by an earlier run: bring it back
      scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    sinfo -N -l >&2 || true
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    die "the node is not up after ${WAIT_S}s (state: ${state:-unknown})"
  fi
  sleep 1
done
say "SLURM is up: $(sinfo -h -N -o '%N %t cpus=%c mem=%m')"
