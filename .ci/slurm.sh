#!/usr/bin/env bash
# A single-node SLURM on this machine, for the tests of dask_jobqueue.SLURMCluster:
# Debian's slurm-wlm and munge, one node named after `hostname -s` on localhost,
# daemons started directly (no systemd). Idempotent; run as root. Ends when
# `sinfo` shows the node idle and `srun hostname` works.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "slurm.sh: run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # others may hold dpkg's lock for a while (CI images, a second job): wait for it
    apt="apt-get -o DPkg::Lock::Timeout=600 -qq"
    $apt update
    $apt install -y --no-install-recommends slurm-wlm munge >/dev/null
fi

node=$(hostname -s)
cpus=$(nproc)
# RealMemory in MB, a bit under the machine's, so slurmd does not drain the node
mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10 ))

mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
if ! munge -n </dev/null >/dev/null 2>&1; then
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged --force
    else
        munged --force
    fi
fi

spool=/var/spool/slurm
mkdir -p "$spool/ctld" "$spool/d" /var/log/slurm /etc/slurm
conf=/etc/slurm/slurm.conf
cat >"$conf.new" <<CONF
ClusterName=ci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
KillWait=5
InactiveLimit=0
MinJobAge=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
changed=0
if ! cmp -s "$conf.new" "$conf"; then
    mv "$conf.new" "$conf"
    changed=1
else
    rm -f "$conf.new"
fi

running() { pgrep -x "$1" >/dev/null; }
if [ "$changed" = 1 ]; then
    for daemon in slurmd slurmctld; do
        if running "$daemon"; then
            pkill -x "$daemon" || true
            sleep 1
        fi
    done
fi
running slurmctld || slurmctld
running slurmd || slurmd

for _ in $(seq 1 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle*|mix*|alloc*) break ;;
        down*|drain*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
sinfo
timeout 60 srun -N1 -n1 hostname
echo "slurm.sh: SLURM is up on $node ($cpus CPUs, ${mem} MB)"
