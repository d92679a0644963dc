# shellcheck shell=bash
# monitoring.sh: feed the connectivity watchdog (lib/watchdog.sh) this drone's
# identity, stages and path to the pool (PATH_PROBE_PREFIX, PATH_SUPERVISOR_PID,
# set by the network mode's stages), and start it once the path works (or,
# when a stage of the path is not ready in time, at once: see stage_unready).
# Included only when monitoring is enabled; the stages report through run_hook.

# From drone_setup: the watchdog's identity and files, so stages can report.
watchdog_setup() {
    TNA_DRONE_UUID=$DRONE_UUID
    TNA_HEARTBEAT_DIR=$MONITORING_HEARTBEAT_DIR
    TNA_HEARTBEAT_INTERVAL=$MONITORING_INTERVAL
    TNA_POOL_ENDPOINTS=${MONITORING_ENDPOINTS[*]}
    TNA_RUN_DIR=$DRONE_DIR/watchdog
    # the supervisor's files (lib/supervise.sh): restarts, its last failure
    TNA_TUNNEL_RESTARTS_FILE=$DRONE_DIR/tunnel.restarts
    TNA_TUNNEL_ERROR_FILE=$DRONE_DIR/tunnel.error
    # the namespace's isolation (lib/netns.sh; absent: null in the record)
    TNA_ISOLATION_FILE=$DRONE_DIR/ns/isolation
    TNA_LEAKS_FILE=$DRONE_DIR/ns/leaks
    TNA_OUTER_STATE_FILE=$DRONE_DIR/ns/outer.state
    # probes failing through a living supervisor: it reconnects on SIGUSR1
    TNA_TUNNEL_FORCE_SIGNAL=USR1
    # while the path fails, rounds every fifth of the interval (at least
    # 2 s): a tunnel back within seconds shows in a record within seconds
    TNA_FAILING_INTERVAL=$((MONITORING_INTERVAL / 5 > 2 ? MONITORING_INTERVAL / 5 : 2))
    TNA_STAGES=("${MONITORING_STAGES[@]}")
    local stage
    for stage in "${TNA_STAGES[@]}"; do
        tna_stage "$stage" pending
    done
}

# The watchdog with the path as it is now (it is a background process: what
# is set later does not reach it, so it is restarted then).
# [PID]: the supervisor to watch (default PATH_SUPERVISOR_PID; empty: none).
watchdog_run() {
    watchdog_stop
    TNA_TUNNEL_PID=${1-$PATH_SUPERVISOR_PID}
    TNA_CHAIN_PREFIX=("${PATH_PROBE_PREFIX[@]}")
    tna_watchdog_start
    CLEANUP+=(watchdog_stop)
}

# From stage_unready: STAGE PROBE DETAIL. Report the stage failed, run the
# watchdog now (its records name the stage, so the adapter can judge the drone
# never-connected) and probe once a second until the stage works.
watchdog_wait() {
    local stage=$1 probe=$2
    tna_stage "$stage" failed "$3"
    if [[ $stage == tunnel ]]; then
        watchdog_run "" # a live supervisor would clear the failed tunnel stage
    else
        watchdog_run
    fi
    until "$probe"; do
        sleep 1
    done
}

# After the path's stages: probe through the path, watch its supervisor, publish.
watchdog_stage() {
    watchdog_run
    tna_startd_cron_env
    local name
    for name in "${!_CONDOR_STARTD_CRON_@}"; do
        PAYLOAD_EXTRA_ENV+=("$name=${!name}")
    done
    log "watchdog started: heartbeat every ${MONITORING_INTERVAL}s into $MONITORING_HEARTBEAT_DIR"
}

watchdog_stop() {
    if [[ -n ${TNA_WATCHDOG_PID:-} ]]; then
        stop_process "$TNA_WATCHDOG_PID" 2000
        TNA_WATCHDOG_PID=""
    fi
}

# A stage's state for the watchdog's record (ignored before watchdog_setup).
watchdog_report() {
    if [[ -n ${TNA_RUN_DIR:-} ]]; then
        tna_stage "$@"
    fi
}
