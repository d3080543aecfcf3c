#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian's packages, for the tests
# (tests/conftest.py's slurm_cluster fixture) and for trying hydra/launcher=slurm by hand:
#
#   scripts/slurm_cluster.sh install       # apt-get the packages if absent (root or sudo); quick when present
#   scripts/slurm_cluster.sh check         # exit 0 if they are present, else name what is missing
#   scripts/slurm_cluster.sh up DIR        # start munge, MariaDB, slurmdbd, slurmctld, slurmd; state in DIR
#   . DIR/env                              # SLURM_CONF for sbatch, srun, sacct, squeue, scancel, scontrol
#   scripts/slurm_cluster.sh down DIR      # cancel what is left, stop the daemons by their recorded PIDs
#
# Everything lives in DIR (configs, munge key and socket, database, state, spool, logs, PIDs in
# DIR/pids/); the ports are free ones picked at `up`, so it never touches a cluster already on the
# machine. Accounting goes through slurmdbd on MariaDB because submitit follows its jobs with sacct.
# No cgroups (proctrack/linuxproc, task/none), so it runs in containers; the daemons and jobs run as
# the user who runs `up` (root in CI).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)
COMMANDS=(munged mungekey mariadbd mariadb-install-db mariadb-admin slurmdbd slurmctld slurmd sbatch srun sacct sacctmgr sinfo squeue scancel scontrol)
# Stopped in reverse order of starting.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

die() { echo "slurm_cluster: $*" >&2; exit 1; }

missing_commands() {
    local c missing=()
    for c in "${COMMANDS[@]}"; do
        command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || missing+=("$c")
    done
    echo "${missing[@]}"
}

install_packages() {
    if [ -z "$(missing_commands)" ]; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "installing ${PACKAGES[*]} needs root (or sudo)"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${PACKAGES[*]} (SLURM 22.05+, MariaDB) with your package manager"
    # Packages' own services are not started: `up` runs private copies of the daemons.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

free_ports() {  # N ports nobody listens on now
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

start() {  # NAME CMD...: run a daemon in the foreground in its own session; record its PID
    local name=$1
    shift
    setsid "$@" >"$DIR/log/$name.out" 2>&1 </dev/null &
    echo $! >"$DIR/pids/$name.pid"
}

wait_for() {  # WHAT SECONDS CMD...: poll CMD until it succeeds
    local what=$1 seconds=$2 i
    shift 2
    for ((i = 0; i < seconds * 5; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    die "$what did not come up within ${seconds}s; logs in $DIR/log/"
}

up() {
    [ -z "$(missing_commands)" ] || die "SLURM packages absent (no $(missing_commands)): run $0 install"
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    [ ! -e "$DIR/pids" ] || [ -z "$(ls -A "$DIR/pids")" ] || die "$DIR/pids/ is not empty: a cluster may be up; run $0 down $DIR"
    rm -rf "$DIR"/{etc,munge,mysql,state,spool,log,pids}
    mkdir -p "$DIR"/{etc,munge,mysql,state,spool,log,pids}

    local user host cpus mem_mb
    user=$(id -un)
    host=$(hostname -s)
    # At least 2 CPUs, so that a two-task job fits on a one-core machine (config_overrides lets
    # slurmd declare more than it finds).
    cpus=$(nproc)
    if [ "$cpus" -lt 2 ]; then cpus=2; fi
    mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
    read -r ctld_port slurmd_port dbd_port db_port < <(free_ports 4)

    mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null 2>&1 || die "mungekey failed"
    chmod 600 "$DIR/munge/munge.key"
    start munged munged --foreground --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munged.seed" --log-file="$DIR/log/munged.log"

    mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user="$user" --auth-root-authentication-method=normal \
        --skip-test-db >"$DIR/log/mariadb-install-db.out" 2>&1 || die "mariadb-install-db failed: $DIR/log/mariadb-install-db.out"
    start mariadbd mariadbd --no-defaults --datadir="$DIR/mysql" --socket="$DIR/mysql/mysql.sock" --port="$db_port" \
        --bind-address=127.0.0.1 --user="$user" --pid-file="$DIR/mysql/mariadbd.pid" --log-error="$DIR/log/mariadbd.log" \
        --innodb-buffer-pool-size=32M
    wait_for MariaDB 60 mariadb-admin --no-defaults -h 127.0.0.1 -P "$db_port" -u root ping

    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=$user
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=root
StorageLoc=slurm_acct_db
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/state/slurmdbd.pid
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"

    cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=alpacare
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/state/slurmctld.pid
SlurmdPidFile=$DIR/state/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups: processes tracked by parentage, no binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# sacct, which submitit polls, reads slurmdbd.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
# The munge socket for slurmdbd connections (sacct, sacctmgr, slurmctld): this cluster's own munged.
AccountingStoragePass=$DIR/munge/munge.socket
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
# Seconds between SIGTERM and SIGKILL when a job or step ends early (default 30): tests wait less.
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    echo "export SLURM_CONF=$DIR/etc/slurm.conf" >"$DIR/env"
    export SLURM_CONF="$DIR/etc/slurm.conf"

    start slurmdbd slurmdbd -D
    wait_for slurmdbd 60 sacctmgr -i list cluster
    sacctmgr -i add cluster alpacare >/dev/null
    start slurmctld slurmctld -D -i
    start slurmd slurmd -D -N "$host"
    wait_for "the node ($host)" 60 node_idle "$host"
    wait_for sacct 30 sacct -n -X
    echo "slurm_cluster: up in $DIR (slurmctld on 127.0.0.1:$ctld_port); . $DIR/env"
}

node_idle() {
    [ "$(sinfo -h -n "$1" -o %T 2>/dev/null)" = idle ]
}

down() {
    [ -d "$DIR/pids" ] || die "$DIR/pids: no cluster recorded there"
    if [ -f "$DIR/env" ]; then
        . "$DIR/env"
        # Jobs first: their steps run under slurmstepd, which outlives slurmd.
        local jobs i
        jobs=$(squeue -h -o %A 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 150; i++)); do
                [ -n "$(squeue -h -o %A 2>/dev/null)" ] || break
                sleep 0.2
            done
        fi
    fi
    local k name pid
    for ((k = ${#DAEMONS[@]} - 1; k >= 0; k--)); do
        name=${DAEMONS[$k]}
        [ -f "$DIR/pids/$name.pid" ] || continue
        pid=$(cat "$DIR/pids/$name.pid")
        stop_pid "$pid" "$name"
        rm -f "$DIR/pids/$name.pid"
    done
    echo "slurm_cluster: down ($DIR)"
}

stop_pid() {  # PID NAME: SIGTERM, then SIGKILL after 10 s; only if the PID is still that daemon
    local pid=$1 name=$2 i
    alive "$pid" "$name" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        alive "$pid" "$name" || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

alive() {  # PID NAME: the process exists and runs NAME (a recycled PID is left alone)
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "$2"
}

usage() {
    echo "usage: $0 install | check | up DIR | down DIR" >&2
    exit 2
}

case "${1:-}" in
    install) install_packages ;;
    check) missing=$(missing_commands); [ -z "$missing" ] || die "SLURM packages absent (no $missing): run $0 install" ;;
    up) [ $# -eq 2 ] || usage; DIR=$2; up ;;
    down) [ $# -eq 2 ] || usage; DIR=$2; down ;;
    *) usage ;;
esac
