#!/usr/bin/env bash
# Shared by scripts/up, scripts/down and scripts/test: source it, do not run it.
#
# Everything runs on 127.0.0.1 with fixed ports, without Docker, as root (or with sudo).
# Runtime state lives in .run/ at the repository root (gitignored):
#   .run/logs/*.log   logs of every process started here
#   .run/pids/*.pid   their pids
#   .run/env          export lines to `source` (written by scripts/up)
#   .run/pg           PostgreSQL cluster (owned by user postgres; data/ and sock/)
#   .run/rabbitmq     RabbitMQ node (config, mnesia, Erlang cookie)
#   .run/tansu        Tansu (Kafka protocol) broker, SQLite storage
# See docs/INFRA.md for why things are started the way they are.
# shellcheck shell=bash disable=SC2034 # variables used by the scripts that source this file

set -euo pipefail

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$SCRIPTS_DIR")"
RUN_DIR="$ROOT/.run"
LOG_DIR="$RUN_DIR/logs"
PID_DIR="$RUN_DIR/pids"
ENV_FILE="$RUN_DIR/env"

HOST=127.0.0.1
PG_PORT=54320
PG_DB=wallet
PG_USER=postgres
PG_MAJOR="${PG_MAJOR:-15}"
RABBIT_PORT=5672
RABBIT_MGMT_PORT=15672
RABBIT_PROM_PORT=15692
RABBIT_DIST_PORT=25672
KAFKA_PORT=9092
WALLET_PORT=8080
PROCESSOR_PORT=8081
GATEWAY_PORT=8090
# The local identity provider (JWKS and tokens), unless sign-in is configured otherwise.
IDP_PORT=8070
IDP_URL_LOCAL="http://$HOST:$IDP_PORT"
IDP_DIR="$RUN_DIR/idp"
# Each service serves /metrics on a listener of its own, never on its public port.
WALLET_METRICS_PORT=9180
PROCESSOR_METRICS_PORT=9181
GATEWAY_METRICS_PORT=9190

TANSU_VERSION=0.6.0
RABBIT_DIR="$RUN_DIR/rabbitmq"
RABBIT_BIN=/usr/lib/rabbitmq/bin
TANSU_DIR="$RUN_DIR/tansu"

# Start order; scripts/down stops them in reverse. local-idp runs only when the stack signs
# in with it (the default; see scripts/up).
SERVICES=(local-idp mock-gateway processor-service wallet-service)

# The highly available topology (scripts/up --ha, docs/OPERATIONS.md): PostgreSQL primary and
# synchronous standby under pg_auto_failover, a three-node RabbitMQ cluster, two instances of
# each service, HAProxy in front of the wallet API on WALLET_PORT. scripts/up --ha writes the
# mode into .run/mode; every script reads it from there.
MODE_FILE="$RUN_DIR/mode"
HA_PG_MONITOR_PORT=54330
HA_PG_PORTS=(54331 54332)
HA_RABBIT_PORTS=(5681 5682 5683)
HA_WALLET_PORTS=(8082 8084)
HA_PROCESSOR_PORTS=(8081 8083)
HA_WALLET_METRICS_PORTS=(9180 9182)
HA_PROCESSOR_METRICS_PORTS=(9181 9183)
HAPROXY_METRICS_PORT=9186

# use_mode MODE: the topology the scripts act on (default or ha), and its services.
use_mode() {
    STACK_MODE=$1
    if [[ $STACK_MODE == ha ]]; then
        SERVICES=(local-idp mock-gateway processor-service processor-service-2 wallet-service wallet-service-2)
    fi
}
use_mode "$(cat "$MODE_FILE" 2>/dev/null || echo default)"

export DEBIAN_FRONTEND=noninteractive
# rustup installs cargo (and cargo install puts tansu) here; non-login shells (CI) often
# lack it on PATH. Appended, so an explicit PATH still wins.
CARGO_BIN_DIR="${CARGO_HOME:-$HOME/.cargo}/bin"
if [[ -d "$CARGO_BIN_DIR" && ":$PATH:" != *":$CARGO_BIN_DIR:"* ]]; then
    PATH="$PATH:$CARGO_BIN_DIR"
