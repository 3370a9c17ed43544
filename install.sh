#!/usr/bin/env bash
# obsctl.observability installer: object-storage FUSE mounts with built-in
# OpenTelemetry on this host, through the collection's own roles
# (playbooks/localhost.yml), the same roles the fleet path runs.
#
#   sudo ./install.sh --mount s3://bucket /mnt/bucket
#   sudo ./install.sh --enable-telemetry --mount s3://bucket /mnt/bucket
#   sudo ./install.sh --dry-run ...        # what would change; changes nothing
#   sudo ./install.sh --uninstall
#   ./install.sh --help                    # every flag and exit code
#
# The whole script is the function main, called on the last line, which then
# exits: a truncated download defines nothing and runs nothing, and a file
# changed while it runs is never read again. See docs/install.md.

main() {
    set -euo pipefail
    umask 022

    local -r VERSION=0.1.0
    local -r INSTALLER_HOME=/opt/obsctl-installer
    # ansible 12 (ansible-core 2.19 + community.docker, ansible.posix); tomlkit
    # for the collection's TOML filters, which run in this (the controller's) Python.
    local -ra VENV_REQUIREMENTS=('ansible>=12,<13' 'tomlkit>=0.11.7,<0.16')
    local -r DEFAULT_LOG=/var/log/obsctl-install.log
    local -r OBSCTL_BIN=/opt/obsctl/bin/obsctl
    # rust-dkg-engine: its [telemetry.metrics] bind_address default
    # (src/config/defaults.rs, telemetry_default_metrics_bind_address) and its
    # unit (tools/installer/install.sh of github.com/zeroxbt/rust-dkg-engine).
    local -r NODE_PROFILE=rust-dkg-engine NODE_SERVICE=rust-dkg-engine.service DEFAULT_NODE_METRICS=127.0.0.1:9464
    # Exit codes (docs/install.md).
    local -r E_ANSIBLE=1 E_USAGE=2 E_ROOT=3 E_OS=4 E_SOURCES=5 E_ANSWER=6 E_DECLINED=7 E_BOOTSTRAP=8 E_IMAGES=9

    local -r invocation="$*"
    local here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

    # -- output ------------------------------------------------------------------
    local step_no=0
    say() { printf '%s\n' "$*"; }
    die() {
        local code="$1"
        shift
        printf 'install.sh: error: %s\n' "$*" >&2
        exit "$code"
    }
    step() {
        # step "label" "ok|changed|failed|skipped" ["detail"]
        step_no=$((step_no + 1))
        printf '%2d. %-50s %s%s\n' "$step_no" "$1" "$2" "${3:+ ($3)}"
    }
    usage() {
        cat <<EOF
Usage: sudo ./install.sh [FLAGS]

Installs FUSE, the drivers, obsctl (from this directory), the telemetry
configuration and the mounts on this host with playbooks/localhost.yml.

Telemetry:
  --observability none|remote|local  none (default), export to a collector
                                     (remote), or run the local stack (local)
  --enable-telemetry                 = --observability remote; asks for the
                                     endpoint and the service labels
  --otlp-endpoint URL                collector (http:// or https://); implies remote
  --otlp-protocol grpc|http/protobuf OTLP protocol (default grpc)
  --service-name NAME                service.name (default obsctl-mount)
  --resource-attribute K=V           resource attribute (repeatable)
Node (rust-dkg-engine; docs/node.md):
  --node-config PATH                 the node's config.toml (e.g.
                                     /etc/rust-dkg-engine/config.toml): turn its
                                     [telemetry.metrics] on (profile rust-dkg-engine);
                                     local: the stack's Prometheus scrapes it;
                                     remote: a collector agent scrapes it and
                                     exports to the OTLP endpoint
  --node-metrics-address HOST:PORT   the node's /metrics address, on loopback
                                     (default $DEFAULT_NODE_METRICS)
  --node-dashboards DIR              local mode: provision the node's own dashboards
                                     (its observability/grafana/dashboards) in Grafana
  --restart-node                     restart $NODE_SERVICE when its file changed
                                     (checked, the old file put back if it fails)
Containers (the local stack, or the agent of remote mode with --node-config):
  --stack-images FILE                docker save archive of the images
  --no-containers                    write their configuration only: no Docker,
                                     no image, no container, no unit
Mounts:
  --mount SRC PATH                   mount s3://BUCKET[/PREFIX] on PATH (repeatable)
  --impl rclone|s3fs                 driver of the mounts (default rclone)
  --endpoint URL                     S3-compatible endpoint (default AWS)
  --region REGION                    S3 region
  --no-credentials                   mount without access keys (instance role,
                                     public bucket)
  Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and
  AWS_SESSION_TOKEN) or are asked for on the terminal, never from a flag.
Run:
  --yes                              no prompts: a missing answer is an error
  --dry-run                          show what would change, change nothing
  --uninstall                        remove what the installer set up
  --version, --help

Exit codes: 0 done, $E_ANSIBLE the Ansible run failed (see the log),
$E_USAGE wrong or conflicting flag, $E_ROOT not root, $E_OS unsupported OS,
$E_SOURCES package sources unreachable, $E_ANSWER an answer is missing,
$E_DECLINED declined at the prompt, $E_BOOTSTRAP installer bootstrap failed,
$E_IMAGES local mode: the stack's images are not available.
EOF
    }

    # -- flags ---------------------------------------------------------------------
    local mode="" mode_flag="" enable_telemetry=0 otlp_endpoint="" otlp_protocol=""
    local service_name="" node_config="" stack_images="" impl="" endpoint="" region=""
    local node_metrics="" node_dashboards="" restart_node=0 no_containers=0
    local assume_yes=0 dry_run=0 uninstall=0 no_credentials=0
    local -a attributes=() mount_srcs=() mount_paths=()
    need_value() {
        # need_value FLAG COUNT ARGS...: FLAG needs COUNT values that are not flags.
        local flag="$1" count="$2"
        shift 2
        if [ "$#" -lt "$count" ]; then
            die "$E_USAGE" "$flag needs $count value(s); see --help"
        fi
        local v
        for v in "${@:1:$count}"; do
            case "$v" in
                --*) die "$E_USAGE" "$flag needs $count value(s), got the flag $v; see --help" ;;
            esac
        done
    }
    local -a args=()
    local a
    for a in "$@"; do
        case "$a" in
            --*=*) args+=("${a%%=*}" "${a#*=}") ;;
            *) args+=("$a") ;;
        esac
    done
    set -- ${args[@]+"${args[@]}"}
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --help | -h) usage; exit 0 ;;
            --version) say "obsctl installer $VERSION (collection obsctl.observability $(sed -n 's/^version: *//p' "$here/galaxy.yml"))"; exit 0 ;;
            --observability) need_value "$1" 1 "${@:2}"; mode="$2"; mode_flag="$1 $2"; shift 2 ;;
            --enable-telemetry) enable_telemetry=1; shift ;;
            --otlp-endpoint) need_value "$1" 1 "${@:2}"; otlp_endpoint="$2"; shift 2 ;;
            --otlp-protocol) need_value "$1" 1 "${@:2}"; otlp_protocol="$2"; shift 2 ;;
            --service-name) need_value "$1" 1 "${@:2}"; service_name="$2"; shift 2 ;;
            --resource-attribute) need_value "$1" 1 "${@:2}"; attributes+=("$2"); shift 2 ;;
            --node-config) need_value "$1" 1 "${@:2}"; node_config="$2"; shift 2 ;;
            --node-metrics-address) need_value "$1" 1 "${@:2}"; node_metrics="$2"; shift 2 ;;
            --node-dashboards) need_value "$1" 1 "${@:2}"; node_dashboards="$2"; shift 2 ;;
            --restart-node) restart_node=1; shift ;;
            --stack-images) need_value "$1" 1 "${@:2}"; stack_images="$2"; shift 2 ;;
            --no-containers) no_containers=1; shift ;;
            --mount) need_value "$1" 2 "${@:2}"; mount_srcs+=("$2"); mount_paths+=("$3"); shift 3 ;;
            --impl) need_value "$1" 1 "${@:2}"; impl="$2"; shift 2 ;;
            --endpoint) need_value "$1" 1 "${@:2}"; endpoint="$2"; shift 2 ;;
            --region) need_value "$1" 1 "${@:2}"; region="$2"; shift 2 ;;
            --no-credentials) no_credentials=1; shift ;;
            --yes | -y) assume_yes=1; shift ;;
            --dry-run) dry_run=1; shift ;;
            --uninstall) uninstall=1; shift ;;
            --access-key* | --secret* | --aws-*)
                die "$E_USAGE" "credentials are never taken from the command line (other users see it in ps); export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or answer the prompt" ;;
            *) die "$E_USAGE" "unknown argument: $1 (see --help)" ;;
        esac
    done

    # -- flag rules (before anything else) -------------------------------------------
    if [ "$enable_telemetry" = 1 ]; then
        if [ -n "$mode" ] && [ "$mode" != remote ]; then
            die "$E_USAGE" "--enable-telemetry means --observability remote; it conflicts with $mode_flag"
        fi
        mode=remote
    fi
    if [ -z "$mode" ] && [ -n "$otlp_endpoint" ]; then
        mode=remote
    fi
    if [ "$uninstall" = 1 ]; then
        if [ -n "$mode" ] || [ "${#mount_srcs[@]}" -gt 0 ] || [ -n "$node_config$node_metrics$node_dashboards$stack_images$impl$endpoint$region$otlp_protocol$service_name" ] \
            || [ "${#attributes[@]}" -gt 0 ] || [ "$no_credentials$restart_node$no_containers" != 000 ]; then
            die "$E_USAGE" "--uninstall takes no other flag than --yes and --dry-run"
        fi
    fi
    mode="${mode:-none}"
    case "$mode" in
        none | remote | local) ;;
        *) die "$E_USAGE" "--observability must be none, remote or local (got '$mode')" ;;
    esac
    if [ -n "$otlp_endpoint" ]; then
        [ "$mode" != none ] || die "$E_USAGE" "--otlp-endpoint conflicts with --observability none"
        [[ "$otlp_endpoint" =~ ^https?://[^/[:space:]]+ ]] || die "$E_USAGE" "--otlp-endpoint must be an http:// or https:// URL, e.g. http://otel.example:4317 (got '$otlp_endpoint')"
    fi
    case "$otlp_protocol" in
        "" | grpc | http/protobuf) ;;
        *) die "$E_USAGE" "--otlp-protocol must be grpc or http/protobuf (got '$otlp_protocol')" ;;
    esac
    if [ "$mode" = none ] && { [ -n "$otlp_protocol$service_name$node_config" ] || [ "${#attributes[@]}" -gt 0 ]; }; then
        die "$E_USAGE" "--otlp-protocol, --service-name, --resource-attribute and --node-config need telemetry: add --observability remote|local or --enable-telemetry"
    fi
    # Containers run in local mode (the stack) and in remote mode with a node (the agent).
    local containers=0
    if [ "$mode" = local ] || { [ "$mode" = remote ] && [ -n "$node_config" ]; }; then containers=1; fi
    if [ "$containers" = 0 ]; then
        [ -z "$stack_images" ] || die "$E_USAGE" "--stack-images is for --observability local, or remote with --node-config (the agent)"
        [ "$no_containers" = 0 ] || die "$E_USAGE" "--no-containers is for --observability local, or remote with --node-config (the agent)"
    fi
    if [ -z "$node_config" ] && { [ -n "$node_metrics$node_dashboards" ] || [ "$restart_node" = 1 ]; }; then
        die "$E_USAGE" "--node-metrics-address, --node-dashboards and --restart-node need --node-config PATH"
    fi
    node_metrics="${node_metrics:-$DEFAULT_NODE_METRICS}"
    # Loopback only: the stack or the agent on this host scrapes it, and the
    # node's /metrics is never exposed by the installer.
    [[ "$node_metrics" =~ ^(127\.[0-9]+\.[0-9]+\.[0-9]+|\[::1\]):[0-9]{1,5}$ ]] \
        || die "$E_USAGE" "--node-metrics-address must be a loopback IP:PORT (the node parses a socket address, not a host name), e.g. $DEFAULT_NODE_METRICS (got '$node_metrics')"
    if [ -n "$node_dashboards" ]; then
        [ "$mode" = local ] || die "$E_USAGE" "--node-dashboards is for --observability local (remote: import them into your own Grafana, docs/node.md)"
        if [[ "$node_dashboards" != /* ]] || [ ! -d "$node_dashboards" ]; then
            die "$E_USAGE" "--node-dashboards needs an existing absolute directory of dashboard JSON files (got '$node_dashboards')"
        fi
    fi
    for a in ${attributes[@]+"${attributes[@]}"}; do
        [[ "$a" =~ ^[A-Za-z_][A-Za-z0-9_.-]*=.+$ ]] || die "$E_USAGE" "--resource-attribute must be KEY=VALUE, e.g. deployment.environment=prod (got '$a')"
    done
    if [ -n "$service_name" ] && ! [[ "$service_name" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]]; then
        die "$E_USAGE" "--service-name: letters, digits, _ . - only (got '$service_name')"
    fi
    if [ -n "$node_config" ]; then
        [[ "$node_config" == /* ]] || die "$E_USAGE" "--node-config needs an absolute path (got '$node_config')"
        [ -f "$node_config" ] || die "$E_USAGE" "--node-config $node_config: no such file (it must be an existing application's TOML)"
        grep -q '^telemetry_config_node_config_path:' "$here/roles/telemetry_config/defaults/main.yml" 2>/dev/null \
            || die "$E_USAGE" "--node-config needs role telemetry_config with telemetry_config_node_config_path, which this copy of the collection does not have"
    fi
    if [ -n "$stack_images" ] && [ ! -f "$stack_images" ]; then
        die "$E_USAGE" "--stack-images $stack_images: no such file (a docker save archive)"
    fi
    if [ "${#mount_srcs[@]}" -eq 0 ] && [ -n "$impl$endpoint$region" ]; then
        die "$E_USAGE" "--impl, --endpoint and --region apply to mounts: add --mount SRC PATH"
    fi
    case "$impl" in
        "" | rclone | s3fs) ;;
        *) die "$E_USAGE" "--impl must be rclone or s3fs (got '$impl'); goofys, geesefs and mountpoint-s3 need the fuse_driver role's release files, see docs/drivers.md" ;;
    esac
    if [ -n "$endpoint" ] && ! [[ "$endpoint" =~ ^https?://[^/[:space:]]+ ]]; then
        die "$E_USAGE" "--endpoint must be an http:// or https:// URL (got '$endpoint')"
    fi
    if [ -n "$region" ] && ! [[ "$region" =~ ^[a-z0-9-]+$ ]]; then
        die "$E_USAGE" "--region: lower-case letters, digits and - only (got '$region')"
    fi
    local -a mount_names=()
    local i name
    for i in "${!mount_srcs[@]}"; do
        [[ "${mount_srcs[$i]}" =~ ^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$ ]] \
            || die "$E_USAGE" "--mount: source must be s3://BUCKET[/PREFIX] with a valid bucket name (got '${mount_srcs[$i]}')"
        if ! [[ "${mount_paths[$i]}" == /?* ]] || [ "${mount_paths[$i]}" = / ]; then die "$E_USAGE" "--mount: mountpoint must be an absolute path other than / (got '${mount_paths[$i]}')"
        fi
        name="$(basename "${mount_paths[$i]}")"
        name="${name//[^A-Za-z0-9_.-]/-}"
        name="${name#[._-]}"
        [ -n "$name" ] || die "$E_USAGE" "--mount: cannot name a mount after '${mount_paths[$i]}'"
        local n
        for n in ${mount_names[@]+"${mount_names[@]}"}; do
            [ "$n" != "$name" ] || die "$E_USAGE" "--mount: two mountpoints end in '$name'; each mount is named after the last part of its path"
        done
        mount_names+=("${name:0:64}")
    done
    if [ "$no_credentials" = 1 ] && [ "${#mount_srcs[@]}" -eq 0 ]; then
        die "$E_USAGE" "--no-credentials applies to mounts: add --mount SRC PATH"
    fi

    # -- root, OS --------------------------------------------------------------------
    [ "$(id -u)" = 0 ] || die "$E_ROOT" "run as root: sudo $0 $invocation"
    # The platforms are meta/platforms.yml (one list with the roles' meta and
    # the docs): "ID VERSION STATUS NOTE" per entry, read with awk (the file
    # keeps one "key: value" per line; tests/integration/test_installer.py
    # runs this check against every entry).
    local os_release="${OBSCTL_INSTALL_OS_RELEASE:-/etc/os-release}"
    local os_id="" os_version="" p_id p_version p_status p_note os_status="" os_note="" accepted=""
    if [ -r "$os_release" ]; then
        os_id="$(sed -n 's/^ID=//p' "$os_release" | tr -d '"')"
        os_version="$(sed -n 's/^VERSION_ID=//p' "$os_release" | tr -d '"')"
    fi
    [ -r "$here/meta/platforms.yml" ] || die "$E_OS" "$here/meta/platforms.yml is missing: run install.sh from a complete checkout or collection"
    while IFS=$'\t' read -r p_id p_version p_status p_note; do
        [ "$p_status" = refused ] || accepted="${accepted:+$accepted, }$p_id $p_version"
        if [ "$p_id:$p_version" = "$os_id:$os_version" ]; then os_status="$p_status" os_note="$p_note"; fi
    done < <(awk '
        function val(line) { sub(/^[^:]*:[ ]*/, "", line); gsub(/^"|"$/, "", line); return line }
        function flush() { if (id != "") printf "%s\t%s\t%s\t%s\n", id, version, status, note; id = version = status = note = "" }
        /^  - name:/ { flush() }
        /^    id:/ { id = val($0) }
        /^    version:/ { version = val($0) }
        /^    status:/ { status = val($0) }
        /^    note:/ { note = val($0) }
        END { flush() }' "$here/meta/platforms.yml")
    case "$os_status" in
        tested) ;;
        untested) say "note: ${os_id} ${os_version} is accepted but untested: ${os_note}" ;;
        refused) die "$E_OS" "unsupported OS '${os_id} ${os_version}' (from $os_release): ${os_note}; supported: ${accepted}" ;;
        *) die "$E_OS" "unsupported OS '${os_id:-?} ${os_version:-?}' (from $os_release): supported: ${accepted}" ;;
    esac
    local has_systemd=0
    if [ -d /run/systemd/system ]; then has_systemd=1; fi

    # -- answers (never wait without a terminal) ------------------------------------------
    local tty=0
    if [ -t 0 ] && [ "$assume_yes" = 0 ]; then tty=1; fi
    missing() {
        # missing WHAT HOW: stop when the answer cannot be asked for.
        if [ "$assume_yes" = 1 ]; then
            die "$E_ANSWER" "missing answer with --yes: $1; $2"
        fi
        die "$E_ANSWER" "missing answer (no terminal to ask on): $1; $2"
    }
    ask() {
        # ask VAR PROMPT [DEFAULT]: read one line from the terminal into VAR.
        local __answer
        read -r -p "$2${3:+ [$3]}: " __answer || __answer=""
        printf -v "$1" '%s' "${__answer:-${3:-}}"
    }
    if [ "$uninstall" = 0 ] && [ "$mode" = remote ]; then
        if [ -z "$otlp_endpoint" ]; then
            [ "$tty" = 1 ] || missing "the OTLP endpoint" "pass --otlp-endpoint URL"
            ask otlp_endpoint "OTLP endpoint of your collector (http:// or https:// URL)"
            [[ "$otlp_endpoint" =~ ^https?://[^/[:space:]]+ ]] || die "$E_USAGE" "the OTLP endpoint must be an http:// or https:// URL (got '$otlp_endpoint')"
        fi
        if [ "$enable_telemetry" = 1 ] && [ "$tty" = 1 ]; then
            if [ -z "$service_name" ]; then
                ask service_name "service.name of the mounts" obsctl-mount
                [[ "$service_name" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "$E_USAGE" "service name: letters, digits, _ . - only (got '$service_name')"
            fi
            if [ "${#attributes[@]}" -eq 0 ]; then
                local attr_line="" attr
                ask attr_line "resource attributes, KEY=VALUE separated by spaces (e.g. deployment.environment=prod; empty: none)"
                for attr in $attr_line; do
                    [[ "$attr" =~ ^[A-Za-z_][A-Za-z0-9_.-]*=.+$ ]] || die "$E_USAGE" "resource attribute must be KEY=VALUE (got '$attr')"
                    attributes+=("$attr")
                done
            fi
        fi
    fi
    local with_credentials=0
    if [ "$uninstall" = 0 ] && [ "${#mount_srcs[@]}" -gt 0 ] && [ "$no_credentials" = 0 ]; then
        if [ -z "${AWS_ACCESS_KEY_ID:-}" ] || [ -z "${AWS_SECRET_ACCESS_KEY:-}" ]; then
            [ "$tty" = 1 ] || missing "the S3 credentials of the mounts" "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --no-credentials"
            local key_id="" secret=""
            read -r -s -p "AWS access key id (not echoed): " key_id || key_id=""
            printf '\n'
            read -r -s -p "AWS secret access key (not echoed): " secret || secret=""
            printf '\n'
            { [ -n "$key_id" ] && [ -n "$secret" ]; } || die "$E_ANSWER" "empty credentials; answer both, or pass --no-credentials"
            export AWS_ACCESS_KEY_ID="$key_id" AWS_SECRET_ACCESS_KEY="$secret"
            unset key_id secret
        fi
        with_credentials=1
    fi
    if [ "$uninstall" = 0 ] && [ "$mode" = remote ] && [ -n "$node_config" ]; then
        say "The node's metrics are pulled (/metrics on $node_metrics): an OpenTelemetry Collector agent"
        say "(role observability_stack, observability_stack_mode agent; the pinned collector image, one"
        say "Docker container, listeners on 127.0.0.1 only) scrapes it and exports OTLP to $otlp_endpoint."
    fi
    if [ "$uninstall" = 0 ] && [ "$mode" = local ]; then
        say "Local mode installs the observability stack on this host (role observability_stack):"
        say "  - OpenTelemetry Collector, Prometheus, Tempo and Grafana as Docker containers at the"
        say "    role's pinned image versions (roles/observability_stack/defaults/main.yml), loaded"
        say "    from ${stack_images:-the images already present in Docker} (no registry is contacted);"
        say "  - every listener on 127.0.0.1 only: OTLP in on 127.0.0.1:4317 (gRPC) and :4318 (HTTP),"
        say "    Grafana reachable through an SSH tunnel; nothing is exposed to the network;"
        say "  - cost: the four images on disk plus their data volumes, and the memory of four"
        say "    long-running services (figures: the observability_stack role's documentation)."
        if [ "$assume_yes" = 0 ]; then
            [ "$tty" = 1 ] || missing "confirmation of the local stack" "pass --yes to accept"
            local yn=""
            ask yn "Install the local stack? (yes/no)" no
            case "$yn" in
                y | Y | yes | YES | Yes) ;;
                *) die "$E_DECLINED" "local stack declined; nothing was changed" ;;
            esac
        fi
    fi

    # -- package sources ------------------------------------------------------------------
    say "obsctl installer $VERSION$([ "$dry_run" = 1 ] && echo ': dry run (changes nothing)')$([ "$uninstall" = 1 ] && echo ': uninstall')"
    local run
    run="$(mktemp -d /tmp/obsctl-install.XXXXXX)"
    # shellcheck disable=SC2064 # expand now: the path is fixed
    trap "rm -rf '$run'" EXIT
    local venv="$INSTALLER_HOME/venv"
    local venv_ready=0
    if [ -x "$venv/bin/ansible-playbook" ] && [ "$(cat "$venv/.obsctl-requirement" 2>/dev/null)" = "${VENV_REQUIREMENTS[*]}" ]; then
        venv_ready=1
    fi
    if [ "$venv_ready" = 0 ] || [ "$uninstall" = 0 ]; then
        local pypi="${PIP_INDEX_URL:-https://pypi.org/simple}"
        local apt_uri
        # The first archive of apt's sources (one-line or deb822 format).
        apt_uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | sed -n -e 's/^deb \(\[[^]]*\] \)\{0,1\}\([a-z+]*:\/\/[^ ]*\).*/\2/p' -e 's/^URIs: *\([^ ]*\).*/\1/p' | head -1 || true)"
        local unreachable
        if ! unreachable="$(python3 - "${pypi%/}/ansible-core/" "${apt_uri:+${apt_uri%/}/}" <<'PY' 2>&1
import sys
import urllib.request

bad = []
for url in sys.argv[1:]:
    if not url:
        continue
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15) as reply:
            reply.read(0)
    except Exception as exc:  # any failure means the source cannot be used
        bad.append(f"{url} ({exc})")
