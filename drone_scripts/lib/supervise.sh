# shellcheck shell=bash
# supervise.sh: keep one long-running connection command up (ssh for the
# tunnel today, openconnect later). Generic: the caller gives functions for
# the command, for "it is up" and for classifying a failure.
#
# Why not autossh: its back-off is fixed and jitter-free, so after a login
# node outage the tunnels came back 16 s late, all at once; it hides its
# restarts and its failures. This loop:
# - while the first hop does not answer (refused, timeout, no route, unknown
#   name) it moves to the next target, and when every target is down it
#   probes each target's first hop (a TCP connect, bash /dev/tcp under
#   timeout) every SUPERVISE_PROBE_MIN_MS..MAX_MS (jittered) and reconnects
#   as soon as one answers, after a random spread of 0..SUPERVISE_SPREAD_MS
#   so many drones do not reach sshd's MaxStartups together;
# - other failures (the hop answers but refuses us, drops us, or the command
#   ends) wait a capped exponential back-off with full jitter:
#   random(0, min(CAP, BASE * 2^n)) ms, n failures in a row; a start that
#   came up resets n;
# - SIGUSR1 kills the current command and reconnects at once (the watchdog
#   sends it when probes through a living tunnel fail);
# - every start after the first appends "EPOCH_US STATUS CLASS" to
#   SUPERVISE_RESTARTS_FILE; the last failure is "EPOCH<TAB>CLASS<TAB>DETAIL"
#   in SUPERVISE_ERROR_FILE, removed once a start is up;
# - the command's stderr goes on to ours (the drone log) line by line.
# Worst case from the hop's return to a new start: the connect timeout of an
# attempt in flight, or a back-off of at most CAP, then one probe interval and
# the spread (tardis_netadapter/modes/socks.py: reconnect_bound, in grace).
#
# Inputs (set before supervise_run; the times in milliseconds):
#   SUPERVISE_TARGETS      array: names given to the command function, in order
#   SUPERVISE_PROBES       array: HOST:PORT of each target's first hop ([v6]:P
#                          allowed); an empty element: that target is not probed
#   SUPERVISE_RESTARTS_FILE, SUPERVISE_ERROR_FILE   files as above
#   SUPERVISE_CHILD_FILE   file that gets the current command's pid (optional)
#   SUPERVISE_LABEL        word for log lines (default "supervisor")
#   SUPERVISE_PROBE_MIN_MS, SUPERVISE_PROBE_MAX_MS, SUPERVISE_PROBE_TIMEOUT_MS,
#   SUPERVISE_SPREAD_MS, SUPERVISE_BACKOFF_BASE_MS, SUPERVISE_BACKOFF_CAP_MS,
#   SUPERVISE_READY_TIMEOUT_MS (a start not up by then is ended: timeout)
# supervise_run COMMAND READY CLASSIFY:
#   COMMAND TARGET   prints the command's words, each NUL-terminated
#   READY            true once the started command is up (polled every 100 ms)
#   CLASSIFY STATUS ERRFILE WAS_UP   prints "CLASS<TAB>DETAIL" for an ended
#                    start (ERRFILE: its stderr; WAS_UP 1 when it had been up)
# Connection-level classes (move to the next target, then probe):
SUPERVISE_CONNECTION_CLASSES="|connection refused|timeout|no route|name unknown|"
# classes where the hop answered but sent us away before use (next target,
# with back-off: the hop is busy, not down)
SUPERVISE_DROPPED_CLASSES="|dropped at MaxStartups|"

SUPERVISE_CHILD=""
SUPERVISE_FORCED=0
SUPERVISE_FAILURES=0
# rounds the last supervise_wait_hop probed before a hop answered (0: at once)
SUPERVISE_PROBE_ROUNDS=0

# supervise_random OUTVAR MAX: a random whole number in 0..MAX (inclusive),
# from the kernel where bash has SRANDOM (5.1), else from two $RANDOMs.
supervise_random() {
    local __max=$(($2)) __value
    if ((__max <= 0)); then
        printf -v "$1" '%d' 0
        return
    fi
    if [[ -n ${SRANDOM:-} ]]; then
        __value=$SRANDOM
    else
        __value=$((RANDOM * 32768 + RANDOM))
    fi
    printf -v "$1" '%d' $((__value % (__max + 1)))
}

