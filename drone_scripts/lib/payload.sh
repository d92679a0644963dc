# shellcheck shell=bash
# payload.sh: start the unmodified payload (a glidein or condor_master) with
# the drone's HTCondor identity and keepalive knobs, through the chain, inside
# the container, and turn its end into the drone's exit code.
# HTCondor reads every knob from _CONDOR_<KNOB> environment variables; the
# same knobs are also written as a config.d snippet for glideins that read
# LOCAL_CONFIG_DIR (TARDIS_CONDOR_CONFIG_DIR names the directory).

PAYLOAD_PID=""
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
    local knob knobs=() config_dir=$DRONE_DIR/condor_config.d
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
    if [[ -n $CVMFS_ROOT ]]; then
        PAYLOAD_ENV+=("TARDIS_CVMFS_ROOT=$CVMFS_ROOT"
            "TARDIS_CVMFS_HTTP_PROXY=$CVMFS_HTTP_PROXY")
    fi
    tunnel_port_environment
    if ((${#CHAIN_ENV[@]})); then
        PAYLOAD_ENV+=("${CHAIN_ENV[@]}")
        if [[ $CONTAINER_RUNTIME == none && -n ${LD_PRELOAD:-} ]]; then
            PAYLOAD_ENV+=("${CHAIN_ENV[0]} $LD_PRELOAD")  # keep the site's own
        fi
    fi
    if ((${#PAYLOAD_EXTRA_ENV[@]})); then
        PAYLOAD_ENV+=("${PAYLOAD_EXTRA_ENV[@]}")
    fi
}

# The local ports this drone chose, for payloads that configure a proxy of
# their own (e.g. Frontier through the squid forward): TARDIS_SOCKS_PORT and
# TARDIS_FORWARD_PORT_<NAME> for each named forward (NAME in upper case).
tunnel_port_environment() {
    local index name
    if ((${#TUNNEL_PORTS[@]} == 0)); then
        return 0
    fi
    PAYLOAD_ENV+=("TARDIS_SOCKS_PORT=${TUNNEL_PORTS[0]}")
    for index in "${!TUNNEL_FORWARD_NAMES[@]}"; do
        name=${TUNNEL_FORWARD_NAMES[index]}
        if [[ -n $name ]]; then
            PAYLOAD_ENV+=("TARDIS_FORWARD_PORT_${name^^}=${TUNNEL_PORTS[index + 1]}")
        fi
    done
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

# The full command line: [cvmfsexec] [container] payload, with markers between.
payload_argv() {
    local enter=("/bin/sh" "$DRONE_DIR/bin/enter") marks=$DRONE_DIR/stages repo
    local cvmfs_dirs=()
    for repo in "${CVMFS_REPOSITORIES[@]}"; do
        cvmfs_dirs+=("/cvmfs/$repo")
    done
    if [[ $CVMFS_ACTIVE_MODE == cvmfsexec ]]; then
        printf '%s\0' "$CVMFS_TOOLS/cvmfsexec" "${CVMFS_REPOSITORIES[@]}" -- \
            "${enter[@]}" "$marks/cvmfs" "${cvmfs_dirs[@]}" --
    fi
    if ((${#CONTAINER_ARGV[@]})); then
        printf '%s\0' "${CONTAINER_ARGV[@]}" "${enter[@]}" "$marks/container" --
        if [[ $CVMFS_ACTIVE_MODE != none ]]; then
            printf '%s\0' "${enter[@]}" "$marks/cvmfs-inside" "${cvmfs_dirs[@]}" --
        fi
    else
        printf '%s\0' env "${PAYLOAD_ENV[@]}"
    fi
    printf '%s\0' "${enter[@]}" "$marks/payload" -- "${PAYLOAD_ARGV[@]}"
}

# Which stage an ended payload command line failed in, as "CODE STAGE REASON".
payload_verdict() {
    local status=$1 marks=$DRONE_DIR/stages
    if [[ -e $marks/payload ]]; then
        if ((status == 0)); then
            echo "0 payload exited with status 0"
        else
            echo "$EXIT_PAYLOAD payload exited with status $status"
        fi
    elif [[ $CVMFS_ACTIVE_MODE == cvmfsexec && ! -e $marks/cvmfs ]]; then
        echo "$EXIT_CVMFS cvmfs cvmfsexec exited with status $status before" \
            "${CVMFS_REPOSITORIES[*]} were visible at /cvmfs"
    elif [[ $CVMFS_ACTIVE_MODE == singcvmfs && ! -e $marks/container ]]; then
        echo "$EXIT_CVMFS cvmfs singcvmfs exited with status $status before" \
            "the container started"
    elif ((${#CONTAINER_ARGV[@]})) && [[ ! -e $marks/container ]]; then
        echo "$EXIT_CONTAINER container ${CONTAINER_ARGV[0]} exited with status" \
            "$status before the payload started"
    elif ((${#CONTAINER_ARGV[@]})) && [[ $CVMFS_ACTIVE_MODE != none && ! -e $marks/cvmfs-inside ]]; then
        echo "$EXIT_CVMFS cvmfs ${CVMFS_REPOSITORIES[*]} not visible at /cvmfs" \
            "inside the container"
    else
        echo "$EXIT_PAYLOAD payload could not be started (status $status)"
    fi
}

# When cvmfsexec or singcvmfs mount around the payload, log the mount as the
# cvmfs stage once the layers are up (or the command line ended).
payload_track_layers() {
    local launched=$1 marks=$DRONE_DIR/stages
    case $CVMFS_ACTIVE_MODE in
    cvmfsexec | singcvmfs) ;;
    *) return 0 ;;
    esac
    wait_until $((CVMFS_MOUNT_TIMEOUT_S * 1000)) payload_layers_done
    if [[ -e $marks/payload ]]; then
        stage_ready cvmfs "$launched"
    fi
}

payload_layers_done() {
    [[ -e $DRONE_DIR/stages/payload ]] || process_gone "$PAYLOAD_PID"
}

payload_stop() {
    if [[ -n $PAYLOAD_PID ]] && ! process_gone "$PAYLOAD_PID"; then
        log "stopping the payload (process group $PAYLOAD_PID)"
        stop_process "-$PAYLOAD_PID" "$PAYLOAD_STOP_TIMEOUT_MS"
    fi
    kill -KILL -- "-$PAYLOAD_PID" 2>/dev/null
    PAYLOAD_PID=""
}

payload_stage() {
    local argv=() status verdict code launched
    payload_environment || fail payload "$EXIT_PAYLOAD" "cannot write the HTCondor config"
    if ((${#CONTAINER_ARGV[@]})); then
        container_env_file "${PAYLOAD_ENV[@]}" >"$DRONE_DIR/container.env" ||
            fail container "$EXIT_CONTAINER" "cannot write $DRONE_DIR/container.env"
    fi
    write_enter_helper || fail payload "$EXIT_PAYLOAD" "cannot write $DRONE_DIR/bin/enter"
    mapfile -d '' argv < <(payload_argv)
    # its own process group, so stopping it reaches every process it started
    launched=$(now_us)
    setsid "${argv[@]}" </dev/null &
    PAYLOAD_PID=$!
    CLEANUP+=(payload_stop)
    log "stage payload started: ${PAYLOAD_ARGV[*]} (pid $PAYLOAD_PID," \
        "$(seconds_since "$DRONE_START_US")s since start)"
    run_hook watchdog_report payload ok "pid $PAYLOAD_PID"
    payload_track_layers "$launched"
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