print("; ".join(bad))
sys.exit(1 if bad else 0)
PY
)"; then
            step "package sources (PyPI, apt)" failed
            die "$E_SOURCES" "cannot reach the package sources: $unreachable. Check the network, a proxy (https_proxy) or PIP_INDEX_URL; nothing was changed"
        fi
        step "checks: root, $os_id $os_version, package sources" ok
    else
        step "checks: root, $os_id $os_version" ok
    fi

    local log
    if [ "$dry_run" = 1 ] || [ "$uninstall" = 1 ]; then
        log="$(mktemp "/tmp/obsctl-install-$([ "$uninstall" = 1 ] && echo uninstall || echo dry-run).XXXXXX.log")"
    else
        log="${OBSCTL_INSTALL_LOG:-$DEFAULT_LOG}"
        : >"$log"
        chmod 0600 "$log"
    fi
    say "    full log in $log"

    # -- bootstrap: ansible in its own venv --------------------------------------------------
    if [ "$dry_run" = 1 ]; then
        # A dry run writes nothing outside its temporary directory: no venv
        # left behind, no ~/.ansible, not even apt's planner log of a
        # simulated install (Dir::Log::Planner).
        if [ "$venv_ready" = 0 ]; then
            venv="$run/venv"
            export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$run/pip-cache}"
        fi
        export HOME="$run/home"
        mkdir -p "$HOME"
        printf 'Dir::Log::Planner "%s";\n' "$run/eipp.log.xz" >"$run/apt.conf"
        export APT_CONFIG="$run/apt.conf"
    fi
    if [ "$venv_ready" = 1 ] && [ "$venv" = "$INSTALLER_HOME/venv" ]; then
        step "installer venv ($venv)" ok
    else
        if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
            if [ "$dry_run" = 1 ]; then
                die "$E_BOOTSTRAP" "python3-venv is not installed; a dry run installs nothing: apt-get install python3-venv, then run again"
            fi
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >>"$log" 2>&1 \
                || die "$E_BOOTSTRAP" "apt-get install python3-venv failed; see $log"
        fi
        mkdir -p "$(dirname "$venv")"
        { python3 -m venv "$venv" && "$venv/bin/pip" install -q "${VENV_REQUIREMENTS[@]}"; } >>"$log" 2>&1 \
            || { step "installer venv ($venv)" failed; die "$E_BOOTSTRAP" "could not install ${VENV_REQUIREMENTS[*]} into $venv; see $log"; }
        printf '%s\n' "${VENV_REQUIREMENTS[*]}" >"$venv/.obsctl-requirement"
        step "installer venv ($venv)" changed "ansible-core $("$venv/bin/python" -c 'from ansible.release import __version__; print(__version__)')"
    fi

    # -- obsctl from this directory -------------------------------------------------------------
    local wheel=""
    if [ "$uninstall" = 0 ]; then
        local src="$run/obsctl-src"
        mkdir -p "$src"
        tar -C "$here" --exclude=__pycache__ --exclude='*.egg-info' --exclude=build -chf - \
            pyproject.toml README.md src templates plugins/module_utils | tar -C "$src" -xf -
        local digest
        digest="$(cd "$src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
        local wheel_dir="$INSTALLER_HOME/wheels/$digest"
        [ "$dry_run" = 0 ] || wheel_dir="$run/wheels/$digest"
        wheel="$(find "$wheel_dir" -name 'obsctl-*.whl' 2>/dev/null | head -1 || true)"
        if [ -n "$wheel" ]; then
            step "obsctl package from $here" ok "$(basename "$wheel")"
        else
            rm -rf "$INSTALLER_HOME/wheels"
            mkdir -p "$wheel_dir"
            "$venv/bin/pip" wheel -q --no-deps -w "$wheel_dir" "$src" >>"$log" 2>&1 \
                || { step "obsctl package from $here" failed; die "$E_BOOTSTRAP" "could not build the obsctl wheel; see $log"; }
            wheel="$(find "$wheel_dir" -name 'obsctl-*.whl' | head -1)"
            step "obsctl package from $here" changed "$(basename "$wheel")"
        fi
    fi

    # -- the collection from this directory, the variables ---------------------------------------
    mkdir -p "$run/collections/ansible_collections/obsctl"
    ln -s "$here" "$run/collections/ansible_collections/obsctl/observability"
    local vars="$run/vars.json"
    local -a var_args=(
        "mode=$mode" "dry_run=$dry_run" "wheel=$wheel" "otlp_endpoint=$otlp_endpoint"
        "otlp_protocol=$otlp_protocol" "service_name=$service_name" "node_config=$node_config"
        "stack_images=$stack_images" "node_metrics=$node_metrics" "node_dashboards=$node_dashboards"
        "restart_node=$restart_node" "no_containers=$no_containers" "node_profile=$NODE_PROFILE" "node_service=$NODE_SERVICE"
        "impl=$impl" "endpoint=$endpoint" "region=$region"
        "credentials=$with_credentials" "session_token=$([ -n "${AWS_SESSION_TOKEN:-}" ] && echo 1 || echo 0)"
        "systemd=$has_systemd" "state_file=$INSTALLER_HOME/state.json" "installer_home=$INSTALLER_HOME" "tmp=$run/ansible/tmp"
    )
    for a in ${attributes[@]+"${attributes[@]}"}; do var_args+=("attribute=$a"); done
    for i in "${!mount_srcs[@]}"; do var_args+=("mount=${mount_names[$i]} ${mount_srcs[$i]} ${mount_paths[$i]}"); done
    python3 - "$vars" "${var_args[@]}" <<'PY'
