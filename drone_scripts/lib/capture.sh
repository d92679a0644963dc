# shellcheck shell=bash
# capture.sh: the chain stage with chain.capture namespace (lib/chain.sh
# dispatches here). Inside the drone's namespace nft redirects every TCP
# connection that is not to localnet or a first hop to redsocks on
# 127.0.0.1:CAPTURE_PORT_BASE+k, whose upstream is tunnel connection k's SOCKS
# port (-D) or its -L forward to the first proxy; so the payload needs no
# LD_PRELOAD and statically linked programs are captured too.
# Settings (group capture): CHAIN_REDSOCKS CAPTURE_UPSTREAM_TYPE
# CAPTURE_UPSTREAM_PORTS CAPTURE_PORT_BASE; config function write_redsocks_conf
# (its @TARDIS_PORT_<i>@ placeholders are put in by with_ports).

CAPTURE_PID=""
CAPTURE_REDSOCKS=""

# The capture's redsocks, supervised like the tunnel (lib/supervise.sh), then
# one connection to the collector the payload's way (no prefix).
capture_stage() {
    local started conf=$DRONE_DIR/ns/redsocks.conf
    started=$(now_us)
    CAPTURE_REDSOCKS=$(netns_redsocks)
    [[ -n $CAPTURE_REDSOCKS && -x $CAPTURE_REDSOCKS ]] ||
        fail chain "$EXIT_CHAIN" "redsocks not found${CHAIN_REDSOCKS:+ at $CHAIN_REDSOCKS};" \
            "install it or set chain.redsocks"
    mkdir -p -- "${conf%/*}"
    with_ports "$(write_redsocks_conf)" >"$conf" ||
        fail chain "$EXIT_CHAIN" "cannot write $conf"
    CLEANUP+=(capture_stop)
    capture_supervise &
    CAPTURE_PID=$!
    # shellcheck disable=SC2034  # read by chain_probe (lib/chain.sh)
    CHAIN_ENV=()
    # shellcheck disable=SC2034  # for the watchdog (lib/monitoring.sh)
    PATH_PROBE_PREFIX=()
    if ! wait_until "$CHAIN_READY_TIMEOUT_MS" capture_up; then
        stage_unready chain "$EXIT_CHAIN" capture_ready \
            "redsocks is not listening on $(capture_ports_text) within" \
            "$((CHAIN_READY_TIMEOUT_MS / 1000))s; see its messages above"
    fi
    log "chain: capture through redsocks on $(capture_ports_text)" \
        "($CAPTURE_UPSTREAM_TYPE upstream ports $(with_ports "${CAPTURE_UPSTREAM_PORTS[*]}"))"
    if ! wait_until "$CHAIN_READY_TIMEOUT_MS" chain_probe; then
        stage_unready chain "$EXIT_CHAIN" capture_ready \
            "the pool's collector $CHAIN_PROBE_HOST:$CHAIN_PROBE_PORT" \
            "is not reachable through $CHAIN_ROUTE within" \
            "$((CHAIN_READY_TIMEOUT_MS / 1000))s"
    fi
    stage_ready chain "$started"
}

# Runs in the background: redsocks under lib/supervise.sh (local: no probes,
# no start slots), restarts and last failure next to the tunnel's.
capture_supervise() {
    # shellcheck disable=SC2034  # the SUPERVISE_* inputs are read by lib/supervise.sh
    {
        SUPERVISE_LABEL=capture
        SUPERVISE_TARGETS=(redsocks)
        SUPERVISE_PROBES=("")
        SUPERVISE_NODE_STARTS=0
        SUPERVISE_RESTARTS_FILE=$DRONE_DIR/ns/capture.restarts
        SUPERVISE_ERROR_FILE=$DRONE_DIR/ns/capture.error
        SUPERVISE_CHILD_FILE=$DRONE_DIR/ns/capture.child
    }
    supervise_run capture_command capture_up capture_classify
}

capture_command() {
    printf '%s\0' "$CAPTURE_REDSOCKS" -c "$DRONE_DIR/ns/redsocks.conf"
}

# Up when every redsocks section (one per tunnel connection) listens. Read
# from /proc/net/tcp (the namespace's: a few lines), not by connecting: a
# connection to redsocks itself would go up the tunnel as a CONNECT to
# 127.0.0.1:port on the far side.
capture_up() {
    local k wanted=() _ local_address state line
    for k in "${!CAPTURE_UPSTREAM_PORTS[@]}"; do
        printf -v line '0100007F:%04X' "$((CAPTURE_PORT_BASE + k))"
        wanted[k]=$line
    done
    while read -r _ local_address _ state _; do
        [[ $state == 0A ]] || continue
        for k in "${!wanted[@]}"; do
            [[ ${wanted[k]} == "$local_address" ]] && unset 'wanted[k]'
        done
    done 2>/dev/null </proc/net/tcp
    ((${#wanted[@]} == 0))
}

# The stage's readiness for stage_unready: redsocks up and the probe through.
capture_ready() {
    capture_up && chain_probe
}

capture_classify() {
    local status=$1 file=$2 last="" line
    while IFS= read -r line; do
        [[ -n ${line//[[:space:]]/} ]] && last=$line
    done <"$file"
    printf 'exited\t%s\n' "${last:-exit status $status}"
}

capture_ports_text() {
    local k text=""
    for k in "${!CAPTURE_UPSTREAM_PORTS[@]}"; do
        text+="${text:+, }127.0.0.1:$((CAPTURE_PORT_BASE + k))"
    done
    printf '%s' "$text"
}

capture_stop() {
    if [[ -n $CAPTURE_PID ]]; then
        stop_process "$CAPTURE_PID" 3000
        CAPTURE_PID=""
    fi
}