# supervise_sleep_ms MS: sleep that long (0: not at all), without a process
# (pause_ms, lib/common.sh).
supervise_sleep_ms() {
    (($1 > 0)) || return 0
    pause_ms "$1"
}

# This node's start slots: at most SUPERVISE_NODE_STARTS commands of this
# user's drones on a node are between their start and "up" at one time. sshd
# counts unauthenticated connections against MaxStartups (default 10:30:100,
# dropping at random above 10): drones that start together on a node (a batch
# of jobs, or all of them after an outage) take turns instead of racing. A
# slot is an flock(1) on a file in a directory only this user owns; waiting
# blocks in the kernel (no polling) and never longer than
# SUPERVISE_SLOT_WAIT_MS, so a stuck holder cannot stop a drone; a slot is
# given back once the command is up, has ended, or after SUPERVISE_SLOT_HOLD_MS.
SUPERVISE_SLOT_FD=""

# supervise_slot_take: wait for one of this node's start slots (see above).
supervise_slot_take() {
    local slots=${SUPERVISE_NODE_STARTS:-3} wait_ms=${SUPERVISE_SLOT_WAIT_MS:-8000}
    local dir=${TMPDIR:-/tmp}/tardis-netadapter-starts-$EUID slot seconds
    ((slots > 0)) && command -v flock >/dev/null || return 0
    if [[ ! -d $dir ]]; then
        mkdir -m 700 -- "$dir" 2>/dev/null
    fi
    # someone else's (or a link): no slots rather than a lock others control
    [[ -d $dir && ! -L $dir && -O $dir ]] || return 0
    supervise_random slot "$((slots - 1))"
    exec {SUPERVISE_SLOT_FD}>>"$dir/slot.$slot" || {
        SUPERVISE_SLOT_FD=""
        return 0
    }
    printf -v seconds '%d.%03d' $((wait_ms / 1000)) $((wait_ms % 1000))
    flock -w "$seconds" "$SUPERVISE_SLOT_FD" || true # waited enough: go anyway
}

# supervise_slot_give: give this node's start slot back (closing the lock's fd).
supervise_slot_give() {
    if [[ -n $SUPERVISE_SLOT_FD ]]; then
        exec {SUPERVISE_SLOT_FD}>&-
        SUPERVISE_SLOT_FD=""
    fi
}

# supervise_backoff OUTVAR FAILURES: full jitter, random(0, min(CAP, BASE*2^n)).
supervise_backoff() {
    local __n=$2 __limit=${SUPERVISE_BACKOFF_BASE_MS:-200}
    local __cap=${SUPERVISE_BACKOFF_CAP_MS:-10000}
    while ((__n > 0 && __limit < __cap)); do
        __limit=$((__limit * 2))
        __n=$((__n - 1))
    done
    ((__limit <= __cap)) || __limit=$__cap
    supervise_random "$1" "$__limit"
}

