#!/usr/bin/env bash
# Integration test of obsctl.observability.fuse_mount / fuse_mount_info in a
# systemd container (Debian bookworm, image from scripts/systemd-image)
# against a real S3 server (moto_server) on the host's loopback.
#
#   tests/integration/targets/fuse_mount/runme.sh [ansible-playbook args]
#
# It skips (exit 0, reason printed) when docker cannot run here. Everything it
# starts (container, moto_server) is stopped on exit; KEEP=1 keeps them.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../../../.." && pwd)"
VENV="${ANSIBLE_VENV:-/tmp/venv-ansible}"
IMAGE="${OBSCTL_IMAGE:-obsctl-systemd:bookworm}"
NAME="obsctl-it-fuse-mount-$$"
WORK="$(mktemp -d /tmp/obsctl-it.XXXXXX)"
MOTO_PID=""

log() { printf 'fuse_mount-it: %s\n' "$*" >&2; }
skip() { printf 'SKIP fuse_mount integration: %s\n' "$*"; exit 0; }

cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        log "KEEP=1: container $NAME, moto pid $MOTO_PID, work dir $WORK left running"
        return
    fi
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || skip "needs root"
[ -e /dev/fuse ] || skip "no /dev/fuse on this host"
command -v docker >/dev/null 2>&1 || skip "no docker client"
if ! "$REPO/scripts/systemd-image"; then
    skip "docker cannot run here (scripts/systemd-image failed, see above)"
fi

# -- Ansible on the host, talking to the container with community.docker ----
if [ ! -x "$VENV/bin/ansible-playbook" ] || ! "$VENV/bin/ansible-galaxy" collection list community.docker 2>/dev/null | grep -q community.docker; then
    log "installing ansible 12 (ansible-core 2.19 + community.docker) in $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'ansible>=12,<13' jinja2
fi
export PATH="$VENV/bin:$PATH"

# -- S3 server on loopback -------------------------------------------------------
MOTO="$(command -v moto_server || true)"
if [ -z "$MOTO" ]; then
    log "installing moto[server] in $VENV"
    "$VENV/bin/pip" install -q 'moto[server]>=5' boto3
    MOTO="$VENV/bin/moto_server"
fi
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$MOTO" -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 1 60); do
    if curl -fsS "http://127.0.0.1:$PORT/moto-api/" >/dev/null 2>&1; then break; fi
    sleep 0.5
done
ENDPOINT="http://127.0.0.1:$PORT"
# Buckets and one object (moto accepts anonymous set-up calls).
for bucket in it-data it-other; do curl -fsS -X PUT "$ENDPOINT/$bucket" >/dev/null; done
printf 'hello from s3' | curl -fsS -T - "$ENDPOINT/it-data/prefix/hello.txt" >/dev/null
log "moto_server on $ENDPOINT (pid $MOTO_PID)"

# -- obsctl wheels for the container (built here: the container needs no PyPI) --
log "building the obsctl wheel and its dependencies"
mkdir -p "$WORK/wheels"
python3 -m pip wheel -q -w "$WORK/wheels" "$REPO" >"$WORK/wheel.log" 2>&1 || { cat "$WORK/wheel.log"; exit 1; }

# -- the systemd container --------------------------------------------------------
log "starting container $NAME"
docker run -d --name "$NAME" \
    --cap-add SYS_ADMIN --security-opt apparmor=unconfined --security-opt seccomp=unconfined \
    --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
    --device /dev/fuse --network host \
    -v "$WORK/wheels:/wheels:ro" \
    "$IMAGE" /usr/local/sbin/obsctl-container-init >/dev/null
for _ in $(seq 1 60); do
    state="$(docker exec "$NAME" systemctl is-system-running 2>/dev/null || true)"
    case "$state" in running|degraded) break ;; esac
    sleep 1
done
log "systemd in the container: $state"

# The unit template, rendered as the obsctl role will (ansible_managed + obsctl_bin).
python3 - "$REPO/templates" >"$WORK/obsctl-mount@.service" <<'PY'
import sys
import jinja2
env = jinja2.Environment(loader=jinja2.FileSystemLoader(sys.argv[1]), keep_trailing_newline=True, trim_blocks=True)
env.filters["comment"] = lambda text: "\n".join("# " + line for line in text.splitlines())
sys.stdout.write(env.get_template("obsctl-mount@.service.j2").render(ansible_managed="Ansible managed"))
PY

cat >"$WORK/inventory.ini" <<INV
[target]
$NAME ansible_connection=community.docker.docker ansible_python_interpreter=/usr/bin/python3
INV

# This repository as the collection; community.docker comes from the `ansible`
# package in $VENV (site-packages is always searched).
mkdir -p "$WORK/collections/ansible_collections/obsctl"
ln -s "$REPO" "$WORK/collections/ansible_collections/obsctl/observability"
export ANSIBLE_COLLECTIONS_PATH="$WORK/collections"
export ANSIBLE_HOST_KEY_CHECKING=false ANSIBLE_NOCOLOR=1 ANSIBLE_STDOUT_CALLBACK=default ANSIBLE_DIFF_ALWAYS=0

log "preparing the container (rclone, obsctl in /opt/obsctl, unit template)"
ansible-playbook -i "$WORK/inventory.ini" "$HERE/prepare.yml" \
    -e "unit_file=$WORK/obsctl-mount@.service" "$@"

log "running the tests"
ansible-playbook -i "$WORK/inventory.ini" "$HERE/tests.yml" \
    -e "s3_endpoint=$ENDPOINT" "$@"
log "PASSED"
