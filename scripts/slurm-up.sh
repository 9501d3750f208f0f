#!/usr/bin/env bash
# Brings up a real single-node Slurm on this machine (the compute tests submit to it): munged, slurmdbd (job
# accounting in the local MariaDB, so `sacct` works; skipped when MariaDB is not reachable), slurmctld and
# slurmd, with one node named after this host and one partition `debug`. Memory and time limits are enforced by
# Slurm through cgroup v1 (ProctrackType=proctrack/cgroup, TaskPlugin=task/cgroup, ConstrainRAMSpace=yes).
#
# Idempotent: run it again while the cluster is up and it only checks it; run it after a machine restart and it
# clears the stale pid files first. Runs as root. State, spool and logs live under $OPENSCI_SLURM_DIR
# (default /var/lib/opensci-slurm); the configuration is /etc/slurm/{slurm,cgroup,slurmdbd}.conf, which it
# writes only when they are absent or were written by this script.
# Not for a production cluster: there, point OpenSci at your own (README, "Running at scale").
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

BASE=${OPENSCI_SLURM_DIR:-/var/lib/opensci-slurm}
ETC=/etc/slurm
MARK="# Written by OpenSci's scripts/slurm-up.sh; it rewrites this file. Remove this line to keep your own."
NODE=$(hostname -s)
CLUSTER=opensci
DB_NAME=opensci_slurm_acct
DB_USER=opensci_slurm

say() { echo "slurm-up: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it starts system daemons)"
for bin in munged slurmctld slurmd sinfo scontrol; do
  command -v "$bin" >/dev/null || die "$bin is missing: run scripts/install-system-deps.sh as root"
done

# --- helpers ---------------------------------------------------------------------------------------------------

# Whether process $1 is alive: not gone, and not a zombie (here pid 1 may be slow to reap).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }  # the fields after "(comm) ", starting with the state: R, S, D, Z ...
  [ "${stat:0:1}" != Z ]
}

# The pid in $1 if that process is alive and runs the program $2; removes the pid file when stale (after a
# restart the pid may belong to an unrelated process, which Slurm's daemons would signal).
running_pid() {
  local pidfile=$1 name=$2 pid
  [ -s "$pidfile" ] || return 1
  pid=$(tr -dc '0-9' <"$pidfile")
  if [ -n "$pid" ] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    echo "$pid"
    return 0
  fi
  rm -f "$pidfile"
  return 1
}

