#!/usr/bin/env bash
# Runs the units for real: boots systemd as PID 1 in private namespaces over a copy-on-write
# overlay of / (nothing it writes reaches the disk), then goes through the README's install
# story with both units and checks what systemd reports.
#
#   sudo systemd/e2e-in-container.sh [VENV]     (VENV: a venv with fedbus[dev], default .venv)
#
# Checked: `fedbus service install` for the aggregator (CA in its state directory) and for a
# trainer enrolled over the bus through the running aggregator; both start under the full
# sandbox (DynamicUser, credentials, seccomp, MemoryDenyWriteExecute, PrivateUsers); READY=1
# arrives; `systemctl restart` of the aggregator in the middle of its run costs at most one
# round: the new process resumes the run (same run id, a second incarnation), the trainer
# rejoins it without a restart, and all the rounds finish; the aggregator exits 0 (inactive,
# not failed); `fedbus runs list` shows the run completed; a trainer
# stopped with SIGSTOP is killed by the watchdog and restarted; `systemctl stop` ends it with
# exit status 0. Needs root, unshare(1), overlayfs, a cgroup2 mount, systemd and the system
# Python of the same minor version as VENV's (the service runs /opt/fedbus/venv, a venv of
# /usr/bin/python3 that imports VENV's packages: ProtectHome= hides interpreters under
# /root or /home, such as pyenv's). Not part of `make test`: CI containers cannot boot
# systemd. Takes about a minute.
set -euo pipefail

VENV=$(realpath "${1:-.venv}")
SITE=$(echo "$VENV"/lib/python3.*/site-packages)
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 2; }
[[ -d $SITE ]] || { echo "no site-packages in $VENV" >&2; exit 2; }
CGROUP2=$(findmnt -n -o TARGET -t cgroup2 | head -1)
[[ -n $CGROUP2 ]] || { echo "no cgroup2 mount" >&2; exit 2; }

