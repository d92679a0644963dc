# shellcheck shell=bash
# common.sh: exit codes, log lines, timing and cleanup shared by every stage.
# Plain bash (no template syntax): configured values reach it only through the
# quoted settings block of drone.sh.j2.

# One exit code per stage (docs/drone-script.md); 128+N for a signal.
# shellcheck disable=SC2034  # isolation, tunnel, chain: mode socks's libraries; vpn: mode vpn's; route: mode nat's; container-net: mode container-net's
readonly EXIT_SETUP=5 EXIT_CVMFS=10 EXIT_ISOLATION=15 EXIT_TUNNEL=20 EXIT_VPN=25 EXIT_CHAIN=30 \
    EXIT_ROUTE=35 EXIT_CONTAINER_NET=45
readonly EXIT_CONTAINER=40 EXIT_PAYLOAD=50

DRONE_UUID=${TardisDroneUuid:-}
DRONE_DIR=""
DRONE_START_US=""
CLEANUP=()

# What the stages add to the payload: each library registers its functions
# here when it is inserted, in library order (the first layer is outermost);
# lib/payload.sh composes them, so a mode adds wrappers without editing it.
#   PAYLOAD_ENVIRONMENT   functions appending NAME=VALUE words to PAYLOAD_ENV
#   PAYLOAD_LAYERS        functions printing the words (NUL-terminated) of a
#                         command put before the payload that runs the rest
#   PAYLOAD_ENV_CARRIERS  functions true when their layer takes the payload's
#                         environment itself (then no `env` before the payload)
#   PAYLOAD_BEFORE_START  functions run just before the payload starts
#   PAYLOAD_STARTED       functions run once it started (PID, start time)
#   PAYLOAD_VERDICTS      functions printing "CODE STAGE REASON" when their
#                         layer ended the command line (STATUS), else nothing
PAYLOAD_ENVIRONMENT=()
PAYLOAD_LAYERS=()
PAYLOAD_ENV_CARRIERS=()
PAYLOAD_BEFORE_START=()
PAYLOAD_STARTED=()
PAYLOAD_VERDICTS=()

# The drone's path to the pool as its network mode set it up, for the watchdog:
# the words a probe is run with to go the payload's way (e.g. env LD_PRELOAD=...)
# and a process whose death means the path is down (a tunnel's supervisor).
# shellcheck disable=SC2034  # read by lib/monitoring.sh (monitoring enabled)
PATH_PROBE_PREFIX=()
# shellcheck disable=SC2034
PATH_SUPERVISOR_PID=""

# Microseconds since the epoch, without a fork (bash 5's EPOCHREALTIME).
now_us() {
    local now=${EPOCHREALTIME:-}
    if [[ -z $now ]]; then
        date +%s%6N
        return
    fi
    printf '%s' "${now/[.,]/}"
}

# VAR = microseconds since the epoch, without a subshell where bash has
# EPOCHREALTIME (polling loops call it often).
clock_us() {
    local __clock=${EPOCHREALTIME:-} # a name no caller passes as VAR
    if [[ -z $__clock ]]; then
        __clock=$(date +%s%6N)
    fi
    printf -v "$1" '%s' "${__clock/[.,]/}"
}

# Seconds with two decimals since a now_us timestamp.
seconds_since() {
    local elapsed=$(($(now_us) - $1))
    printf '%d.%02d' $((elapsed / 1000000)) $((elapsed % 1000000 / 10000))
}

