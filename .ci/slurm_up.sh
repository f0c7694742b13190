#!/usr/bin/env bash
# Start a real two-node SLURM cluster on loopback for `pytest -m slurm` (idempotent; run as root).
#
#   bash .ci/slurm_up.sh && sinfo        # -> debug* up infinite 2 idle n[1-2]
#
# Debian's slurm-wlm + munge; one slurmctld and two slurmd (n1, n2) on 127.0.0.1, ports 17001-17002.
# Each slurmd offers all local cores, so a 2-node × 1-task job and a 1-node × 2-task job both fit.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "slurm_up.sh: needs root (apt-get, munged, slurmd)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
CONF_DIR=/etc/slurm
SPOOL=/var/spool/slurm
mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$SPOOL/d/n1" "$SPOOL/d/n2" /var/log/slurm /run/munge

# ---- munge ------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged --force
fi

# ---- slurm.conf -------------------------------------------------------------------------------
cat > "$CONF_DIR/slurm.conf.new" <<EOF
ClusterName=litlora
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=17001
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
KillWait=30
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=n[1-2] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001-17002 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
restart=0
if ! cmp -s "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf" 2>/dev/null; then
  mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
  restart=1
else
  rm -f "$CONF_DIR/slurm.conf.new"
fi
rm -f "$CONF_DIR/cgroup.conf"  # slurm 22.05 has no CgroupPlugin=disabled; proctrack/linuxproc needs no cgroup

stop_pidfile() {  # stop one daemon by the pid it wrote, never by name
  local f=$1
  if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
    kill "$(cat "$f")"
    for _ in $(seq 50); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
  fi
}
if [ "$restart" = 1 ]; then
  stop_pidfile /run/slurmd-n1.pid
  stop_pidfile /run/slurmd-n2.pid
  stop_pidfile /run/slurmctld.pid
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
running /run/slurmctld.pid || /usr/sbin/slurmctld -i
running /run/slurmd-n1.pid || /usr/sbin/slurmd -N n1
running /run/slurmd-n2.pid || /usr/sbin/slurmd -N n2

# ---- wait until both nodes are idle -----------------------------------------------------------
for i in $(seq 120); do
  states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)
  if [ "$(echo "$states" | grep -c ' idle$' || true)" = 2 ]; then
    echo "slurm_up.sh: cluster ready"; sinfo
    exit 0
  fi
  # a node left down/drained by an earlier run comes back here
  if echo "$states" | grep -Eq ' (down|drain|drng|unk)\*?$'; then
    scontrol update NodeName=n[1-2] State=RESUME >/dev/null 2>&1 || true
  fi
  sleep 1
done
echo "slurm_up.sh: nodes not idle after 120 s:" >&2
sinfo -N >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log >&2 || true
exit 1