"""Write the playbook's extra variables (JSON; no secret: credentials are
references to the environment, resolved inside Ansible)."""
import json
import os
import sys

out, pairs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
one = {k: v for k, v in pairs if k not in ("attribute", "mount")}
env = "{{{{ lookup('ansible.builtin.env', '{}') }}}}".format
data = {
    "ansible_python_interpreter": "/usr/bin/python3",
    # Already root (install.sh checked): no sudo, and the modules' temporary
    # files in the installer's temporary directory, not in ~root/.ansible.
    "ansible_become": False,
    "ansible_remote_tmp": one["tmp"],
    "telemetry_config_mode": one["mode"],
    "localhost_installer_state_file": one["state_file"],
    "localhost_installer_home": one["installer_home"],
    "localhost_systemd": one["systemd"] == "1",
}
if one["wheel"]:
    data["obsctl_package_file"] = one["wheel"]
if one["otlp_endpoint"]:
    data["telemetry_config_otlp_endpoint"] = one["otlp_endpoint"]
if one["otlp_protocol"]:
    data["telemetry_config_otlp_protocol"] = one["otlp_protocol"]
if one["service_name"]:
    data["telemetry_config_service_name"] = one["service_name"]
attrs = dict(a.split("=", 1) for k, a in pairs if k == "attribute")
if attrs:
    data["telemetry_config_resource_attributes"] = attrs
