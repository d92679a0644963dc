# shellcheck shell=bash
# payload.sh: start the unmodified payload (a glidein or condor_master) with
# the drone's HTCondor identity and keepalive knobs, wrapped in what the stages
# contributed (PAYLOAD_LAYERS, PAYLOAD_ENVIRONMENT ...: see lib/common.sh), and
# turn its end into the drone's exit code.
# HTCondor reads every knob from _CONDOR_<KNOB> environment variables; the
# same knobs are also written as a config.d snippet for glideins that read
# LOCAL_CONFIG_DIR (TARDIS_CONDOR_CONFIG_DIR names the directory).

PAYLOAD_PID=""
PAYLOAD_PGID="" # its process group (setsid): what payload_stop waits for
PAYLOAD_ENV=()

# The knobs of this drone: its identity from the environment sbatch exported,
# then the pool and keepalive knobs rendered from the profile and its budget.
condor_knobs() {
    # shellcheck disable=SC2016  # $(STARTD_ATTRS) is HTCondor's macro, not bash's
    printf '%s\0' "TardisDroneUuid=\"$DRONE_UUID\"" \
        'STARTD_ATTRS=$(STARTD_ATTRS) TardisDroneUuid' "STARTD_NAME=$DRONE_UUID"
    if [[ -n ${TardisDroneCores:-} ]]; then
        printf '%s\0' "NUM_CPUS=$TardisDroneCores"
    fi
    if [[ -n ${TardisDroneMemory:-} ]]; then
        printf '%s\0' "MEMORY=$TardisDroneMemory"
    fi
    if [[ -n ${TardisDroneDisk:-} ]]; then
        printf '%s\0' "DISK=$TardisDroneDisk"
    fi
    if [[ -n $POOL_COLLECTOR ]]; then
        printf '%s\0' "COLLECTOR_HOST=$POOL_COLLECTOR"
    fi
    if ((${#CONDOR_KNOBS[@]})); then
        printf '%s\0' "${CONDOR_KNOBS[@]}"
    fi
}

payload_environment() {
    local knob knobs=() config_dir=$DRONE_DIR/condor_config.d contribution
    mapfile -d '' knobs < <(condor_knobs)
    mkdir -p "$config_dir"
    {
        printf '# HTCondor knobs of drone %s, written by tardis-netadapter\n' "$DRONE_UUID"
        for knob in "${knobs[@]}"; do
            printf '%s = %s\n' "${knob%%=*}" "${knob#*=}"
        done
    } >"$config_dir/50-tardis-netadapter.config"
    PAYLOAD_ENV=()
    for knob in "${knobs[@]}"; do
        PAYLOAD_ENV+=("_CONDOR_$knob")
    done
    PAYLOAD_ENV+=("TardisDroneUuid=$DRONE_UUID" "TARDIS_DRONE_DIR=$DRONE_DIR"
        "TARDIS_CONDOR_CONFIG_DIR=$config_dir")
    # what the stages add (cvmfs, the mode's), in library order
    for contribution in "${PAYLOAD_ENVIRONMENT[@]}"; do
        "$contribution"
    done
    if ((${#PAYLOAD_EXTRA_ENV[@]})); then
        PAYLOAD_ENV+=("${PAYLOAD_EXTRA_ENV[@]}")
    fi
}

# A tiny helper that notes a stage was reached (after checking that each DIR
# exists) and then becomes the next command: it tells, after the payload
# ended, whether cvmfsexec, the container or the payload itself failed.
write_enter_helper() {
    cat >"$DRONE_DIR/bin/enter" <<'TARDIS_NETADAPTER_EOF'
#!/bin/sh
# enter MARKER [DIR...] -- COMMAND...
marker=$1
shift
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    if [ ! -d "$1" ]; then
        echo "tardis-netadapter: $1 is not there" >&2
        exit 111
    fi
    shift
done
shift
: >"$marker" || exit 112
exec "$@"
TARDIS_NETADAPTER_EOF
}

# payload_enter MARKER [DIR...]: the words of the enter helper that writes
# stages/MARKER (once each DIR exists) and then runs the rest of the line.
payload_enter() {
    printf '%s\0' /bin/sh "$DRONE_DIR/bin/enter" "$DRONE_DIR/stages/$1" "${@:2}" --
}

# True when a layer takes the payload's environment itself.
payload_env_carried() {
    local carrier
    for carrier in "${PAYLOAD_ENV_CARRIERS[@]}"; do
        if "$carrier"; then
            return 0
        fi
    done
    return 1
}

# The full command line: the stages' layers (outermost first, each with its
# marker), the environment unless a layer carries it, then the payload.
payload_argv() {
    local layer
    for layer in "${PAYLOAD_LAYERS[@]}"; do
        "$layer"
    done
    if ! payload_env_carried; then
        printf '%s\0' env "${PAYLOAD_ENV[@]}"
    fi
    payload_enter payload
    printf '%s\0' "${PAYLOAD_ARGV[@]}"
}

# Which stage an ended payload command line failed in, as "CODE STAGE REASON":
# the payload's own status once it started, else the first layer that says
# it ended the line.
payload_verdict() {
    local status=$1 judge verdict
    if [[ -e $DRONE_DIR/stages/payload ]]; then
        if ((status == 0)); then
            echo "0 payload exited with status 0"
        else
            echo "$EXIT_PAYLOAD payload exited with status $status"
        fi
        return 0
    fi
    for judge in "${PAYLOAD_VERDICTS[@]}"; do
        verdict=$("$judge" "$status")
        if [[ -n $verdict ]]; then
            printf '%s\n' "$verdict"
            return 0
        fi
    done
    echo "$EXIT_PAYLOAD payload could not be started (status $status)"
}

payload_layers_done() {
    [[ -e $DRONE_DIR/stages/payload ]] || process_gone "$PAYLOAD_PID"
}

# Stop the payload's whole process group, not only its first process: a
# wrapper (cvmfsexec) cleans up after its command ended, and its helpers
# may outlive the wrapper's own process; a group member SIGKILLed, or left
# for the namespace's end to kill, cleans nothing (a stale cvmfsexec scaffold
# in /tmp). TERM, then up to PAYLOAD_STOP_TIMEOUT_MS until none is left, then
# KILL to whatever still is.
payload_stop() {
    local pgid=$PAYLOAD_PGID
    [[ -n $pgid ]] || return 0
    if ! group_gone "$pgid"; then
        log "stopping the payload (process group $pgid)"
        kill -TERM -- "-$pgid" 2>/dev/null
        if ! wait_until "$PAYLOAD_STOP_TIMEOUT_MS" group_gone "$pgid"; then
            log "the payload's process group $pgid did not end within" \
                "$((PAYLOAD_STOP_TIMEOUT_MS / 1000))s of SIGTERM: SIGKILL"
            kill -KILL -- "-$pgid" 2>/dev/null
        fi
    fi
    [[ -z $PAYLOAD_PID ]] || wait "$PAYLOAD_PID" 2>/dev/null
    PAYLOAD_PID=""
    PAYLOAD_PGID=""
}

payload_stage() {
    local argv=() status verdict code launched hook
    payload_environment || fail payload "$EXIT_PAYLOAD" "cannot write the HTCondor config"
    for hook in "${PAYLOAD_BEFORE_START[@]}"; do
        "$hook"
    done
    write_enter_helper || fail payload "$EXIT_PAYLOAD" "cannot write $DRONE_DIR/bin/enter"
    mapfile -d '' argv < <(payload_argv)
    # its own process group, so stopping it reaches every process it started
    launched=$(now_us)
    setsid "${argv[@]}" </dev/null &
    PAYLOAD_PID=$!
    PAYLOAD_PGID=$PAYLOAD_PID # setsid does not fork: bash's & child leads no group
    CLEANUP+=(payload_stop)
    log "stage payload started: ${PAYLOAD_ARGV[*]} (pid $PAYLOAD_PID," \
        "$(seconds_since "$DRONE_START_US")s since start)"
    run_hook watchdog_report payload ok "pid $PAYLOAD_PID"
    for hook in "${PAYLOAD_STARTED[@]}"; do
        "$hook" "$PAYLOAD_PID" "$launched"
    done
    wait "$PAYLOAD_PID"
    status=$?
    PAYLOAD_PID=""
    verdict=$(payload_verdict "$status")
    code=${verdict%% *}
    verdict=${verdict#* }
    if ((code == 0)); then
        log "stage payload done: ${verdict#* }"
        return 0
    fi
    fail "${verdict%% *}" "$code" "${verdict#* }"
}
