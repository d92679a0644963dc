# shellcheck shell=bash
# chain.sh: send the unmodified payload's connections into the tunnel.
# The proxychains-ng (or tsocks) configuration is rendered from the profile
# (write_proxychains_conf / write_tsocks_conf; the SOCKS port is the one the
# tunnel stage chose, put in by with_ports); the payload gets it through
# LD_PRELOAD, so no program needs to know about SOCKS.

CHAIN_ENV=()

# What the chain adds to the payload (lib/payload.sh composes it).
PAYLOAD_ENVIRONMENT+=(chain_environment)

# The chain's LD_PRELOAD and configuration for the payload; without a
# container a preload library the site itself set is kept after ours.
chain_environment() {
    if ((${#CHAIN_ENV[@]})); then
        PAYLOAD_ENV+=("${CHAIN_ENV[@]}")
        if [[ $CONTAINER_RUNTIME == none && -n ${LD_PRELOAD:-} ]]; then
            PAYLOAD_ENV+=("${CHAIN_ENV[0]} $LD_PRELOAD") # keep the site's own
        fi
    fi
}

# The preload library: the configured one, else the first usual place.
chain_library() {
    if [[ -n $CHAIN_LIBRARY ]]; then
        expand_home "$CHAIN_LIBRARY"
        return
    fi
    local arch candidate candidates
    arch=$(uname -m)
    if [[ $CHAIN_TOOL == proxychains ]]; then
        candidates=("/usr/lib/$arch-linux-gnu/libproxychains.so.4"
            /usr/lib64/proxychains-ng/libproxychains4.so
            /usr/lib/proxychains-ng/libproxychains4.so
            /usr/local/lib/libproxychains4.so /usr/lib64/libproxychains4.so
            /usr/lib/libproxychains4.so)
    else
        candidates=("/usr/lib/$arch-linux-gnu/libtsocks.so.1" /usr/lib64/libtsocks.so
            /usr/lib/libtsocks.so /usr/local/lib/libtsocks.so)
    fi
    for candidate in "${candidates[@]}"; do
        if [[ -f $candidate ]]; then
            printf '%s' "$candidate"
            return
        fi
    done
    return 1
}

# One TCP connection to the pool's collector through the chain, as the payload
# will make it (a bash /dev/tcp connect() under the same LD_PRELOAD; with
# capture namespace CHAIN_ENV is empty and the kernel captures it).
chain_probe() {
    [[ -n $CHAIN_PROBE_HOST ]] || return 0
    # shellcheck disable=SC2016  # $1 and $2 expand in the probing bash
    env "${CHAIN_ENV[@]}" timeout 10 bash -c 'exec 3<>"/dev/tcp/$1/$2"' \
        chain-probe "$CHAIN_PROBE_HOST" "$CHAIN_PROBE_PORT" 2>/dev/null
}

chain_stage() {
    local started library conf
    started=$(now_us)
    # chain.capture namespace: the kernel captures, no LD_PRELOAD (lib/capture.sh)
    if [[ ${CAPTURE_METHOD:-preload} == namespace ]]; then
        capture_stage
        return
    fi
    if [[ $CHAIN_TOOL == none ]]; then
        stage_skipped chain "chain tool none"
        return 0
    fi
    library=$(chain_library) ||
        fail chain "$EXIT_CHAIN" "no $CHAIN_TOOL preload library found on" \
            "$(hostname); install it or set chain.library"
    [[ -f $library ]] || fail chain "$EXIT_CHAIN" "preload library $library not found"
    if [[ $CONTAINER_RUNTIME != none && -z $CHAIN_LIBRARY ]]; then
        # the container sees the work directory (bound) but not the host's /usr
        if ! { mkdir -p "$DRONE_DIR/lib" && cp -- "$library" "$DRONE_DIR/lib/"; }; then
            fail chain "$EXIT_CHAIN" "cannot copy $library into $DRONE_DIR/lib"
        fi
        library=$DRONE_DIR/lib/${library##*/}
    fi
    if [[ $CHAIN_TOOL == proxychains ]]; then
        conf=$DRONE_DIR/proxychains.conf
        with_ports "$(write_proxychains_conf)" >"$conf" ||
            fail chain "$EXIT_CHAIN" "cannot write $conf"
        CHAIN_ENV=("LD_PRELOAD=$library" "PROXYCHAINS_CONF_FILE=$conf")
        if ((CHAIN_QUIET)); then
            CHAIN_ENV+=(PROXYCHAINS_QUIET_MODE=1)
        fi
    else
        conf=$DRONE_DIR/tsocks.conf
        with_ports "$(write_tsocks_conf)" >"$conf" ||
            fail chain "$EXIT_CHAIN" "cannot write $conf"
        CHAIN_ENV=("LD_PRELOAD=$library" "TSOCKS_CONF_FILE=$conf")
    fi
    # shellcheck disable=SC2034  # for the watchdog (lib/monitoring.sh)
    PATH_PROBE_PREFIX=(env "${CHAIN_ENV[@]}")
    if ! wait_until "$CHAIN_READY_TIMEOUT_MS" chain_probe; then
        stage_unready chain "$EXIT_CHAIN" chain_probe \
            "the pool's collector $CHAIN_PROBE_HOST:$CHAIN_PROBE_PORT" \
            "is not reachable through $CHAIN_ROUTE within" \
            "$((CHAIN_READY_TIMEOUT_MS / 1000))s"
    fi
    stage_ready chain "$started"
}
