#!/usr/bin/env bash
# The services the tests need, on loopback, for .ci/run (or by hand: `source
# scripts/test-services.sh start DIR`, then `test_services_stop`):
#  - S3: moto_server (PyPI moto[server]), which honours If-None-Match and If-Match; the
#    tests read AWS_ENDPOINT_URL and test credentials from the environment;
#  - Slurm: a single-node cluster (Debian's slurmctld, slurmd, slurm-client and munge,
#    unpacked from their .debs into DIR: no systemd, nothing installed system-wide), with
#    sbatch/squeue/scontrol on PATH and SLURM_CONF exported. Accounting is off.
# Each start fails loudly: a test that needs a service must fail, not skip, in CI.
test_services_start() {
    local dir=$1
    mkdir -p "$dir"
    TEST_SERVICES_DIR=$(cd "$dir" && pwd)
    local W=$TEST_SERVICES_DIR

    # --- S3 ---
    if ! command -v moto_server >/dev/null; then
        python3 -m pip install --quiet 'moto[server]'
    fi
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    moto_server -H 127.0.0.1 -p "$port" >"$W/moto.log" 2>&1 &
    echo $! >"$W/moto.pid"
    for _ in $(seq 1 100); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
        sleep 0.2
    done
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" || { echo "moto_server did not start: $(tail -5 "$W/moto.log")" >&2; return 1; }
    export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true

    # --- Slurm ---
    local R=$W/root
    mkdir -p "$W/debs"
    local pkgs="slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge libmunge2 libhwloc15 libnuma1"
    (cd "$W/debs" && { apt-get download $pkgs >/dev/null 2>&1 || { apt-get update -qq && apt-get download $pkgs >/dev/null; }; })
    mkdir -p "$R" && for d in "$W"/debs/*.deb; do dpkg -x "$d" "$R"; done
    export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu:$R/usr/lib/x86_64-linux-gnu/slurm-wlm${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PATH=$R/usr/bin:$PATH
    mkdir -p "$W/run" "$W/slurm/state" "$W/slurm/spool" "$W/slurm/log"; chmod 700 "$W/run"
    dd if=/dev/urandom of="$W/run/munge.key" bs=1024 count=1 2>/dev/null; chmod 400 "$W/run/munge.key"
    local H
    H=$(hostname -s)
    cat >"$W/slurm/slurm.conf" <<CONF
ClusterName=pipetest
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$W/run/munge.sock
PluginDir=$R/usr/lib/x86_64-linux-gnu/slurm-wlm
StateSaveLocation=$W/slurm/state
SlurmdSpoolDir=$W/slurm/spool
SlurmctldPidFile=$W/slurm/ctld.pid
SlurmdPidFile=$W/slurm/slurmd.pid
SlurmctldLogFile=$W/slurm/log/ctld.log
SlurmdLogFile=$W/slurm/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=$H NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF=$W/slurm/slurm.conf
    "$R/usr/sbin/munged" -f -S "$W/run/munge.sock" --key-file="$W/run/munge.key" \
        --log-file="$W/run/munged.log" --pid-file="$W/run/munged.pid" --seed-file="$W/run/munged.seed"
    "$R/usr/sbin/slurmctld-wlm" -f "$SLURM_CONF" -i
    "$R/usr/sbin/slurmd-wlm" -f "$SLURM_CONF" -d "$R/usr/sbin/slurmstepd-wlm"
    for _ in $(seq 1 60); do
        sinfo -h -o %T 2>/dev/null | grep -q idle && break
        sleep 0.5
    done
    sinfo -h -o %T | grep -q idle || { echo "slurm did not come up: $(tail -5 "$W/slurm/log/ctld.log")" >&2; return 1; }
    echo "test services: S3 at $AWS_ENDPOINT_URL, Slurm ($(sinfo -h -o '%P %D %T'))"
}

test_services_stop() {
    local W=${TEST_SERVICES_DIR:-}
    [ -n "$W" ] || return 0
    for pid in "$W/slurm/slurmd.pid" "$W/slurm/ctld.pid" "$W/run/munged.pid" "$W/moto.pid"; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
}

if [ "${1:-}" = start ]; then
    test_services_start "${2:?usage: source scripts/test-services.sh start DIR}"
fi