fi
export PATH

# ---------------------------------------------------------------- messages

LOG_PREFIX="${LOG_PREFIX:-$(basename "$0")}"
if [[ -t 1 && "${CI:-}" != "true" && -z "${NO_COLOR:-}" ]]; then
    C_BOLD=$'\e[1m' C_RED=$'\e[31m' C_GREEN=$'\e[32m' C_YELLOW=$'\e[33m' C_RESET=$'\e[0m'
else
    C_BOLD='' C_RED='' C_GREEN='' C_YELLOW='' C_RESET=''
fi
if [[ "${CI:-}" == "true" ]]; then
    export CARGO_TERM_COLOR=never
fi

info() { printf '[%s] %s\n' "$LOG_PREFIX" "$*"; }
ok() { printf '[%s] %s%s%s\n' "$LOG_PREFIX" "$C_GREEN" "$*" "$C_RESET"; }
heading() { printf '[%s] %s%s%s\n' "$LOG_PREFIX" "$C_BOLD" "$*" "$C_RESET"; }
warn() { printf '[%s] %sWARNING: %s%s\n' "$LOG_PREFIX" "$C_YELLOW" "$*" "$C_RESET" >&2; }
err() { printf '[%s] %sERROR: %s%s\n' "$LOG_PREFIX" "$C_RED" "$*" "$C_RESET" >&2; }
die() {
    err "$*"
    exit 1
}

# show_log_tail FILE [LINES]: the end of a log, indented, on stderr.
show_log_tail() {
    local file=$1 lines=${2:-${LOG_TAIL_LINES:-40}}
    if [[ -s "$file" ]]; then
        printf '[%s] ---- last %s lines of %s ----\n' "$LOG_PREFIX" "$lines" "$file" >&2
        tail -n "$lines" "$file" | sed 's/^/    | /' >&2
        printf '[%s] ---- end of %s ----\n' "$LOG_PREFIX" "$file" >&2
    else
        printf '[%s] (log %s is empty or missing)\n' "$LOG_PREFIX" "$file" >&2
    fi
}

now() { date +%s; }
# since START: "12s" or "3m04s"
since() {
    local s=$(($(now) - $1))
    if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# ---------------------------------------------------------------- privileges

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"; else sudo -- "$@"; fi
}

as_postgres() {
    if [[ "$(id -un)" == postgres ]]; then
        "$@"
    elif [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        sudo -u postgres -- "$@"
    fi
}

# ---------------------------------------------------------------- processes

ensure_run_dirs() {
    mkdir -p "$RUN_DIR" "$LOG_DIR" "$PID_DIR"
    chmod 755 "$RUN_DIR" "$LOG_DIR" # the postgres user must reach its cluster and log
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
    local pid=$1 stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ "${stat%% *}" != Z ]]
}

# live_pid NAME [PATTERN]: print the pid in .run/pids/NAME.pid if that process is alive
# (and its command line contains PATTERN, default NAME, to survive pid reuse).
live_pid() {
    local name=$1 pattern=${2:-$1} file="$PID_DIR/$1.pid" pid cmdline
    [[ -s "$file" ]] || return 1
    pid=$(head -n 1 "$file")
    pid_alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmdline" == *"$pattern"* ]] || return 1
    printf '%s\n' "$pid"
}

