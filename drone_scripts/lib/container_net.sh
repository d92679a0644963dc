# shellcheck shell=bash
# container_net.sh: stage container-net (network mode container-net, the ALICE
# EPN way, issue 15). The host has no address on the site's public partition;
# only the payload's container gets one, from the site's own apptainer
# network configuration (`--net --network NAME`, a CNI plugin such as
# ib-sriov-cni behind it) run by the site-local setuid apptainer
# (container.apptainer). The drone adds no tunnel and no LD_PRELOAD.
#
# The stage:
#   1. adds --net --network NAME [--network-args ARG]... to the container's
#      command line through lib/container.sh's generic CONTAINER_EXTRA_OPTIONS;
#   2. runs ONE short probe container with exactly those options whose
#      command is the reporter, once. A user the site's apptainer.conf does
#      not allow (`allow net users/groups/networks`) gets apptainer's own
#      FATAL line here, in stage container-net (exit 45), before any payload
#      container exists;
#   3. is ready when the probe's report is ok: the container's interface has
#      an address in container_net.subnet, the check target (pool.collector
#      or container_net.check_target) answers and, with address_echo, the
#      echo saw the container's own address.
# The payload's container then runs the same reporter in the background
# (started by its entry layer before the payload, every MONITORING_INTERVAL
# seconds) into $DRONE_DIR/container-net.state; the watchdog re-reads that
# file every round (a stale one counts as failing) and puts it into the
# record's "container_net" object (docs/monitoring.md).
# Settings (group container_net): CNET_NETWORK CNET_NETWORK_ARGS CNET_SUBNET
# CNET_CHECK_HOST CNET_CHECK_PORT CNET_ADDRESS_ECHO CNET_CHECK_TIMEOUT_S
# CNET_READY_TIMEOUT_MS CNET_INTERVAL_S.

# the last report's result (cnet_report_once)
CNET_OK=0
CNET_ADDRESS=""
CNET_SEEN=""
CNET_REASON=""
# where reports go (the stage sets it; the reporter gets it as its argument)
CNET_STATE_FILE=""