WORK=$(mktemp -d /tmp/fedbus-e2e.XXXXXX)
CG=$CGROUP2/fedbus-e2e-$$
PID1=""
cleanup() {
    [[ -n $PID1 ]] && kill -9 "$PID1" 2>/dev/null && sleep 1
    [[ -d $CG ]] && find "$CG" -depth -type d -exec rmdir {} + 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/ovl" "$WORK/root" "$CG"
(
    echo $BASHPID > "$CG/cgroup.procs"
    exec unshare --mount --pid --fork --uts --ipc --cgroup --propagation private bash -c '
        set -e
        W=$1
        mount -t tmpfs tmpfs "$W/ovl"
        mkdir "$W/ovl/upper" "$W/ovl/work"
        mount -t overlay overlay \
            -o "lowerdir=/,upperdir=$W/ovl/upper,workdir=$W/ovl/work" "$W/root"
        cd "$W/root"
        mount -t proc proc proc
        mount -t sysfs -o ro sysfs sys
        mount -t cgroup2 cgroup2 sys/fs/cgroup
        mount --rbind /dev dev
        mount -t tmpfs -o mode=755 tmpfs run
        mount -t tmpfs -o mode=1777 tmpfs tmp
        mkdir -p oldroot
        pivot_root . oldroot
        umount -l /oldroot
        # What a container manager does: systemd moves credential mounts across namespaces.
        mount --make-rshared /
        exec env -i container=fedbus-e2e /usr/lib/systemd/systemd --log-target=journal
    ' - "$WORK"
) > "$WORK/console.log" 2>&1 &
for _ in $(seq 50); do
    PID1=$(pgrep -P $! -x systemd || true)
    [[ -n $PID1 ]] && break
    sleep 0.2
done
[[ -n $PID1 ]] || { cat "$WORK/console.log"; echo "systemd did not start" >&2; exit 1; }

inside() { nsenter -t "$PID1" -m -p -u -i -C -r -w env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
for _ in $(seq 50); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    sleep 0.2
done
fail() { echo "FAIL: $*" >&2; inside journalctl --no-pager -o cat -u 'fedbus-*' | tail -30 >&2; exit 1; }
show() { inside systemctl show -p "$1" --value "$2"; }
wait_for() {  # PROPERTY UNIT VALUE SECONDS
    for _ in $(seq $(($4 * 5))); do [[ $(show "$1" "$2") == "$3" ]] && return 0; sleep 0.2; done
    fail "$2: $1 is $(show "$1" "$2"), not $3"
}

F=/opt/fedbus/venv/bin/fedbus
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
STATE=/var/lib/fedbus/e2e
ROUNDS=12
inside /usr/bin/python3 -m venv --without-pip /opt/fedbus/venv
inside sh -c "echo 'import site; site.addsitedir(\"$SITE\")' > \$(echo /opt/fedbus/venv/lib/python3.*/site-packages)/fedbus-e2e.pth"
inside sh -c "printf '#!/opt/fedbus/venv/bin/python\nimport sys\nfrom agent.cli.main import main\nsys.exit(main())\n' > $F && chmod 755 $F"
inside systemd-run -q --unit=e2e-broker "$VENV/bin/nats-server" -a 127.0.0.1 -p "$PORT"

echo "== the aggregator"
inside $F ca init --federation e2e --dir $STATE/aggregator/ca > /dev/null
inside sh -c "mkdir -p -m 0700 /etc/fedbus/e2e && cat > /etc/fedbus/e2e/aggregator.toml" <<EOF
role = "aggregator"
agent_id = "aggregator"
federation = "e2e"
bus_url = "nats://127.0.0.1:$PORT"
state_dir = "$STATE/aggregator"
[plugin]
name = "digits-mlp"
[plugin.options]
agent_index = 0
num_agents = 1
[aggregator]
rounds = $ROUNDS
status_every = 1
min_fit_clients = 1
min_available_clients = 1
join_timeout = 120
[identity]
cert_file = "$STATE/aggregator/ca/aggregator.pem"
key_file = "$STATE/aggregator/ca/aggregator.key"
ca_file = "$STATE/aggregator/ca/ca.pem"
ca_dir = "$STATE/aggregator/ca"
EOF
inside $F service install --role aggregator --federation e2e
wait_for ActiveState fedbus-aggregator@e2e.service active 30

echo "== a trainer, enrolled through the running aggregator"
FP=$(inside openssl x509 -in $STATE/aggregator/ca/ca.pem -outform DER | sha256sum | cut -d' ' -f1)
TOKEN=$(inside $F token create --agent-id dev-1 --dir $STATE/aggregator/ca)
inside env FEDBUS_ENROLL_TOKEN="$TOKEN" $F enroll --federation e2e --agent-id dev-1 \
    --ca-fingerprint "$FP" --bus-url "nats://127.0.0.1:$PORT" --plugin digits-mlp \
    -o agent_index=0 -o num_agents=1 --state-dir $STATE/agent --config /etc/fedbus/e2e/agent.toml
inside $F service install --federation e2e
inside test ! -e $STATE/agent/identity/key.pem || fail "the key is still in the state directory"

echo "== systemctl restart of the aggregator in the middle of the run"
RUN=$STATE/aggregator/runs/run-0001
for _ in $(seq 300); do inside test -d $RUN/rounds/0003 && break; sleep 0.2; done
inside test -d $RUN/rounds/0003 || fail "round 3 never committed"
TRAINER_PID=$(show MainPID fedbus-agent@e2e.service)
inside systemctl restart fedbus-aggregator@e2e.service
echo "== $ROUNDS rounds"
wait_for ActiveState fedbus-aggregator@e2e.service inactive 180
[[ $(show Result fedbus-aggregator@e2e.service) == success ]] || fail "aggregator did not exit 0"
[[ $(show StatusText fedbus-agent@e2e.service) == finished ]] || fail "trainer not finished"
[[ $(show MainPID fedbus-agent@e2e.service) == "$TRAINER_PID" ]] || fail "the trainer was restarted"
inside /usr/bin/python3 - "$RUN" "$ROUNDS" <<'PY' || fail "the restart cost more than one round"
import json, pathlib, sys
run, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
records = json.loads((run / "metrics.json").read_text())
assert [r["round"] for r in records] == list(range(1, rounds + 1)), records
lost = [r["round"] for r in records if r["survivors"] != ["dev-1"]]
assert len(lost) <= 1, f"rounds without the trainer: {lost}"
assert len(list((run / "incarnations").glob("*.json"))) == 2
assert json.loads((run / "result.json").read_text())["outcome"] == "completed"
print(f"   {rounds} rounds, {len(lost)} without the trainer, 2 incarnations")
PY
inside $F runs list --state-dir $STATE/aggregator | grep -q "run-0001.*$ROUNDS/$ROUNDS.*completed" \
    || fail "fedbus runs list does not show the run completed"

echo "== the watchdog restarts a trainer whose event loop stops"
inside kill -STOP "$(show MainPID fedbus-agent@e2e.service)"
wait_for NRestarts fedbus-agent@e2e.service 1 60
inside journalctl --no-pager -o cat -u fedbus-agent@e2e.service | grep -q "Watchdog timeout" \
    || fail "restarted, but not by the watchdog"
wait_for ActiveState fedbus-agent@e2e.service active 30

echo "== systemctl stop: SIGTERM, exit 0"
inside systemctl stop fedbus-agent@e2e.service
[[ $(show Result fedbus-agent@e2e.service) == success ]] || fail "trainer did not stop cleanly"
[[ $(show ExecMainStatus fedbus-agent@e2e.service) == 0 ]] || fail "trainer exit status"
echo "PASS"