stop_daemon() {
  local pidfile=$1 name=$2 pid
  pid=$(running_pid "$pidfile" "$name") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# Runs "$@" until it succeeds, at most $1 seconds.
wait_for() {
  local seconds=$1; shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

# Installs the content of stdin as $1 (mode $2, owner $3) when it differs; returns 0 when the file changed.
install_if_changed() {
  local path=$1 mode=$2 owner=$3 tmp
  if [ -e "$path" ] && ! grep -qxF "$MARK" "$path"; then
    die "$path exists and was not written by this script: this machine has its own Slurm configuration"
  fi
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -e "$path" ] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    chmod "$mode" "$path"; chown "$owner" "$path"
    return 1
  fi
  install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$path"
  rm -f "$tmp"
  return 0
}

# --- directories and the munge key -----------------------------------------------------------------------------
mkdir -p "$BASE"/{state,spool,log,run} "$ETC" /run/munge /var/log/munge /var/lib/munge /etc/munge
chown slurm:slurm "$BASE"/{state,log,run}
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating the munge key"
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key

# --- accounting: is MariaDB there? -----------------------------------------------------------------------------
ACCOUNTING=none
if command -v slurmdbd >/dev/null && command -v mariadb >/dev/null \
  && mariadb -h 127.0.0.1 -u root --connect-timeout=3 -e 'select 1' >/dev/null 2>&1; then
  ACCOUNTING=slurmdbd
  if [ ! -s "$BASE/db.password" ]; then
    (umask 077; head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$BASE/db.password")
  fi
  DB_PASS=$(cat "$BASE/db.password")
  mariadb -h 127.0.0.1 -u root <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
SQL
else
  say "MariaDB is not reachable on 127.0.0.1:3306 as root: no accounting (sacct), scontrol keeps finished jobs"
fi

# --- configuration ---------------------------------------------------------------------------------------------
# The node as slurmd sees it (CPUs, sockets, cores, threads, memory); RealMemory a little below the machine's,
# since slurmd drains a node that has less than configured.
HW=$(slurmd -C | head -1)
CPUS=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$HW")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
[ -n "$CPUS" ] && [ -n "$MEM" ] || die "could not read this machine's CPUs and memory from 'slurmd -C': $HW"
MEM=$((MEM * 95 / 100))
TOPOLOGY=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$HW" || true)

changed=0
install_if_changed "$ETC/slurm.conf" 0644 root:root <<CONF && changed=1
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=5
OverTimeLimit=0
# Every job in its own cgroups: the memory cgroup enforces --mem (OUT_OF_MEMORY), cpuset enforces the CPUs.
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=task=5
SchedulerType=sched/backfill
# Start a batch job as soon as it is submitted (the default batches them up every 3 s).
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
# Refuse at submission a job no node of its partition could ever run (rather than keep it pending).
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/$ACCOUNTING
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobCompType=jobcomp/none
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS $TOPOLOGY RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF

install_if_changed "$ETC/cgroup.conf" 0644 root:root <<CONF && changed=1
$MARK
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=yes
ConstrainRAMSpace=yes
AllowedRAMSpace=100
ConstrainSwapSpace=yes
AllowedSwapSpace=0
CONF

if [ "$ACCOUNTING" = slurmdbd ]; then
  install_if_changed "$ETC/slurmdbd.conf" 0600 slurm:slurm <<CONF && changed=1
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
PidFile=$BASE/run/slurmdbd.pid
LogFile=$BASE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
CONF
fi

if [ $changed = 1 ]; then
  # A new configuration: restart whatever runs with the old one.
  stop_daemon "$BASE/run/slurmd.pid" slurmd
  stop_daemon "$BASE/run/slurmctld.pid" slurmctld
  stop_daemon "$BASE/run/slurmdbd.pid" slurmdbd
fi

# --- daemons ---------------------------------------------------------------------------------------------------
if ! running_pid /run/munge/munged.pid munged >/dev/null; then
  say "starting munged"
  runuser -u munge -- munged --force
fi
wait_for 10 sh -c 'munge -n | unmunge' || die "munged does not answer (see /var/log/munge/munged.log)"

if [ "$ACCOUNTING" = slurmdbd ]; then
  if ! running_pid "$BASE/run/slurmdbd.pid" slurmdbd >/dev/null; then
    say "starting slurmdbd"
    slurmdbd
  fi
  wait_for 60 sacctmgr -n list cluster || die "slurmdbd does not answer (see $BASE/log/slurmdbd.log)"
  if [ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster)" ]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
fi

if ! running_pid "$BASE/run/slurmctld.pid" slurmctld >/dev/null; then
  say "starting slurmctld"
  slurmctld
fi
wait_for 60 sh -c 'scontrol ping | grep -q "is UP"' \
  || die "slurmctld does not answer (see $BASE/log/slurmctld.log)"

if ! running_pid "$BASE/run/slurmd.pid" slurmd >/dev/null; then
  say "starting slurmd"
  slurmd
fi

# --- wait until the node takes jobs ----------------------------------------------------------------------------
node_ready() {
  local state
  state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1)
  case "$state" in
    idle | mixed | allocated | completing) return 0 ;;
    down* | drain* | fail*)
      # Left down or drained by a restart or an earlier configuration: it is healthy again if slurmd answers.
      scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
      return 1 ;;
    *) return 1 ;;
  esac
}
wait_for 60 node_ready || die "node $NODE is not idle: $(sinfo -h -N -n "$NODE" -o '%T %E') (see $BASE/log/slurmd.log)"

echo "slurm up: node $NODE ($CPUS CPUs, $MEM MB), partition debug, accounting $ACCOUNTING," \
  "state $(sinfo -h -N -n "$NODE" -o %T), logs in $BASE/log"