# cnet_ip_int ADDRESS VAR: the dotted IPv4 ADDRESS as a number (false if none).
cnet_ip_int() {
    local __a=$1 __o1 __o2 __o3 __o4
    [[ $__a =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || return 1
    __o1=${BASH_REMATCH[1]} __o2=${BASH_REMATCH[2]} __o3=${BASH_REMATCH[3]} __o4=${BASH_REMATCH[4]}
    ((10#$__o1 < 256 && 10#$__o2 < 256 && 10#$__o3 < 256 && 10#$__o4 < 256)) || return 1
    printf -v "$2" '%s' "$(((10#$__o1 << 24) + (10#$__o2 << 16) + (10#$__o3 << 8) + 10#$__o4))"
}

# cnet_in_subnet ADDRESS NET/LEN: true when ADDRESS is in the IPv4 network.
cnet_in_subnet() {
    local address=$1 net=${2%/*} len=${2#*/} a n mask
    cnet_ip_int "$address" a || return 1
    cnet_ip_int "$net" n || return 1
    [[ $len =~ ^[0-9]+$ ]] && ((len <= 32)) || return 1
    mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
    (((a & mask) == (n & mask)))
}

# The container's global IPv4 addresses, one a line: `ip` where the image
# has it, else the kernel's own table (/proc/net/fib_trie's local host
# entries), which every image has.
cnet_addresses() {
    local line prev="" out
    if out=$(ip -4 -o addr show scope global 2>/dev/null) && [[ -n $out ]]; then
        while IFS= read -r line; do
            [[ $line =~ inet\ ([0-9.]+)/ ]] && printf '%s\n' "${BASH_REMATCH[1]}"
        done <<<"$out"
        return 0
    fi
    [[ -r /proc/net/fib_trie ]] || return 0
    while IFS= read -r line; do
        if [[ $line == *"/32 host LOCAL"* && $prev =~ ([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+) ]]; then
            [[ ${BASH_REMATCH[1]} == 127.* ]] || printf '%s\n' "${BASH_REMATCH[1]}"
        fi
        prev=$line
    done </proc/net/fib_trie | sort -u
}

# address: the container's interface has an address in the partition.
cnet_check_address() {
    local address found=()
    mapfile -t found < <(cnet_addresses)
    for address in "${found[@]}"; do
        if cnet_in_subnet "$address" "$CNET_SUBNET"; then
            CNET_ADDRESS=$address
            return 0
        fi
    done
    CNET_REASON="no address in container_net.subnet $CNET_SUBNET on the container's"
    CNET_REASON+=" interfaces (has: ${found[*]:-none}); network $CNET_NETWORK gave none"
    return 1
}

# cnet_timeout S COMMAND...: COMMAND with a time limit (coreutils' timeout
# where the image has it).
cnet_timeout() {
    local seconds=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout -k 1 "$seconds" "$@"
    else
        "$@"
    fi
}

# connect: TCP to the check target from the container's own network.
cnet_check_connect() {
    local err rc=0 timeout_s=${CNET_CHECK_TIMEOUT_S:-5}
    # shellcheck disable=SC2016 # $1 and $2 expand in the probing shell
    err=$(cnet_timeout "$timeout_s" "${BASH:-bash}" -c 'exec 3<>"/dev/tcp/$1/$2"' \
        cnet-connect "$CNET_CHECK_HOST" "$CNET_CHECK_PORT" 2>&1 >/dev/null) || rc=$?
    ((rc == 0)) && return 0
    ((rc == 124 || rc == 137)) && err="timeout after ${timeout_s}s"
    err=${err%$'\n'}
    err=${err##*$'\n'}
    CNET_REASON="TCP connect from $CNET_ADDRESS to $CNET_CHECK_HOST:$CNET_CHECK_PORT"
    CNET_REASON+=" failed: ${err#*/dev/tcp/*: }"
    return 1
}

# address echo: the service saw the container's own address (nothing else
# proves that the pool sees the partition's address and not a NAT's).
cnet_check_echo() {
    local url=$CNET_ADDRESS_ECHO rest host port path answer="" rc=0 body
    local timeout_s=${CNET_CHECK_TIMEOUT_S:-5}
    rest=${url#http://}
    host=${rest%%/*}
    path=/
    [[ $rest != */* ]] || path=/${rest#*/}
    port=80
    if [[ $host == *:* ]]; then
        port=${host##*:}
        host=${host%:*}
    fi
    # shellcheck disable=SC2016 # expanded in the fetching shell
    answer=$(cnet_timeout "$timeout_s" "${BASH:-bash}" -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$3" "$1" >&3
        cat <&3 2>/dev/null || true' cnet-echo "$host" "$port" "$path" 2>&1) || rc=$?
    if ((rc != 0)) || [[ $answer != HTTP/* ]]; then
        ((rc == 124 || rc == 137)) && answer="timeout after ${timeout_s}s"
        answer=${answer%$'\n'}
        CNET_REASON="address echo $url did not answer: ${answer##*$'\n'}"
        return 1
    fi
    body=${answer#*$'\r\n\r\n'}
    [[ $body != "$answer" ]] || body=${answer#*$'\n\n'}
    [[ $body =~ ([0-9]{1,3}(\.[0-9]{1,3}){3}) ]] && CNET_SEEN=${BASH_REMATCH[1]}
    if [[ $CNET_SEEN != "$CNET_ADDRESS" ]]; then
        CNET_REASON="address echo $url saw us as ${CNET_SEEN:-nothing}, expected the"
        CNET_REASON+=" container's address $CNET_ADDRESS"
        return 1
    fi
}

# One report: every check in order (a later one is not run once one failed),
# the result written to STATE_FILE as
# "ok|fail<TAB>ADDRESS<TAB>SEEN<TAB>REASON" (tmp + mv: the watchdog may read
# it at the same moment). True when ok.
cnet_report_once() {
    local file=${1:-$CNET_STATE_FILE} state=fail
    CNET_OK=0 CNET_ADDRESS="" CNET_SEEN="" CNET_REASON=""
    if cnet_check_address && cnet_check_connect; then
        if [[ -z $CNET_ADDRESS_ECHO ]] || cnet_check_echo; then
            CNET_OK=1
        fi
    fi
    ((CNET_OK)) && state=ok
    if [[ -n $file ]]; then
        printf '%s\t%s\t%s\t%s\n' "$state" "$CNET_ADDRESS" "$CNET_SEEN" \
            "${CNET_REASON//[$'\t\n']/ }" >"$file.${BASHPID:-$$}" 2>/dev/null &&
            mv -f -- "$file.${BASHPID:-$$}" "$file" 2>/dev/null
    fi
    ((CNET_OK))
}

# The reporter's main (inside a container): `--once STATE_FILE` reports once
# (the probe container; its status is the report's); `--background
# STATE_FILE -- COMMAND...` reports now and every CNET_INTERVAL_S seconds in
# the background for as long as COMMAND (which it becomes) lives.
cnet_reporter_main() {
    local how=$1 file=$2 parent
    case $how in
    --once)
        cnet_report_once "$file"
        return
        ;;
    --background)
        shift 3
        parent=$$
        (
            trap - TERM INT
            while kill -0 "$parent" 2>/dev/null; do
                cnet_report_once "$file" || true
                sleep "${CNET_INTERVAL_S:-30}" &
                wait $! || true
            done
        ) </dev/null >/dev/null 2>&1 &
        exec "$@"
        ;;
    esac
    echo "cnet-report: usage: --once FILE | --background FILE -- COMMAND..." >&2
    return 2
}

# The reporter as a stand-alone bash script (the functions above and their
# settings, as `declare` prints them): it runs inside the containers, which
# see $DRONE_DIR at the same path.
cnet_write_reporter() {
    {
        printf '#!/bin/bash\n# the container-net reporter of drone %s (lib/container_net.sh)\n' \
            "$DRONE_UUID"
        declare -p CNET_NETWORK CNET_SUBNET CNET_CHECK_HOST CNET_CHECK_PORT \
            CNET_ADDRESS_ECHO CNET_CHECK_TIMEOUT_S CNET_INTERVAL_S
        printf 'CNET_OK=0 CNET_ADDRESS="" CNET_SEEN="" CNET_REASON="" CNET_STATE_FILE=""\n'
        declare -f cnet_ip_int cnet_in_subnet cnet_addresses cnet_check_address \
            cnet_timeout cnet_check_connect cnet_check_echo cnet_report_once \
            cnet_reporter_main
        printf 'cnet_reporter_main "$@"\n'
    } >"$DRONE_DIR/bin/cnet-report.$$" && mv -f "$DRONE_DIR/bin/cnet-report.$$" \
        "$DRONE_DIR/bin/cnet-report"
}

# The payload's layer (registered by the stage, so it comes after lib/
# container.sh's: inside the container): the reporter in the background,
# then the rest of the line.
container_net_layer() {
    if ((${#CONTAINER_ARGV[@]})); then
        printf '%s\0' /bin/bash "$DRONE_DIR/bin/cnet-report" --background \
            "$CNET_STATE_FILE" --
    fi
}

# The probe container's result of the last cnet_probe (its last stderr line
# when it did not report).
CNET_PROBE_ERROR=""
CNET_PROBE_ARGV=()

# One short probe container with the payload's container options: the
# reporter, once. False with CNET_PROBE_ERROR when the container did not
# run (apptainer refused it) and CNET_REASON when it ran and failed.
cnet_probe() {
    local out rc=0
    CNET_PROBE_ERROR=""
    rm -f -- "$CNET_STATE_FILE"
    out=$(cnet_timeout "$(((CNET_READY_TIMEOUT_MS + 999) / 1000))" \
        "${CNET_PROBE_ARGV[@]}" 2>&1 </dev/null) || rc=$?
    if [[ -s $CNET_STATE_FILE ]]; then
        cnet_read_state "$CNET_STATE_FILE"
        ((rc == 0)) && return 0
        [[ -n $CNET_REASON ]] || CNET_REASON="the reporter exited with status $rc"
        return 1
    fi
    out=${out%$'\n'}
    # apptainer's own words (FATAL: ...) name what the site refused
    if [[ $out == *FATAL* ]]; then
        out=${out##*FATAL}
        out="FATAL${out%%$'\n'*}"
    else
        out=${out##*$'\n'}
    fi
    CNET_PROBE_ERROR="the probe container (${CNET_PROBE_ARGV[0]} exec --net --network"
    CNET_PROBE_ERROR+=" $CNET_NETWORK) did not start, status $rc: ${out:-no output}"
    CNET_REASON=$CNET_PROBE_ERROR
    return 1
}

# cnet_read_state FILE: CNET_ADDRESS, CNET_SEEN, CNET_REASON from a report
# (split by hand: a tab is IFS white space, so read would merge empty fields).
cnet_read_state() {
    local line=""
    IFS= read -r line <"$1" || [[ -n $line ]] || return 1
    [[ $line == *$'\t'*$'\t'*$'\t'* ]] || return 1
    line=${line#*$'\t'}
    CNET_ADDRESS=${line%%$'\t'*}
    line=${line#*$'\t'}
    CNET_SEEN=${line%%$'\t'*}
    CNET_REASON=${line#*$'\t'}
}

# For wait_until and stage_unready/watchdog_wait: the probe again, at most
# once a second. True also when apptainer refused the container (that does
# not heal by waiting: the stage then fails with CNET_PROBE_ERROR).
cnet_probe_ok() {
    cnet_probe && return 0
    [[ -z $CNET_PROBE_ERROR ]] || return 0
    sleep 1
    return 1
}

# Stage container-net.
container_net_stage() {
    local started arg seen
    started=$(now_us)
    if [[ $CONTAINER_RUNTIME == none ]]; then
        fail container-net "$EXIT_CONTAINER_NET" "mode container-net needs a" \
            "container (container.runtime, container.image)"
    fi
    CONTAINER_EXTRA_OPTIONS+=(--net --network "$CNET_NETWORK")
    for arg in "${CNET_NETWORK_ARGS[@]}"; do
        CONTAINER_EXTRA_OPTIONS+=(--network-args "$arg")
    done
    CNET_STATE_FILE=$DRONE_DIR/container-net.state
    mkdir -p "$DRONE_DIR/bin"
    cnet_write_reporter ||
        fail container-net "$EXIT_CONTAINER_NET" "cannot write $DRONE_DIR/bin/cnet-report"
    # the probe: the payload's container line (lib/container.sh) with the
    # reporter as its command; its --env-file must exist
    container_argv
    : >>"$DRONE_DIR/container.env"
    CNET_PROBE_ARGV=("${CONTAINER_ARGV[@]}" /bin/bash "$DRONE_DIR/bin/cnet-report"
        --once "$CNET_STATE_FILE")
    CONTAINER_ARGV=()
    # for the watchdog (lib/watchdog.sh): the reports' file and how old a
    # report may be before the reporter counts as gone. It probes no pool
    # endpoint itself: the worker has no way out (the partition is the
    # container's alone), the reporter inside the container probes the pool
    # shellcheck disable=SC2034
    {
        TNA_CNET_STATE_FILE=$CNET_STATE_FILE
        TNA_CNET_STALE_S=$((3 * ${CNET_INTERVAL_S:-30}))
        TNA_POOL_ENDPOINTS=""
    }
    PAYLOAD_LAYERS+=(container_net_layer)
    if ! cnet_probe; then
        if [[ -n $CNET_PROBE_ERROR ]]; then
            fail container-net "$EXIT_CONTAINER_NET" "$CNET_PROBE_ERROR"
        fi
        if ! wait_until "${CNET_READY_TIMEOUT_MS:-60000}" cnet_probe_ok; then
            stage_unready container-net "$EXIT_CONTAINER_NET" cnet_probe_ok "$CNET_REASON"
        fi
        if [[ -n $CNET_PROBE_ERROR ]]; then
            fail container-net "$EXIT_CONTAINER_NET" "$CNET_PROBE_ERROR"
        fi
    fi
    seen="the address the pool sees is not checked (no container_net.address_echo)"
    [[ -z $CNET_SEEN ]] || seen="the pool sees it as $CNET_SEEN"
    log "container-net: the container gets $CNET_ADDRESS on network $CNET_NETWORK" \
        "($CNET_SUBNET), $CNET_CHECK_HOST:$CNET_CHECK_PORT answers, $seen"
    stage_ready container-net "$started"
}

# check --probe's job (tardis_netadapter/modes/container_net.py): one
# "NAME ok|fail DETAIL" line per check of the site's apptainer.
#   cnet:setuid   the apptainer (or its libexec starter-suid) is setuid root
#   cnet:allow    apptainer.conf's allow net users/groups admit the user and
#                 allow net networks the network
#   cnet:network  <sysconfdir>/network/NAME.conflist exists
cnet_site_probe() {
    local app=${CONTAINER_APPTAINER:-} prefix conf_dir conf starter user groups line
    local key value users="" grps="" nets="" ok_user=0 ok_net=0 name
    if [[ -z $app ]]; then
        app=$(command -v "$CONTAINER_RUNTIME" 2>/dev/null) || {
            echo "cnet:setuid fail $CONTAINER_RUNTIME not found in PATH"
            return 0
        }
    fi
    app=$(readlink -f -- "$app" 2>/dev/null || printf '%s' "$app")
    prefix=${app%/bin/*}
    starter=$prefix/libexec/apptainer/bin/starter-suid
    [[ -e $starter ]] || starter=$prefix/libexec/singularity/bin/starter-suid
    if [[ -u $app && $(stat -c %u -- "$app" 2>/dev/null) == 0 ]]; then
        echo "cnet:setuid ok $app is setuid root"
    elif [[ -u $starter && $(stat -c %u -- "$starter" 2>/dev/null) == 0 ]]; then
        echo "cnet:setuid ok $starter is setuid root"
    else
        echo "cnet:setuid fail neither $app nor $starter is setuid root: apptainer" \
            "cannot configure a container network for an unprivileged user"
    fi
    conf_dir=""
    for conf in "$prefix/etc/apptainer" "$prefix/etc/singularity" /etc/apptainer \
        /etc/singularity; do
        if [[ -r $conf/apptainer.conf || -r $conf/singularity.conf ]]; then
            conf_dir=$conf
            break
        fi
    done
    if [[ -z $conf_dir ]]; then
        echo "cnet:allow fail no apptainer.conf under $prefix/etc/apptainer or /etc/apptainer"
        echo "cnet:network fail no apptainer configuration directory"
        return 0
    fi
    conf=$conf_dir/apptainer.conf
    [[ -r $conf ]] || conf=$conf_dir/singularity.conf
    while IFS= read -r line; do
        line=${line%%#*}
        [[ $line =~ ^[[:space:]]*allow\ net\ (users|groups|networks)[[:space:]]*=[[:space:]]*(.*)$ ]] || continue
        key=${BASH_REMATCH[1]}
        value=${BASH_REMATCH[2]//,/ }
        case $key in
        users) users+=" $value" ;;
        groups) grps+=" $value" ;;
        networks) nets+=" $value" ;;
        esac
    done <"$conf"
    user=$(id -un 2>/dev/null || id -u)
    groups=" $(id -Gn 2>/dev/null) "
    for name in $users; do
        [[ $name == "$user" || $name == "$(id -u)" ]] && ok_user=1
    done
    for name in $grps; do
        [[ $groups == *" $name "* ]] && ok_user=1
    done
    for name in $nets; do
        [[ $name == "$CNET_NETWORK" ]] && ok_net=1
    done
    if ((ok_user && ok_net)); then
        echo "cnet:allow ok $conf allows network $CNET_NETWORK to $user"
    elif ((!ok_user)); then
        echo "cnet:allow fail $conf: allow net users (${users# }) and allow net groups" \
            "(${grps# }) admit neither $user nor its groups"
    else
        echo "cnet:allow fail $conf: allow net networks (${nets# }) does not list $CNET_NETWORK"
    fi
    if [[ -r $conf_dir/network/$CNET_NETWORK.conflist ]]; then
        echo "cnet:network ok $conf_dir/network/$CNET_NETWORK.conflist"
    else
        echo "cnet:network fail $conf_dir/network/$CNET_NETWORK.conflist does not exist"
    fi
}