# spawn NAME WORKDIR LOG CMD...: start CMD in the background in its own session, stdout
# and stderr appended to LOG, pid written to .run/pids/NAME.pid and to SPAWNED_PID.
SPAWNED_PID=
spawn() {
    local name=$1 dir=$2 log=$3 pidfile="$PID_DIR/$1.pid" i
    shift 3
    rm -f "$pidfile"
    printf '\n===== %s: starting: %s =====\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*" >>"$log"
    # The inner shell writes its own pid (whatever setsid did) and then becomes CMD.
    # shellcheck disable=SC2016
    (cd "$dir" && exec setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" >>"$log" 2>&1 </dev/null) &
    for ((i = 0; i < 50; i++)); do
        [[ -s "$pidfile" ]] && break
        sleep 0.1
    done
    [[ -s "$pidfile" ]] || {
        show_log_tail "$log"
        die "$name: could not start (no pid file after 5 s)"
    }
    SPAWNED_PID=$(head -n 1 "$pidfile")
}

# wait_until DESC TIMEOUT PID LOG CMD...: poll CMD until it succeeds. Fails (with the
# tail of LOG) when TIMEOUT seconds pass or when PID (if not empty) exits.
wait_until() {
    local desc=$1 timeout=$2 pid=$3 log=$4 deadline
    shift 4
    deadline=$(($(now) + timeout))
    until "$@" >/dev/null 2>&1; do
        if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
            err "$desc: process $pid exited while starting"
            show_log_tail "$log"
            return 1
        fi
        if (($(now) >= deadline)); then
            err "$desc: not ready after ${timeout}s"
            show_log_tail "$log"
            return 1
        fi
        sleep 0.5
    done
}

# stop_pid NAME PID TIMEOUT: SIGTERM, wait up to TIMEOUT s, then SIGKILL.
stop_pid() {
    local name=$1 pid=$2 timeout=$3 deadline
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(now) + timeout))
    while pid_alive "$pid"; do
        if (($(now) >= deadline)); then
            warn "$name (pid $pid) still running after ${timeout}s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------- PostgreSQL

# pg_bindir: directory of initdb/pg_ctl (PG_MAJOR preferred, else the newest installed).
pg_bindir() {
    local d
    if [[ -x "/usr/lib/postgresql/$PG_MAJOR/bin/pg_ctl" ]]; then
        printf '%s\n' "/usr/lib/postgresql/$PG_MAJOR/bin"
        return 0
    fi
    d=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/pg_ctl' 2>/dev/null | sort -V | tail -n 1)
    [[ -n "$d" ]] || return 1
    dirname "$d"
}