# One timestamped line on stderr (the batch system puts it into the job's output).
log() {
    local now=${EPOCHREALTIME:-}
    if [[ -z $now ]]; then
        now=$(date +%s.%N)
    fi
    local seconds=${now%[.,]*} fraction=${now#*[.,]}
    printf '%(%Y-%m-%dT%H:%M:%S)T.%s%(%z)T tardis-netadapter drone %s: %s\n' \
        "$seconds" "${fraction:0:3}" "$seconds" "${DRONE_UUID:-unknown}" "$*" >&2
}

# The one line naming the failed stage, then the stage's exit code.
fail() {
    local stage=$1 code=$2
    log "stage $stage failed: ${*:3}"
    run_hook watchdog_report "$stage" failed "${*:3}"
    exit "$code"
}

# A path stage (tunnel, chain) whose readiness probe did not succeed in time:
# STAGE CODE PROBE MESSAGE... Without monitoring the drone ends with the
# stage's exit code. With monitoring it waits for the stage instead while the
# watchdog's records name it, so the adapter decides (never-connected after
# its connect deadline, with the failing stage shown by `status`) and a hop
# that comes back late still gives a working drone.
stage_unready() {
    local stage=$1 code=$2 probe=$3
    if declare -F watchdog_wait >/dev/null; then
        log "stage $stage not ready: ${*:4}; retrying until it works or the" \
            "adapter ends the drone"
        watchdog_wait "$stage" "$probe" "${*:4}"
        return 0
    fi
    fail "$stage" "$code" "${@:4}"
}

# The line a stage logs when it is up, with its own and the script's time.
stage_ready() {
    local stage=$1 started=$2
    log "stage $stage ready after $(seconds_since "$started")s" \
        "($(seconds_since "$DRONE_START_US")s since start)"
    run_hook watchdog_report "$stage" ok
}

stage_skipped() {
    local stage=$1
    log "stage $stage skipped: ${*:2}"
    run_hook watchdog_report "$stage" skipped "${*:2}"
}

# Call a function if a sourced extension (e.g. lib/watchdog.sh) defines it.
run_hook() {
    if declare -F "$1" >/dev/null; then
        "$@"
    fi
}

# ~/x -> $HOME/x, so configured paths may be written relative to the home.
expand_home() {
    local path=$1
    if [[ $path == \~ || $path == \~/* ]]; then
        path=$HOME${path:1}
    fi
    printf '%s' "$path"
}

# Sleep MS milliseconds without starting a process: a read that times out on
# a pipe nobody writes to. Many drones polling on one node would otherwise
# fork a `sleep` (and a subshell for its argument) several times a second each.
PAUSE_FD=""
pause_ms() {
    local seconds
    if [[ -z $PAUSE_FD ]]; then
        exec {PAUSE_FD}<> <(:)
    fi
    printf -v seconds '%d.%03d' $(($1 / 1000)) $(($1 % 1000))
    read -r -t "$seconds" -u "$PAUSE_FD" _ || true
}

# Poll a command until it succeeds or the deadline (ms) passes: every 50 ms
# at first, doubling up to 400 ms, so that drones starting together on one
# node spend little of its CPU on polling.
wait_until() {
    local timeout_ms=$1 now deadline interval_ms=50
    shift
    clock_us now
    deadline=$((now + timeout_ms * 1000))
    until "$@"; do
        clock_us now
        if ((now >= deadline)); then
            return 1
        fi
        pause_ms "$interval_ms"
        interval_ms=$((interval_ms >= 200 ? 400 : interval_ms * 2))
    done
}

# True while something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True when PID is ANCESTOR or descends from it (parents from /proc/PID/stat).
pid_descends() {
    local pid=$1 ancestor=$2 stat
    while [[ $pid =~ ^[0-9]+$ ]] && ((pid > 1)); do
        if ((pid == ancestor)); then
            return 0
        fi
        IFS= read -r stat 2>/dev/null <"/proc/$pid/stat" || return 1
        stat=${stat##*") "} # past "PID (COMM) ": "STATE PPID ..."
        stat=${stat#* }
        pid=${stat%% *}
    done
    return 1
}

# Stop a process (and, with -g, its process group): TERM, then KILL.
stop_process() {
    local target=$1 pid=${1#-} grace_ms=${2:-5000}
    kill -TERM -- "$target" 2>/dev/null || return 0
    if ! wait_until "$grace_ms" process_gone "$pid"; then
        kill -KILL -- "$target" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

# True when PID has ended, also when it is a zombie its parent has not
# reaped yet (a child ending while its parent runs a trap: kill -0 still
# succeeds, and a stop would wait its whole grace for nothing).
process_gone() {
    local stat
    kill -0 "$1" 2>/dev/null || return 0
    IFS= read -r stat 2>/dev/null <"/proc/$1/stat" || return 0
    stat=${stat##*") "}
    [[ ${stat%% *} == Z ]]
}

# True when no process of process group PGID is left but zombies (a
# wrapper such as cvmfsexec may leave helpers that clean up after the
# command it ran; a zombie is gone, its parent reaps it).
group_gone() {
    local entry stat state
    kill -0 -- "-$1" 2>/dev/null || return 0
    for entry in /proc/[0-9]*/stat; do
        IFS= read -r stat 2>/dev/null <"$entry" || continue
        stat=${stat##*") "} # "STATE PPID PGRP ..."
        state=${stat%% *}
        stat=${stat#* }
        stat=${stat#* }
        if [[ ${stat%% *} == "$1" && $state != Z ]]; then
            return 1
        fi
    done
    return 0
}

# Undo everything in reverse order of setup; runs once, on any exit.
# TERM, INT and HUP stay trapped (and do nothing) while it runs: scancel
# signals every process of the job at once, so a role of lib/netns.sh gets
# a TERM from the batch system and another from the role that started it; with the
# default action back, the second would kill it in the middle of stopping
# what it started (the payload's cvmfsexec then never cleaned up).
drone_cleanup() {
    local status=$? index
    trap - EXIT
    trap : TERM INT HUP
    for ((index = ${#CLEANUP[@]} - 1; index >= 0; index--)); do
        "${CLEANUP[index]}"
    done
    # inside a namespace (lib/netns.sh) the directory is the keeper's
    if [[ -z ${TNA_NS_ROLE:-} && -n $DRONE_DIR && -d $DRONE_DIR ]]; then
        rm -rf -- "$DRONE_DIR"
    fi
    log "exiting with status $status${TNA_NS_ROLE:+ (namespace role $TNA_NS_ROLE)}"
    exit "$status"
}

drone_signalled() {
    local signal=$1 code=$2
    log "received SIG$signal: stopping${TNA_NS_ROLE:+ (namespace role $TNA_NS_ROLE)}"
    exit "$code"
}

# Traps, the per-drone identity from the environment and the work directory.
drone_setup() {
    DRONE_START_US=$(now_us)
    trap drone_cleanup EXIT
    trap 'drone_signalled TERM 143' TERM
    trap 'drone_signalled INT 130' INT
    trap 'drone_signalled HUP 129' HUP
    if [[ ! $DRONE_UUID =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
        fail setup "$EXIT_SETUP" "TardisDroneUuid is unset or not a plain name:" \
            "'$DRONE_UUID' (the adapter exports it with sbatch --export)"
    fi
    local name value
    for name in TardisDroneCores TardisDroneMemory TardisDroneDisk TardisDroneWalltime; do
        value=${!name:-}
        if [[ -n $value && ! $value =~ ^[0-9]+$ ]]; then
            fail setup "$EXIT_SETUP" "$name='$value' is not a whole number"
        fi
    done
    if [[ -n ${TNA_NS_ROLE:-} ]]; then
        # the init and drone roles of lib/netns.sh run again inside the
        # namespace: they adopt the keeper's directory (which removes it)
        DRONE_DIR=${TNA_NS_DIR:-}
        [[ -n $DRONE_DIR && -d $DRONE_DIR ]] ||
            fail setup "$EXIT_SETUP" "TNA_NS_DIR '$DRONE_DIR' is not a directory" \
                "(role $TNA_NS_ROLE)"
    else
        DRONE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tardis-drone.$DRONE_UUID.XXXXXX") ||
            fail setup "$EXIT_SETUP" "cannot create a work directory in ${TMPDIR:-/tmp}"
    fi
    mkdir -p "$DRONE_DIR/stages" "$DRONE_DIR/bin"
    run_hook watchdog_setup
    log "drone of site $SITE_NAME, machine type $MACHINE_TYPE, network mode" \
        "$NETWORK_MODE, on $(hostname)," \
        "job ${TNA_JOB_ID:-none}, work directory $DRONE_DIR${TNA_NS_ROLE:+ (namespace role $TNA_NS_ROLE)}"
}