if one["node_config"]:
    # The node's file through its application profile (role telemetry_config);
    # its /metrics address scraped by the stack (local) or the agent (remote).
    data["telemetry_config_node_config_path"] = one["node_config"]
    data["telemetry_config_node_profile"] = one["node_profile"]
    data["telemetry_config_node_metrics_enabled"] = True
    data["telemetry_config_node_metrics_bind_address"] = one["node_metrics"]
    if one["restart_node"] == "1":
        data["telemetry_config_node_restart"] = True
        data["telemetry_config_node_service"] = one["node_service"]
    data["observability_stack_node_scrape_targets"] = [one["node_metrics"]]
    if one["mode"] == "remote":
        data["observability_stack_mode"] = "agent"
if one["node_dashboards"]:
    data["observability_stack_extra_dashboard_dirs"] = [
        {"name": one["node_profile"], "src": one["node_dashboards"], "folder": one["node_profile"]}]
if one["stack_images"]:
    data["observability_stack_images_archive"] = one["stack_images"]
if one["no_containers"] == "1":
    data["observability_stack_deploy"] = False
mounts = []
for k, m in pairs:
    if k != "mount":
        continue
    name, src, path = m.split(" ", 2)
    entry = {"name": name, "src": src, "path": path}
    for key in ("impl", "endpoint", "region"):
        if one[key]:
            entry[key] = one[key]
    if one["credentials"] == "1":
        entry["credentials"] = {
            "access_key_id": env("AWS_ACCESS_KEY_ID"),
            "secret_access_key": env("AWS_SECRET_ACCESS_KEY"),
        }
        if one["session_token"] == "1":
            entry["credentials"]["session_token"] = env("AWS_SESSION_TOKEN")
    mounts.append(entry)