# supervise_probe HOST:PORT: true when a TCP connection to it is accepted
# within SUPERVISE_PROBE_TIMEOUT_MS. Closed at once: sshd sees a client that
# leaves before its banner, which costs it nothing lasting.
supervise_probe() {
    local endpoint=$1 host port ms=${SUPERVISE_PROBE_TIMEOUT_MS:-1000}
    [[ -n $endpoint ]] || return 1
    host=${endpoint%:*}
    port=${endpoint##*:}
    host=${host#[}
    host=${host%]}
    # shellcheck disable=SC2016  # $1 and $2 expand in the probing shell
    timeout -k 1 "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))" \
        "${BASH:-bash}" -c 'exec 3<>"/dev/tcp/$1/$2"' supervise-probe "$host" "$port" \
        2>/dev/null
}

# supervise_wait_hop OUTVAR FIRST: probe every target's first hop, starting at
# index FIRST, at a jittered interval until one answers: its index in OUTVAR.
# Targets without a probe address count as answering (nothing to wait for).
supervise_wait_hop() {
    local __count=${#SUPERVISE_TARGETS[@]} __k __j __pause
    SUPERVISE_PROBE_ROUNDS=0
    while :; do
        for ((__k = 0; __k < __count; __k++)); do
            __j=$((($2 + __k) % __count))
            if [[ -z ${SUPERVISE_PROBES[__j]:-} ]] ||
                supervise_probe "${SUPERVISE_PROBES[__j]}"; then
                printf -v "$1" '%d' "$__j"
                if ((SUPERVISE_PROBE_ROUNDS > 0)); then
                    log "${SUPERVISE_LABEL:-supervisor}: ${SUPERVISE_PROBES[__j]:-target} answers again"
                fi
                return 0
            fi
        done
        if ((SUPERVISE_FORCED)); then # SIGUSR1 while waiting: try at once
            SUPERVISE_FORCED=0
            printf -v "$1" '%d' "$2"
            return 0
        fi
        SUPERVISE_PROBE_ROUNDS=$((SUPERVISE_PROBE_ROUNDS + 1))
        local __low=${SUPERVISE_PROBE_MIN_MS:-300} __high=${SUPERVISE_PROBE_MAX_MS:-600}
        supervise_random __pause "$((__high - __low))"
        supervise_sleep_ms "$((__low + __pause))"
    done
}

# supervise_relay ERRFILE: copy stdin to stderr (the drone log) and ERRFILE,
# then mark ERRFILE complete (ERRFILE.done): the classifier reads it whole.
supervise_relay() {
    local line
    supervise_slot_give # inherited from the supervisor: the lock is not ours to hold
    while IFS= read -r line || [[ -n $line ]]; do
        printf '%s\n' "$line" >&2
        printf '%s\n' "$line" >>"$1"
    done
    : >"$1.done"
}

# supervise_error CLASS DETAIL: the last failure for the watchdog's heartbeat.
supervise_error() {
    local file=${SUPERVISE_ERROR_FILE:-} detail=${2//$'\t'/ }
    [[ -n $file ]] || return 0
    printf '%s\t%s\t%s\n' "$(($(now_us) / 1000000))" "$1" "${detail//$'\n'/ }" \
        >"$file.tmp" && mv -f -- "$file.tmp" "$file"
}

# The SIGUSR1 handler: end the current start; the loop starts again at once.
supervise_force() {
    SUPERVISE_FORCED=1
    if [[ -n $SUPERVISE_CHILD ]]; then
        kill -TERM "$SUPERVISE_CHILD" 2>/dev/null
    fi
}

# supervise_exec WORD...: the command, without the start slot's descriptor.
# A shell function (the tests' stand-in commands) runs in this subshell.
supervise_exec() {
    supervise_slot_give
    if declare -F "$1" >/dev/null; then
        "$@"
        exit
    fi
    exec "$@"
}

# supervise_run COMMAND READY CLASSIFY: the loop (see the top of this file).
# Runs until TERM/INT (then ends the command and exits 0).
supervise_run() {
    local command=$1 ready=$2 classify=$3 label=${SUPERVISE_LABEL:-supervisor}
    local count=${#SUPERVISE_TARGETS[@]} index=0 starts=0 argv=() status
    local errfile up deadline class detail line delay forced tried=0
    local now started interval
    local ready_ms=${SUPERVISE_READY_TIMEOUT_MS:-30000}
    # next to the error file (the drone's work directory, removed at its exit)
    local dir=${SUPERVISE_ERROR_FILE%/*}
    [[ -n ${SUPERVISE_ERROR_FILE:-} && -d $dir ]] || dir=${TMPDIR:-/tmp}
    errfile=$(mktemp "$dir/.supervise-stderr.XXXXXX") || return 1
    trap - EXIT HUP
    trap 'supervise_force' USR1
    trap 'SUPERVISE_FORCED=0; [[ -n $SUPERVISE_CHILD ]] && stop_process "$SUPERVISE_CHILD" 2000; rm -f -- "$errfile" "$errfile.done"; exit 0' TERM INT
    while :; do
        mapfile -d '' argv < <("$command" "${SUPERVISE_TARGETS[index]}")
        : >"$errfile"
        rm -f -- "$errfile.done"
        starts=$((starts + 1))
        SUPERVISE_FORCED=0 # a SIGUSR1 before this start is served by it
        supervise_slot_take
        # the command must not hold the slot's lock for its whole life
        supervise_exec "${argv[@]}" </dev/null 2> >(supervise_relay "$errfile") &
        SUPERVISE_CHILD=$!
        if [[ -n ${SUPERVISE_CHILD_FILE:-} ]]; then # for the caller's READY
            printf '%s\n' "$SUPERVISE_CHILD" >"$SUPERVISE_CHILD_FILE"
        fi
        up=0
        clock_us now
        started=$now
        deadline=$((now + ready_ms * 1000))
        interval=50
        while kill -0 "$SUPERVISE_CHILD" 2>/dev/null && ((!SUPERVISE_FORCED)); do
            if "$ready"; then
                up=1
                break
            fi
            clock_us now
            if ((now - started >= ${SUPERVISE_SLOT_HOLD_MS:-3000} * 1000)); then
                supervise_slot_give # a slow start does not hold up the node's others
            fi
            if ((now >= deadline)); then
                log "$label: ${SUPERVISE_TARGETS[index]} not up after $((ready_ms / 1000))s; ending it"
                kill -TERM "$SUPERVISE_CHILD" 2>/dev/null
                break
            fi
            pause_ms "$interval"
            interval=$((interval >= 100 ? 200 : interval * 2))
        done
        supervise_slot_give
        if ((up)); then
            SUPERVISE_FAILURES=0
            tried=0
            rm -f -- "${SUPERVISE_ERROR_FILE:-/nonexistent}"
            if ((starts > 1)); then
                log "$label: up again through ${SUPERVISE_TARGETS[index]} (start $starts)"
            fi
        fi
        while :; do # wait returns early when a trap ran (SIGUSR1)
            wait "$SUPERVISE_CHILD"
            status=$?
            if ((status > 128)) && kill -0 "$SUPERVISE_CHILD" 2>/dev/null; then
                continue
            fi
            break
        done
        SUPERVISE_CHILD=""
        forced=$SUPERVISE_FORCED
        SUPERVISE_FORCED=0
        # the relay has the whole stderr once the command's copies are closed
        wait_until 1000 test -e "$errfile.done"
        if ((forced)); then
            class=forced
            detail="reconnect forced (SIGUSR1)"
        else
            line=$("$classify" "$status" "$errfile" "$up")
            class=${line%%$'\t'*}
            detail=${line#*$'\t'}
            supervise_error "$class" "$detail"
        fi
        delay=0
        if ((!forced)); then
            SUPERVISE_FAILURES=$((SUPERVISE_FAILURES + 1))
            supervise_backoff delay "$SUPERVISE_FAILURES"
        fi
        if ((forced || up)); then
            delay=0 # it was up until now (or we ended it): straight back
        elif [[ $SUPERVISE_CONNECTION_CLASSES == *"|$class|"* ]]; then
            # the hop does not answer: no back-off, the next target at once,
            # and when every target failed, wait for a first hop to answer
            delay=0
            tried=$((tried + 1))
            index=$(((index + 1) % count))
            if ((tried >= count)); then
                log "$label: $class ($detail); waiting for a first hop to answer"
                supervise_wait_hop index "$index"
                tried=0
                supervise_random delay "${SUPERVISE_SPREAD_MS:-1000}"
                if ((SUPERVISE_PROBE_ROUNDS == 0)); then
                    # it answered at once (a busy sshd, a flaky route): the
                    # back-off keeps us from hammering it
                    local more
                    supervise_backoff more "$SUPERVISE_FAILURES"
                    delay=$((delay + more))
                fi
            fi
        elif [[ $SUPERVISE_DROPPED_CLASSES == *"|$class|"* ]]; then
            index=$(((index + 1) % count)) # busy: another target, with back-off
        fi
        log "$label: ${argv[0]} exited with status $status ($class: $detail);" \
            "starting again through ${SUPERVISE_TARGETS[index]} in ${delay}ms"
        # one line per start after the first: the watchdog counts them
        printf '%s %s %s\n' "$(now_us)" "$status" "$class" >>"${SUPERVISE_RESTARTS_FILE:-/dev/null}"
        supervise_sleep_ms "$delay"
    done
}
