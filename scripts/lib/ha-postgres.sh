# High availability: PostgreSQL 15 under pg_auto_failover 2.0 on 127.0.0.1 (`scripts/up --ha`).
# Source AFTER scripts/lib.sh (it uses RUN_DIR, LOG_DIR, PID_DIR, HA_PG_*_PORT(S), spawn, ...).
#
#   node     port   PGDATA               pid file, log (.run/pids, .run/logs)
#   monitor  54330  .run/ha/pg/monitor   ha-pg-monitor.pid, ha-pg-monitor.log
#   node1    54331  .run/ha/pg/node1     ha-pg-node1.pid,   ha-pg-node1.log
#   node2    54332  .run/ha/pg/node2     ha-pg-node2.pid,   ha-pg-node2.log
#
# Each node is one `pg_autoctl run` (as the postgres user), which runs its postgres as a
# child; Postgres' own logs are in PGDATA/log (pg_autoctl turns logging_collector on).
# pg_autoctl finds its config, state and pid files through the XDG variables: pinned to
# .run/ha/pg/xdg, so every pg_autoctl command must go through ha_pg_autoctl.
# Clients: postgres://postgres@127.0.0.1:54331,127.0.0.1:54332/wallet?target_session_attrs=read-write
# (a promoted standby stays read-only until the monitor lets it take writes).
# shellcheck shell=bash

HA_PG_DIR="$RUN_DIR/ha/pg"
HA_PG_NODES=(monitor node1 node2)
HA_PG_XDG=(env XDG_CONFIG_HOME="$HA_PG_DIR/xdg/config" XDG_DATA_HOME="$HA_PG_DIR/xdg/data"
    XDG_RUNTIME_DIR="$HA_PG_DIR/xdg/run")
# What as_postgres does, as an argv prefix: spawn needs a command, not a shell function.
if [[ "$(id -un)" == postgres ]]; then HA_PG_AS=(); elif [[ $EUID -eq 0 ]]; then
    HA_PG_AS=(runuser -u postgres --)
else HA_PG_AS=(sudo -u postgres --); fi
# Settings of the monitor: failover within seconds. A node fails over only when BOTH its
# health checks fail (postgres refuses connections max_retries+1 times in a row) AND its
# keeper has not reported for node_considered_unhealthy_timeout: a slow keeper or one slow
# connection alone never does (no flapping). Detection takes <= 1 + 2 x 0.5 s of checks (up
# to 5 s if the host black-holes packets: 3 tries of 1 s) and 3 s without a report; then
# the standby is promoted but read-only for primary_demote_timeout, the time an old primary
# that is alive but cut off gets to stop itself (its keeper does after network_partition_
# timeout, set to 2 s below, instead of 20). Synchronous replication covers the rest: an
# old primary cannot commit once its standby stops replicating. Defaults: 5000, 5000, 2,
# 2000, 20000, 30000 ms.
HA_PG_MONITOR_CONF="pgautofailover.health_check_period = 1000
pgautofailover.health_check_timeout = 1000
pgautofailover.health_check_max_retries = 2
pgautofailover.health_check_retry_delay = 500
pgautofailover.node_considered_unhealthy_timeout = 3000
pgautofailover.primary_demote_timeout = 2000
shared_buffers = '128MB'"
# Data nodes: 4 service instances with pools of ~20, plus tools. pg_autoctl sizes
# shared_buffers at 25 % of RAM (three instances share this machine) and keeps 8 GB of WAL
# (the standby's replication slot already keeps what it needs).
HA_PG_NODE_CONF="max_connections = 200
shared_buffers = '128MB'
wal_keep_size = '512MB'"

ha_pg_port() { case $1 in monitor) echo "$HA_PG_MONITOR_PORT" ;; node1) echo "${HA_PG_PORTS[0]}" ;; *) echo "${HA_PG_PORTS[1]}" ;; esac; }
ha_pg_autoctl() { as_postgres "${HA_PG_XDG[@]}" pg_autoctl "$@"; }
# ha_pg_psql PORT [psql args]: unaligned, tuples only, bounded in time.
ha_pg_psql() {
    PGCONNECT_TIMEOUT=2 timeout 10 "$(pg_bindir)/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$HOST" -p "$1" -U "$PG_USER" "${@:2}"
}
ha_pg_mon() { ha_pg_psql "$HA_PG_MONITOR_PORT" -d pg_auto_failover -c "$1"; }

