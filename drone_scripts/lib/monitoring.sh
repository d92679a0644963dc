# shellcheck shell=bash
# monitoring.sh: feed the connectivity watchdog (lib/watchdog.sh) this drone's
# identity, stages, chain and tunnel, and start it once the chain works.
# Included only when monitoring is enabled; the stages report through run_hook.

# From drone_setup: the watchdog's identity and files, so stages can report.
watchdog_setup() {
    TNA_DRONE_UUID=$DRONE_UUID
    TNA_HEARTBEAT_DIR=$MONITORING_HEARTBEAT_DIR
    TNA_HEARTBEAT_INTERVAL=$MONITORING_INTERVAL
    TNA_POOL_ENDPOINTS=${MONITORING_ENDPOINTS[*]}
    TNA_RUN_DIR=$DRONE_DIR/watchdog
    local stage
    for stage in cvmfs tunnel chain payload; do
        tna_stage "$stage" pending
    done
}

# After the chain: probe through it, watch the tunnel supervisor, publish.
watchdog_stage() {
    TNA_TUNNEL_PID=$TUNNEL_PID
    TNA_CHAIN_PREFIX=()
    if ((${#CHAIN_ENV[@]})); then
        TNA_CHAIN_PREFIX=(env "${CHAIN_ENV[@]}")
    fi
    tna_watchdog_start
    CLEANUP+=(watchdog_stop)
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
    fi
}

# A stage's state for the watchdog's record (ignored before watchdog_setup).
watchdog_report() {
    if [[ -n ${TNA_RUN_DIR:-} ]]; then
        tna_stage "$@"
    fi
}