# Where the cluster lives: .run/pg normally. If the postgres user cannot reach .run (a
# checkout under a private home directory), a directory under /var/lib/postgresql is
# used instead; the choice is remembered in .run/pg_dir so scripts/down finds it.
resolve_pg_paths() {
    if [[ -s "$RUN_DIR/pg_dir" ]]; then
        PG_DIR=$(head -n 1 "$RUN_DIR/pg_dir")
    elif [[ -d "$RUN_DIR/pg" ]] || { id postgres >/dev/null 2>&1 && as_postgres test -x "$RUN_DIR"; }; then
        PG_DIR="$RUN_DIR/pg"
    else
        PG_DIR="/var/lib/postgresql/wallet-run-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
    fi
    PGDATA_DIR="$PG_DIR/data"
    PG_SOCK_DIR="$PG_DIR/sock"
    # Unix socket paths are limited to 107 bytes.
    if ((${#PG_SOCK_DIR} > 80)); then
        PG_SOCK_DIR="/tmp/wallet-pg-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
    fi
    if [[ "$PG_DIR" == "$RUN_DIR"/* ]]; then
        PG_LOG="$LOG_DIR/postgres.log"
    else
        PG_LOG="$PG_DIR/postgres.log"
    fi
}

pg_ready() {
    local bin
    bin=$(pg_bindir) || return 1
    "$bin/pg_isready" -q -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres
}

pg_running() {
    local bin
    bin=$(pg_bindir) || return 1
    as_postgres test -f "$PGDATA_DIR/PG_VERSION" || return 1
    as_postgres "$bin/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

psql_cmd() {
    local bin
    bin=$(pg_bindir)
    "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U "$PG_USER" "$@"
}

# ---------------------------------------------------------------- RabbitMQ

# The one environment every RabbitMQ command must share (the /usr/sbin wrappers would
# switch user and HOME, and with it the Erlang cookie).
RABBIT_ENV=(
    HOME="$RABBIT_DIR"
    RABBITMQ_NODENAME=rabbit@localhost
    RABBITMQ_NODE_IP_ADDRESS="$HOST"
    RABBITMQ_NODE_PORT="$RABBIT_PORT"
    RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT"
    ERL_EPMD_ADDRESS="$HOST"
    RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
    RABBITMQ_LOG_BASE="$RABBIT_DIR/log"
    RABBITMQ_LOGS=-
    RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf"
    RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
    RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
    RABBITMQ_PID_FILE="$RABBIT_DIR/rabbitmq.pid"
    # Erlang distribution (inter-node and CLI) on loopback only, like everything else.
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
)

# rabbit_env CMD...: run CMD in that environment.
rabbit_env() { env -u RABBITMQ_ALLOW_INPUT "${RABBIT_ENV[@]}" "$@"; }

rabbitmqctl_() { rabbit_env "$RABBIT_BIN/rabbitmqctl" "$@"; }

# Our node answers (same cookie and node name), not just anything on port 5672.
rabbit_running() {
    [[ -x "$RABBIT_BIN/rabbitmqctl" && -d "$RABBIT_DIR" ]] || return 1
    port_open "$RABBIT_PORT" || return 1
    rabbitmqctl_ -q -t 20 await_startup >/dev/null 2>&1
}

# ---------------------------------------------------------------- services

# The binary of a service instance: wallet-service-2 runs wallet-service.
svc_bin() { echo "${1%-2}"; }

# What the instance's command line contains (for live_pid): the binary it runs.
svc_pattern() { echo "target/release/$(svc_bin "$1")"; }

# The instance's index in the HA port tables: 0 for the first, 1 for "-2".
svc_index() { [[ $1 == *-2 ]] && echo 1 || echo 0; }

svc_port() {
    local i
    i=$(svc_index "$1")
    case $1 in
    wallet-service | wallet-service-2)
        if [[ $STACK_MODE == ha ]]; then echo "${HA_WALLET_PORTS[i]}"; else echo "$WALLET_PORT"; fi
        ;;
    processor-service | processor-service-2)
        if [[ $STACK_MODE == ha ]]; then echo "${HA_PROCESSOR_PORTS[i]}"; else echo "$PROCESSOR_PORT"; fi
        ;;
    mock-gateway) echo "$GATEWAY_PORT" ;;
    local-idp) echo "$IDP_PORT" ;;
    *) die "unknown service $1" ;;
    esac
}

# The metrics port; none for local-idp (a development tool, not part of the product).
svc_metrics_port() {
    local i
    i=$(svc_index "$1")
    case $1 in
    local-idp) echo "" ;;
    wallet-service | wallet-service-2) echo "${HA_WALLET_METRICS_PORTS[i]}" ;;
    processor-service | processor-service-2) echo "${HA_PROCESSOR_METRICS_PORTS[i]}" ;;
    mock-gateway) echo "$GATEWAY_METRICS_PORT" ;;
    *) die "unknown service $1" ;;
    esac
}

# The instance's own listeners, over what .run/env says (which names the first instance).
svc_env() {
    case $1 in
    wallet-service*) echo "WALLET_BIND=$HOST:$(svc_port "$1") WALLET_METRICS_BIND=$HOST:$(svc_metrics_port "$1")" ;;
    processor-service*) echo "PROCESSOR_BIND=$HOST:$(svc_port "$1") PROCESSOR_METRICS_BIND=$HOST:$(svc_metrics_port "$1")" ;;
    esac
}

svc_args() {
    case $1 in
    wallet-service* | local-idp) echo serve ;;
    *) echo ;;
    esac
}

svc_ready() {
    local path=/readyz
    [[ $1 != local-idp ]] || path=/healthz
    curl -sf -o /dev/null --max-time 2 "http://$HOST:$(svc_port "$1")$path"
}