if mounts:
    data["fuse_mounts_list"] = mounts
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2)
PY

    # -- run the playbook: one line per role, the whole log to the file ----------------------------
    local playbook="$here/playbooks/localhost.yml"
    [ "$uninstall" = 0 ] || playbook="$here/playbooks/localhost_uninstall.yml"
    local -a ansible_args=(-i "localhost," -e "@$vars" "$playbook")
    [ "$dry_run" = 0 ] || ansible_args+=(--check --diff)
    local summary="$run/summary.json"
    # An empty configuration: an ansible.cfg in the current directory or
    # ~/.ansible.cfg of the operator does not change what the installer does.
    : >"$run/ansible.cfg"
    mkdir -p "$run/home"
    local filter
    filter="$(cat <<'PY'
"""Read ansible-playbook's output (default callback): copy every line to the
log, print one line per role with ok / changed / failed, and write a summary."""
import json
import re
import sys

log_path, first, dry, summary_path = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
listing, own_label, stack_label = sys.argv[5], sys.argv[6], sys.argv[7]
LABELS = {
    "fuse_driver": "FUSE and the drivers (fuse_driver)",
    "obsctl": "obsctl and its units (obsctl)",
    "telemetry_config": "telemetry configuration (telemetry_config)",
    "fuse_mounts": "mounts (fuse_mounts)",
    "observability_stack": stack_label,
    "": own_label,
}
TASK = re.compile(r"^(TASK|RUNNING HANDLER) \[(?:(?P<role>[\w.]+) : )?(?P<task>.*?)\] \**$")
RESULT = re.compile(r"^(?P<status>ok|changed|skipping|fatal|failed): \[[^\]]*\](?P<rest>.*)$")
state = {"step": first, "group": None, "counts": {}, "would": [], "task": "",
         "changed_total": 0, "failed": False, "messages": []}
