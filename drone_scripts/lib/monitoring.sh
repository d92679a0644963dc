# shellcheck shell=bash
# monitoring.sh: start the connectivity watchdog (lib/watchdog.sh) once the
# chain works, feeding it this drone's identity, chain and tunnel. Included
# only when monitoring is enabled; the stages report to it via run_hook.

watchdog_stage() {
    TNA_DRONE_UUID=$DRONE_UUID
    TNA_HEARTBEAT_DIR=$MONITORING_HEARTBEAT_DIR
    TNA_HEARTBEAT_INTERVAL=$MONITORING_INTERVAL
    TNA_POOL_ENDPOINTS=${MONITORING_ENDPOINTS[*]}
    TNA_RUN_DIR=$DRONE_DIR/watchdog
    TNA_TUNNEL_PID=$TUNNEL_PID
    TNA_CHAIN_PREFIX=()
    if ((${#CHAIN_ENV[@]})); then
        TNA_CHAIN_PREFIX=(env "${CHAIN_ENV[@]}")
    fi
    tna_stage payload pending
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
