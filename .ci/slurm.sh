#!/usr/bin/env bash
# A real one-node Slurm for the cluster tests (tests/test_cluster.py): Debian's slurm-wlm and
# munge, run as root. `slurm.sh start` installs (apt-get), configures and starts munged,
# slurmctld and slurmd and waits until the node takes jobs; `slurm.sh stop` stops them again.
# The settings are the ones that work in a container without cgroups: process tracking by
# /proc, no task plugin, cons_tres with cores as the consumable resource. cred_expire also sets
# how long Slurm holds a requeued job back (120 s by default): 10 s keeps the tests short.
set -euo pipefail

STATE=/var/lib/lth-ci-slurm          # spool, state, logs and pids of this cluster only
CONF=/etc/slurm/slurm.conf

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
}

configure() {
  mkdir -p "$STATE"/{ctld,d,log} /etc/slurm /run/munge
  local host cpus mem
  host=$(hostname)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat >"$CONF" <<EOF
ClusterName=lthci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
MinJobAge=600
KillWait=10
SchedulerType=sched/backfill
SchedulerParameters=defer_batch=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  chown -R munge:munge /run/munge
  [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
}

wait_gone() {  # pid, then SIGKILL after 15 s
  for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$1" 2>/dev/null || true
}

stop_pidfile() {
  if [ -f "$1" ]; then
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    wait_gone "$pid"
  fi
}

start() {
  install
  configure
  if [ ! -S /run/munge/munge.socket.2 ]; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 20); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.25; done
  fi
  [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null || slurmctld -c   # -c: no state from earlier runs
  [ -f "$STATE/slurmd.pid" ] && kill -0 "$(cat "$STATE/slurmd.pid")" 2>/dev/null || slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "slurm: $(sinfo -h -o '%P %D %T %C') up"
      return 0
    fi
    timeout 5 scontrol update NodeName="$(hostname)" State=RESUME >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm: the node did not come up; logs in $STATE/log" >&2
  tail -n 20 "$STATE"/log/*.log >&2 || true
  return 1
}

stop() {
  timeout 10 scancel --name=lth >/dev/null 2>&1 || true   # lth's jobs (the tests'), so that no step outlives the daemons
  sleep 1
  stop_pidfile "$STATE/slurmd.pid"
  stop_pidfile "$STATE/slurmctld.pid"
  stop_pidfile /run/munge/munged.pid
  echo "slurm: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