pending = None  # (task, text) of a failure whose JSON spans lines


def flush():
    group = state["group"]
    if group is None:
        return
    c = state["counts"]
    if not c or (group == "" and not (c.get("changed") or c.get("failed"))):
        # include_role lines, facts: nothing to report
        state["group"], state["counts"], state["would"] = None, {}, []
        return
    if c.get("failed"):
        status = "failed"
    elif c.get("changed"):
        status = ("would change" if dry else "changed") + f" ({c['changed']})"
    elif c.get("ok"):
        status = "ok"
    else:
        status = "skipped"
    print(f"{state['step']:2d}. {LABELS.get(group, group):<50} {status}", flush=True)
    if listing:
        for task in state["would"]:
            print(f"      {listing}: {task}", flush=True)
    state["step"] += 1
    state["group"], state["counts"], state["would"] = None, {}, []


def failure(text):
    try:
        result = json.loads(text)
    except ValueError:
        return None
    msg = result.get("msg") or result.get("stderr") or result.get("reason") or "failed"
    state["messages"].append(f"{state['task']}: {str(msg).strip()}")
    return True


with open(log_path, "a", encoding="utf-8") as log:
    for raw in sys.stdin:
        log.write(raw)
        log.flush()
        line = raw.rstrip("\n")
        if pending is not None:
            pending += "\n" + line
            if failure(pending) or pending.count("\n") > 400:
                pending = None
            continue
        m = TASK.match(line)
        if m:
            role = (m.group("role") or "").rsplit(".", 1)[-1]
            if role != state["group"]:
                flush()
                state["group"] = role
            state["task"] = m.group("task")
            continue
        if line.startswith("PLAY RECAP"):
            flush()
            continue
        if line.startswith("...ignoring") and state["counts"].get("failed"):
            state["counts"]["failed"] -= 1
            state["messages"].pop() if state["messages"] else None
            continue
        r = RESULT.match(line)
        if not r or state["group"] is None:
            continue
        status = r.group("status")
        key = {"fatal": "failed", "skipping": "skipped"}.get(status, status)
        state["counts"][key] = state["counts"].get(key, 0) + 1
        if key == "changed":
            state["changed_total"] += 1
            item = re.search(r"\(item=(.*)\)", r.group("rest"))
            state["would"].append(state["task"] + (f" [{item.group(1)}]" if item else ""))
        if key == "failed":
            state["failed"] = True
            text = r.group("rest").split("=> ", 1)[-1] if "=> " in r.group("rest") else "{}"
            if not failure(text):
                pending = text
    flush()