# ha_pg_created NODE: `pg_autoctl create` finished for NODE (its .init file marks a create
# that did not; running create again resumes it).
ha_pg_created() {
    local d x
    d=$(realpath -m "$HA_PG_DIR/$1")
    x="$HA_PG_DIR/xdg/data/pg_autoctl$d"
    as_postgres test -f "$d/PG_VERSION" && as_postgres test -f "$HA_PG_DIR/xdg/config/pg_autoctl$d/pg_autoctl.cfg" &&
        ! as_postgres test -e "$x/pg_autoctl.init"
}

# ha_pg_primary: host:port of the node the monitor has taking writes (converged); 1 if none.
ha_pg_primary() {
    local p
    p=$(ha_pg_mon "select nodehost || ':' || nodeport from pgautofailover.node where reportedstate = goalstate
        and goalstate in ('single', 'wait_primary', 'primary', 'join_primary', 'apply_settings') limit 1" 2>/dev/null) || return 1
    [[ -n "$p" ]] && printf '%s\n' "$p"
}

ha_pg_states() { ha_pg_mon "select string_agg(nodename || ' ' || reportedstate || '/' || goalstate, ', ' order by nodename) from pgautofailover.node" 2>/dev/null || echo "monitor not answering"; }

# ha_pg_healthy: one primary and one secondary, converged, synchronous replication in force.
ha_pg_healthy() {
    local p
    [[ "$(ha_pg_mon "select string_agg(reportedstate || '/' || goalstate, ' ' order by reportedstate::text)
        from pgautofailover.node" 2>/dev/null)" == "primary/primary secondary/secondary" ]] || return 1
    p=$(ha_pg_primary) || return 1
    [[ "$(ha_pg_psql "${p#*:}" -d postgres -c "select current_setting('synchronous_standby_names') <> ''
        and exists (select from pg_stat_replication where sync_state in ('sync', 'quorum'))")" == t ]]
}

# ha_pg_run NODE: create NODE if needed, then start its `pg_autoctl run`.
ha_pg_run() {
    local n=$1 d="$HA_PG_DIR/$1" port log="$LOG_DIR/ha-pg-$1.log" pid args
    port=$(ha_pg_port "$n")
    if pid=$(live_pid "ha-pg-$n" "pg_autoctl run"); then info "PostgreSQL HA: $n already running (pid $pid)" && return 0; fi
    port_open "$port" && die "port $port is in use, but not by our pg_autoctl ($n): stop that process first"
    args=(--pgdata "$d" --pgctl "$(pg_bindir)/pg_ctl" --pgport "$port" --listen "$HOST" --hostname "$HOST" --auth trust --no-ssl)
    if ! ha_pg_created "$n"; then
        info "PostgreSQL HA: creating $n on $HOST:$port (log: $log)"
        if [[ $n == monitor ]]; then
            timeout 120 "${HA_PG_AS[@]}" "${HA_PG_XDG[@]}" pg_autoctl create monitor "${args[@]}" >>"$log" 2>&1 ||
                { show_log_tail "$log"; die "pg_autoctl create monitor failed"; }
        else
            # A standby is a pg_basebackup of the primary: wait for one if the formation has nodes.
            if [[ "$(ha_pg_mon 'select count(*) from pgautofailover.node')" != 0 ]]; then
                wait_until "PostgreSQL HA: a primary to clone $n from" 90 "" "$log" ha_pg_primary || die "no primary to clone $n from"
            fi
            timeout 300 "${HA_PG_AS[@]}" "${HA_PG_XDG[@]}" pg_autoctl create postgres "${args[@]}" --name "$n" \
                --dbname "$PG_DB" --username "$PG_USER" \
                --monitor "postgres://autoctl_node@$HOST:$HA_PG_MONITOR_PORT/pg_auto_failover?sslmode=disable" >>"$log" 2>&1 ||
                { show_log_tail "$log"; die "pg_autoctl create postgres ($n) failed"; }
        fi
    fi
    # Our settings, included last from postgresql.conf (pg_autoctl includes its file first):
    # a standby gets both files with its base backup.
    if [[ $n == monitor ]]; then printf '%s\n' "$HA_PG_MONITOR_CONF"; else printf '%s\n' "$HA_PG_NODE_CONF"; fi |
        as_postgres tee "$d/wallet-ha.conf" >/dev/null
    as_postgres grep -q "wallet-ha.conf" "$d/postgresql.conf" ||
        echo "include_if_exists 'wallet-ha.conf'" | as_postgres tee -a "$d/postgresql.conf" >/dev/null
    [[ $n == monitor ]] || ha_pg_autoctl config set --pgdata "$d" timeout.network_partition_timeout 2 >>"$log" 2>&1
    info "PostgreSQL HA: starting $n on $HOST:$port"
    spawn "ha-pg-$n" "$HA_PG_DIR" "$log" "${HA_PG_AS[@]}" "${HA_PG_XDG[@]}" pg_autoctl run --pgdata "$d"
    if [[ $n == monitor ]]; then
        wait_until "PostgreSQL HA: monitor" 60 "$SPAWNED_PID" "$log" ha_pg_mon 'select from pgautofailover.formation' ||
            die "the pg_auto_failover monitor did not start (log: $log)"
    fi
}

# ha_pg_start: create and start what is missing, then wait for a primary and a synchronous
# secondary. It is also what brings a killed node back (scripts/chaos-ctl restore runs
# scripts/up): the node rejoins as the secondary, rewound by pg_autoctl if need be.
ha_pg_start() {
    local t n deadline last=0
    t=$(now)
    # scripts/up's ensure_packages installs it in this mode.
    command -v pg_autoctl >/dev/null || die "pg_autoctl not found (Debian package postgresql-$PG_MAJOR-auto-failover)"
    ensure_run_dirs
    as_root mkdir -p "$HA_PG_DIR"
    as_root chown postgres:postgres "$HA_PG_DIR"
    as_root chmod 700 "$HA_PG_DIR"
    as_postgres mkdir -p "$HA_PG_DIR/xdg/run" # if missing, pg_autoctl puts its pid files in /tmp
    for n in "${HA_PG_NODES[@]}"; do ha_pg_run "$n"; done
    deadline=$(($(now) + 180))
    until ha_pg_healthy; do
        if (($(now) >= deadline)); then
            err "PostgreSQL HA: no primary + synchronous secondary after 180s ($(ha_pg_states))"
            for n in "${HA_PG_NODES[@]}"; do show_log_tail "$LOG_DIR/ha-pg-$n.log" 15; done
            return 1
        fi
        (($(now) - last < 5)) || { info "PostgreSQL HA: waiting for primary + secondary: $(ha_pg_states)" && last=$(now); }
        sleep 0.5
    done
    ok "PostgreSQL HA: $(ha_pg_states); primary $(ha_pg_primary) ($(since "$t"))"
}

# ha_pg_tree PID...: those processes and all their descendants, one a line.
ha_pg_tree() {
    ps -e -o pid= -o ppid= | awk -v roots="$*" 'BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2 } END { do { more = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; more = 1 } } while (more)
        for (p in keep) print p }'
}

# ha_pg_pids NODE: its `pg_autoctl run` and its postmaster, if alive.
ha_pg_pids() {
    local pm
    live_pid "ha-pg-$1" "pg_autoctl run" || true
    pm=$(as_postgres head -n 1 "$HA_PG_DIR/$1/postmaster.pid" 2>/dev/null) || return 0
    pid_alive "$pm" && tr '\0' ' ' <"/proc/$pm/cmdline" | grep -q -- "$HA_PG_DIR/$1" && echo "$pm"
    return 0
}

# ha_pg_kill_tree NODE SIGNAL: SIGNAL to the node's whole tree at once; wait up to 10 s.
ha_pg_kill_tree() {
    local pids p deadline
    mapfile -t pids < <(ha_pg_tree "$(ha_pg_pids "$1" | tr '\n' ' ')")
    ((${#pids[@]})) || return 0
    kill "-$2" "${pids[@]}" 2>/dev/null || true
    deadline=$(($(now) + 10))
    for p in "${pids[@]}"; do while pid_alive "$p" && (($(now) < deadline)); do sleep 0.1; done; done
    echo "${pids[*]}"
}

# ha_pg_kill_primary: lose the primary's "machine": SIGKILL its keeper and postgres together
# (killing postgres alone, its keeper would restart it).
ha_pg_kill_primary() {
    local hp n pids
    hp=$(ha_pg_primary) || { warn "PostgreSQL HA: the monitor knows no primary"; return 1; }
    for n in node1 node2; do [[ "$HOST:$(ha_pg_port "$n")" == "$hp" ]] && break; done
    pids=$(ha_pg_kill_tree "$n" KILL)
    [[ -n "$pids" ]] || { warn "PostgreSQL HA: primary $n ($hp) has no process running"; return 1; }
    info "PostgreSQL HA: killed primary $n ($hp): SIGKILL to pids $pids"
}

ha_pg_stop() {
    local n order=(node1 node2 monitor) deadline
    # Standby first, then primary (else the monitor fails over to the stopping standby),
    # then the monitor.
    [[ "$(ha_pg_primary || true)" != "$HOST:$(ha_pg_port node1)" ]] || order=(node2 node1 monitor)
    for n in "${order[@]}"; do
        [[ -n "$(ha_pg_pids "$n")" ]] || { rm -f "$PID_DIR/ha-pg-$n.pid" && continue; }
        # Before a live primary: wait until the monitor has given up on the standby (goal
        # catchingup, ~3 s). Else, at the next start, the primary's keeper reports "postgres
        # not running" before its postgres is up and the monitor fails over to the standby.
        deadline=$(($(now) + 15))
        while [[ $n == "${order[1]}" && "$(ha_pg_mon "select count(*) from pgautofailover.node where goalstate = 'secondary'" 2>/dev/null ||
            echo 0)" != 0 ]] && (($(now) < deadline)); do sleep 0.5; done
        info "PostgreSQL HA: stopping $n"
        ha_pg_autoctl stop --pgdata "$HA_PG_DIR/$n" >>"$LOG_DIR/ha-pg-$n.log" 2>&1 || true
        deadline=$(($(now) + 30))
        while [[ -n "$(ha_pg_pids "$n")" ]] && (($(now) < deadline)); do sleep 0.2; done
        if [[ -n "$(ha_pg_pids "$n")" ]]; then
            warn "PostgreSQL HA: $n still running after 30s: SIGKILL to pids $(ha_pg_kill_tree "$n" KILL)"
        fi
        rm -f "$PID_DIR/ha-pg-$n.pid"
    done
    info "PostgreSQL HA: stopped"
}

ha_pg_status() {
    local n pids p
    for n in "${HA_PG_NODES[@]}"; do
        pids=$(ha_pg_pids "$n" | xargs)
        if [[ -n "$pids" ]]; then info "$n ($HOST:$(ha_pg_port "$n")): running (pg_autoctl, postmaster: pids $pids)"
        else info "$n ($HOST:$(ha_pg_port "$n")): DOWN"; fi
    done
    ha_pg_mon 'select' >/dev/null 2>&1 || { info "monitor not answering: no formation state" && return 0; }
    ha_pg_autoctl show state --pgdata "$HA_PG_DIR/monitor" 2>&1 || true
    p=$(ha_pg_primary) || { info "no primary taking writes"; return 0; }
    info "primary $p: synchronous_standby_names = '$(ha_pg_psql "${p#*:}" -d postgres -c 'show synchronous_standby_names')'"
}
