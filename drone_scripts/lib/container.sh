# shellcheck shell=bash
# container.sh: the apptainer/singularity command line around the payload.
# /cvmfs, the configured binds and the drone's work directory are bound; the
# chain's and HTCondor's environment go in through an --env-file, so the
# runtime itself never runs under the chain's LD_PRELOAD.

CONTAINER_ARGV=()
# Options any mode may add to the runtime's command line before the image
# (mode container-net: --net --network NAME); container.sh knows nothing of
# what they mean and places them after its own options.
CONTAINER_EXTRA_OPTIONS=()

# What the container adds to the payload (lib/payload.sh composes it): its
# command line, inside it the CVMFS check, and the payload's environment
# through an --env-file (the runtime itself never runs under the chain).
PAYLOAD_LAYERS+=(container_layer)
PAYLOAD_ENV_CARRIERS+=(container_carries_env)
PAYLOAD_BEFORE_START+=(container_write_env)
PAYLOAD_VERDICTS+=(container_verdict)

container_layer() {
    local dirs=()
    if ((${#CONTAINER_ARGV[@]})); then
        printf '%s\0' "${CONTAINER_ARGV[@]}"
        payload_enter container
        if [[ $CVMFS_ACTIVE_MODE != none ]]; then
            mapfile -d '' dirs < <(cvmfs_dirs)
            payload_enter cvmfs-inside "${dirs[@]}"
        fi
    fi
}

container_carries_env() {
    ((${#CONTAINER_ARGV[@]}))
}

container_write_env() {
    if ((${#CONTAINER_ARGV[@]})); then
        container_env_file "${PAYLOAD_ENV[@]}" >"$DRONE_DIR/container.env" ||
            fail container "$EXIT_CONTAINER" "cannot write $DRONE_DIR/container.env"
    fi
}

# STATUS: the runtime ended before the payload, or CVMFS was not inside.
container_verdict() {
    local status=$1 marks=$DRONE_DIR/stages
    if ((${#CONTAINER_ARGV[@]})) && [[ ! -e $marks/container ]]; then
        echo "$EXIT_CONTAINER container ${CONTAINER_ARGV[0]} exited with status" \
            "$status before the payload started"
    elif ((${#CONTAINER_ARGV[@]})) && [[ $CVMFS_ACTIVE_MODE != none && ! -e $marks/cvmfs-inside ]]; then
        echo "$EXIT_CVMFS cvmfs ${CVMFS_REPOSITORIES[*]} not visible at /cvmfs" \
            "inside the container"
    fi
}

container_stage() {
    local started
    started=$(now_us)
    if [[ $CONTAINER_RUNTIME == none ]]; then
        stage_skipped container "runtime none"
        return 0
    fi
    container_argv
    stage_ready container "$started"
}

# CONTAINER_ARGV: the runtime's command line up to the image (the payload's
# layers follow). Also used by modes that run a short container of their own
# with the same options (container-net's probe).
container_argv() {
    local image bind
    image=$(expand_home "$CONTAINER_IMAGE")
    if [[ $CVMFS_ACTIVE_MODE == singcvmfs ]]; then
        command -v singularity >/dev/null ||
            fail container "$EXIT_CONTAINER" "singcvmfs needs singularity in PATH"
        CONTAINER_ARGV=("$CVMFS_TOOLS/singcvmfs" exec)
    else
        container_runtime_path
        CONTAINER_ARGV=("$CONTAINER_RUNTIME_PATH" exec)
    fi
    if [[ $image != *://* && ! -e $image ]]; then
        fail container "$EXIT_CONTAINER" "image $image not found"
    fi
    if ((CONTAINER_CONTAIN)); then
        CONTAINER_ARGV+=(--contain)
    fi
    case ${CONTAINER_GPU:-none} in
    nvidia) CONTAINER_ARGV+=(--nv) ;;
    amd) CONTAINER_ARGV+=(--rocm) ;;
    esac
    case $CVMFS_ACTIVE_MODE in
    mountrepo) CONTAINER_ARGV+=(--bind "$CVMFS_ROOT:/cvmfs") ;;
    cvmfsexec) CONTAINER_ARGV+=(--bind /cvmfs) ;;
    esac
    for bind in "${CONTAINER_BINDS[@]}"; do
        CONTAINER_ARGV+=(--bind "$(expand_home "$bind")")
    done
    CONTAINER_ARGV+=("${CONTAINER_EXTRA_OPTIONS[@]}")
    CONTAINER_ARGV+=(--bind "$DRONE_DIR" --env-file "$DRONE_DIR/container.env" "$image")
}

# The runtime to run, into CONTAINER_RUNTIME_PATH: container.apptainer (the
# site-local installation, an absolute path) when set, else
# container.runtime (run by name, found on PATH). Fails the stage when it is not there,
# naming what was looked for. Mode container-net's probe uses it too.
CONTAINER_RUNTIME_PATH=""
container_runtime_path() {
    if [[ -n ${CONTAINER_APPTAINER:-} ]]; then
        [[ -x $CONTAINER_APPTAINER && ! -d $CONTAINER_APPTAINER ]] ||
            fail container "$EXIT_CONTAINER" "container.apptainer" \
                "$CONTAINER_APPTAINER is not an executable file on $(hostname)"
        CONTAINER_RUNTIME_PATH=$CONTAINER_APPTAINER
        return 0
    fi
    command -v "$CONTAINER_RUNTIME" >/dev/null ||
        fail container "$EXIT_CONTAINER" "$CONTAINER_RUNTIME not found in PATH"
    CONTAINER_RUNTIME_PATH=$CONTAINER_RUNTIME
}

# NAME=VALUE words as a file of shell assignments (apptainer's --env-file).
container_env_file() {
    local assignment
    for assignment in "$@"; do
        if [[ ${assignment%%=*} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
            printf '%s=%s\n' "${assignment%%=*}" "$(quote_value "${assignment#*=}")"
        fi
    done
}

# A value in single quotes, readable by any POSIX shell.
quote_value() {
    local value=$1 quote="'" escaped="'\\''"
    printf "'%s'" "${value//$quote/$escaped}"
}