with open(summary_path, "w", encoding="utf-8") as f:
    json.dump({"next_step": state["step"], "changed": state["changed_total"],
               "failed": state["failed"], "messages": state["messages"]}, f)
PY
)"
    # Under each step: the changed tasks of a dry run, what an uninstall removed.
    local listing="" own_label="installer record (localhost.yml)"
    local stack_label="local observability stack (observability_stack)"
    if [ "$mode" = remote ]; then stack_label="collector agent for the node (observability_stack)"; fi
    if [ "$uninstall" = 1 ]; then stack_label="observability stack or agent (observability_stack)"; fi
    if [ "$dry_run" = 1 ]; then listing="would change"; fi
    if [ "$uninstall" = 1 ]; then
        own_label="files and units (localhost_uninstall.yml)"
        [ "$dry_run" = 1 ] || listing="removed"
    fi
    local rc=0
    {
        printf '=== ansible-playbook %s (%s)\n' "${ansible_args[*]}" "$(date -u +%FT%TZ)"
        ANSIBLE_COLLECTIONS_PATH="$run/collections" \
            HOME="$run/home" ANSIBLE_HOME="$run/ansible" ANSIBLE_LOCAL_TEMP="$run/ansible/tmp" ANSIBLE_REMOTE_TEMP="$run/ansible/tmp" \
            ANSIBLE_PIPELINING=1 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_RETRY_FILES_ENABLED=0 \
            ANSIBLE_STDOUT_CALLBACK=ansible.builtin.default ANSIBLE_DISPLAY_SKIPPED_HOSTS=1 \
            ANSIBLE_LOCALHOST_WARNING=0 ANSIBLE_INVENTORY_UNPARSED_WARNING=0 ANSIBLE_DEPRECATION_WARNINGS=0 \
            ANSIBLE_CONFIG="$run/ansible.cfg" \
            "$venv/bin/ansible-playbook" "${ansible_args[@]}" 2>&1 </dev/null || echo "$?" >"$run/ansible.rc"
    } | "$venv/bin/python" -c "$filter" "$log" "$((step_no + 1))" "$dry_run" "$summary" \
        "$listing" "$own_label" "$stack_label" || rc=$?
    if [ -s "$run/ansible.rc" ]; then rc="$(cat "$run/ansible.rc")"; fi
    step_no=$(($("$venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["next_step"])' "$summary") - 1))
    local changed
    changed="$("$venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["changed"])' "$summary")"
    if [ "$rc" != 0 ]; then
        local messages
        messages="$("$venv/bin/python" -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["messages"]))' "$summary")"
        printf '%s\n' "${messages:-ansible-playbook exited with $rc}" | sed 's/^/   failed: /' >&2
        if [[ "$messages" == *"observability_stack: images not available:"* ]]; then
            die "$E_IMAGES" "the $([ "$mode" = remote ] && echo "agent's collector image is" || echo "local stack's images are") not loaded: pass --stack-images FILE (a docker save archive of the images named above), or --no-containers to write the configuration only; full log: $log"
        fi
        die "$E_ANSIBLE" "the Ansible run failed; full log: $log"
    fi

    # -- the end -------------------------------------------------------------------------------------
    if [ "$uninstall" = 1 ]; then
        if [ "$dry_run" = 0 ]; then
            rm -rf "$INSTALLER_HOME"
            rm -f "$DEFAULT_LOG"
            step "installer files ($INSTALLER_HOME, $DEFAULT_LOG)" changed "removed"
            say "Removed: the mounts' units, specs and credentials, /etc/obsctl, /opt/obsctl, the installer."
            say "Kept: bucket data, the distribution packages (fuse3 rclone s3fs python3-venv python3-pip), the log $log."
        fi
        return 0
    fi
    if [ "$dry_run" = 1 ]; then
        if [ "$changed" = 0 ]; then
            say "Dry run: nothing would change."
        else
            say "Dry run: $changed task(s) would change (diffs in $log); nothing was changed."
        fi
        return 0
    fi
    if [ -x "$OBSCTL_BIN" ]; then
        local status_out
        if status_out="$("$OBSCTL_BIN" status 2>&1)"; then
            step "obsctl status" ok
        else
            step "obsctl status" failed
        fi
        printf '%s\n' "$status_out" | sed 's/^/    /'
    fi
    if [ "$has_systemd" = 0 ] && [ "${#mount_srcs[@]}" -gt 0 ]; then
        say "No systemd on this host: the mounts run under 'obsctl mount' in the background and will NOT survive a reboot (run ./install.sh again after one)."
    fi
    if [ "$no_containers" = 1 ]; then
        say "No containers (--no-containers): the $([ "$mode" = remote ] && echo agent || echo stack)'s configuration is in /etc/obsctl/observability-stack; nothing runs it yet."
    elif [ "$mode" = local ]; then
        say "Grafana: see the observability_stack role's last lines in $log for its address (reach it with ssh -L) and the password file."
    fi
    if [ "$changed" = 0 ]; then
        say "No change: this host was already as asked."
    else
        say "Done: $changed change(s). Full log: $log"
    fi
}

main "$@"; exit
