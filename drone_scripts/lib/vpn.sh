# shellcheck shell=bash
# vpn.sh: stage vpn (network mode vpn): openconnect into the site's VPN
# server (ocserv, AnyConnect), inside the drone's private namespace
# (lib/netns.sh), so the payload's TCP and UDP leave through the VPN's tun
# device with no LD_PRELOAD and no other user of the node can use it.
# Why and how: docs/vpn.md; stages and exit codes: docs/drone-script.md.
#
# Two roles of lib/netns.sh take part:
#   init   (ns-root: CAP_NET_ADMIN in the namespace, needed for tun0) checks
#          the credential files, writes ns/vpn.script and runs openconnect
#          under lib/supervise.sh (label vpn; ns/vpn.restarts, ns/vpn.error,
#          ns/vpn.child). Our --script (ns/vpn.script, not vpnc-script) sets
#          tun0's address, MTU and routes (default via tun0 as 0/1 + 128/1,
#          the server and localnet via the outer link), resolv.conf from
#          INTERNAL_IP4_DNS, and ns/vpn.state: "up ADDRESS TRANSPORT" or
#          "down CLASS"; TRANSPORT (dtls or tls) is read from openconnect's
#          messages as they come (ns/vpn.transport).
#   drone  (the real uid, no capabilities) vpn_stage: waits for ns/vpn.state
#          up and a TCP connection to VPN_PROBE_HOST:VPN_PROBE_PORT through
#          the tun, then the rest of main() runs (cvmfs, payload ...).
# Without a namespace (the keeper's fallback, isolation: preferred, vpn.fallback
# ocproxy) stage vpn runs in the keeper itself: openconnect (no tun:
# --script-tun) hands its packets to ocproxy, openconnect's userspace stack, a
# SOCKS5 server on 127.0.0.1:VPN_SOCKS_PORT (chosen per drone from
# VPN_SOCKS_PORT_RANGE), supervised the same way; the payload reaches it with
# the preload chain (lib/chain.sh's library lookup and environment, the
# rendered write_proxychains_conf). Not isolated: other users of the node can
# use that port; static binaries and UDP are not captured (docs/vpn.md).
# Credentials never reach a command line, the environment or a log: the
# password is fed from its file with --passwd-on-stdin (a redirection made by
# bash), a client certificate and key are given by path; the files must be the
# drone user's, mode 0600 or 0400.
# Settings (group vpn): VPN_SERVER VPN_PORT VPN_SERVERCERT VPN_USER
# VPN_PASSWORD_FILE VPN_CERTIFICATE VPN_KEY VPN_AUTHGROUP VPN_DTLS VPN_PROTOCOL
# VPN_MTU VPN_RECONNECT_TIMEOUT VPN_DPD VPN_FALLBACK VPN_READY_TIMEOUT_MS
# VPN_INTERFACE VPN_ROUTE VPN_PROBE_HOST VPN_PROBE_PORT; the keeper's first
# hop is NS_FIRST_HOPS.

VPN_DEVICE=${VPN_INTERFACE:-tun0}
VPN_SUPERVISOR_PID="" # init (fallback: keeper): openconnect's supervisor
VPN_SOCKS_PORT=""     # fallback: ocproxy's SOCKS port on 127.0.0.1
VPN_SOCKS_ATTEMPTS=3  # fallback: ports tried when another process takes ours
# failure classes a start cannot heal by trying again: stage vpn fails at once
VPN_FATAL_CLASSES="|credentials|server certificate mismatch|server certificate untrusted|auth failed|"

# -- init role ------------------------------------------------------------------

# From netns_init_role (NETWORK_MODE vpn), after the nft rules and before the
# drone role: check the credential files, write our --script, start
# openconnect's supervisor. Never fails the init: a problem is written to
# ns/vpn.error and ns/vpn.state, and the drone role's stage vpn reports it.
vpn_init_start() {
    local problem
    NS_DIR=${NS_DIR:-$DRONE_DIR/ns}
    vpn_state "down starting"
    rm -f -- "$NS_DIR/vpn.transport" "$NS_DIR/vpn.error"
    if problem=$(vpn_credentials_problem); then
        vpn_error credentials "$problem"
        vpn_state "down credentials"
        log "vpn: not starting openconnect: $problem"
        return 0
    fi
    vpn_write_script || {
        vpn_error "script" "cannot write $NS_DIR/vpn.script"
        vpn_state "down script"
        return 0
    }
    vpn_supervisor_start
    log "vpn: ${VPN_ROUTE:-openconnect to $VPN_SERVER:$VPN_PORT} started (supervisor pid" \
        "$VPN_SUPERVISOR_PID; $(vpn_auth_text); DTLS $( ((VPN_DTLS)) && echo on || echo off))"
}

# openconnect under lib/supervise.sh (label vpn), in the background.
vpn_supervisor_start() {
    CLEANUP+=(vpn_init_stop)
    (
        # shellcheck disable=SC2034  # the SUPERVISE_* inputs are read by lib/supervise.sh
        {
            SUPERVISE_LABEL=vpn
            SUPERVISE_TARGETS=("$VPN_SERVER:$VPN_PORT")
            SUPERVISE_PROBES=("$(vpn_probe_endpoint)")
            SUPERVISE_NODE_STARTS=0
            SUPERVISE_RESTARTS_FILE=$NS_DIR/vpn.restarts
            SUPERVISE_ERROR_FILE=$NS_DIR/vpn.error
            SUPERVISE_CHILD_FILE=$NS_DIR/vpn.child
            SUPERVISE_READY_TIMEOUT_MS=$VPN_READY_TIMEOUT_MS
        }
        supervise_run vpn_command vpn_up vpn_classify
    ) </dev/null &
    VPN_SUPERVISOR_PID=$!
}

# The server's first hop for the supervisor's probe: the address the keeper
# resolved (ns/hops), else the configured name (/etc/hosts inside has it).
vpn_probe_endpoint() {
    local address="" port=""
    read -r address port 2>/dev/null <"$NS_DIR/hops"
    if [[ -n $address && -n $port ]]; then
        printf '%s:%s' "$address" "$port"
        return
    fi
    printf '%s:%s' "$VPN_SERVER" "$VPN_PORT"
}

vpn_auth_text() {
    if [[ -n ${VPN_PASSWORD_FILE:-} ]]; then
        printf 'user %s, password from %s' "${VPN_USER:-}" "$VPN_PASSWORD_FILE"
    else
        printf 'client certificate %s' "${VPN_CERTIFICATE:-}"
    fi
}

# The first problem with the credential files, on stdout (then true); false
# when they are fine. A password file or key that others can read is refused:
# it is the drone user's secret, on a shared file system.
vpn_credentials_problem() {
    local file
    if [[ -n ${VPN_PASSWORD_FILE:-} ]]; then
        file=$(expand_home "$VPN_PASSWORD_FILE")
        vpn_private_file_problem "$file" vpn.password_file && return 0
    fi
    if [[ -n ${VPN_KEY:-} ]]; then
        file=$(expand_home "$VPN_KEY")
        vpn_private_file_problem "$file" vpn.key && return 0
    fi
    if [[ -n ${VPN_CERTIFICATE:-} ]]; then
        file=$(expand_home "$VPN_CERTIFICATE")
        if [[ ! -f $file || ! -r $file ]]; then
            printf 'vpn.certificate %s is not a readable file: copy the client' "$file"
            printf ' certificate there, or correct vpn.certificate'
            return 0
        fi
    fi
    if [[ -z ${VPN_PASSWORD_FILE:-} && -z ${VPN_CERTIFICATE:-} ]]; then
        printf 'neither vpn.password_file nor vpn.certificate is set: set one'
        return 0
    fi
    return 1
}

# vpn_private_file_problem FILE KEY: the problem with a secret file, or false.
vpn_private_file_problem() {
    local file=$1 key=$2 mode
    if [[ ! -f $file ]]; then
        printf '%s %s does not exist or is not a regular file: create it (mode' "$key" "$file"
        printf ' 0600, owned by the drone user) or correct %s' "$key"
        return 0
    fi
    if [[ ! -O $file ]]; then
        printf '%s %s is not owned by the drone user (uid %s): chown it to that' \
            "$key" "$file" "${TNA_NS_UID:-$(id -u)}"
        printf ' user (or copy it as that user), mode 0600'
        return 0
    fi
    mode=$(stat -c %a -- "$file" 2>/dev/null)
    if [[ $mode != 600 && $mode != 400 ]]; then
        printf '%s %s has mode 0%s; it must be readable by the drone user only:' \
            "$key" "$file" "${mode:-?}"
        printf ' chmod 600 %s' "$file"
        return 0
    fi
    if [[ ! -r $file ]]; then
        printf '%s %s is not readable by the drone user: chmod 600 %s' "$key" "$file" "$file"
        return 0
    fi
    return 1
}

# openconnect's words for the supervisor (NUL-terminated): vpn_exec (below)
# first, so the password file is opened by bash as openconnect's stdin.
vpn_command() {
    local words=(vpn_exec openconnect --non-inter "--protocol=${VPN_PROTOCOL:-anyconnect}")
    if [[ -n $VPN_SOCKS_PORT ]]; then
        # the fallback: no tun; ocproxy (started by openconnect's --script-tun,
        # through our wrapper that records the address) is the stack
        words+=(--script-tun "--script=/bin/bash $(printf '%q' "$NS_DIR/vpn.fallback")")
    else
        words+=("--interface=$VPN_DEVICE" "--script=/bin/bash $(printf '%q' "$NS_DIR/vpn.script")")
    fi
    words+=("--reconnect-timeout=${VPN_RECONNECT_TIMEOUT:-30}")
    [[ -z ${VPN_SERVERCERT:-} ]] || words+=("--servercert=$VPN_SERVERCERT")
    [[ -z ${VPN_USER:-} ]] || words+=("--user=$VPN_USER")
    [[ -z ${VPN_AUTHGROUP:-} ]] || words+=("--authgroup=$VPN_AUTHGROUP")
    [[ -z ${VPN_PASSWORD_FILE:-} ]] || words+=(--passwd-on-stdin)
    [[ -z ${VPN_CERTIFICATE:-} ]] || words+=("--certificate=$(expand_home "$VPN_CERTIFICATE")")
    [[ -z ${VPN_KEY:-} ]] || words+=("--sslkey=$(expand_home "$VPN_KEY")")
    ((${VPN_DTLS:-1})) || words+=(--no-dtls)
    [[ -z ${VPN_DPD:-} || ${VPN_DPD:-0} == 0 ]] || words+=("--force-dpd=$VPN_DPD")
    [[ -z ${VPN_MTU:-} ]] || words+=("--base-mtu=$VPN_MTU")
    words+=("https://$VPN_SERVER:$VPN_PORT/")
    printf '%s\0' "${words[@]}"
}

# In the supervised child: the state says down until our --script says up,
# the password file is openconnect's stdin, and its messages (progress on
# stdout, errors on stderr) pass through vpn_output to the drone log.
vpn_exec() {
    local input=/dev/null pid=$BASHPID # openconnect's, once exec'd
    vpn_state "down connecting"
    rm -f -- "$NS_DIR/vpn.transport"
    [[ -z ${VPN_PASSWORD_FILE:-} ]] || input=$(expand_home "$VPN_PASSWORD_FILE")
    exec "$@" <"$input" > >(vpn_output "$pid") 2>&1
}

# vpn_output PID: openconnect's messages, line by line, to stderr (the
# supervisor's relay); the transport in use as openconnect reports it, into
# ns/vpn.transport (and ns/vpn.state while up). When openconnect sleeps
# between reconnect attempts (10 s at first, fixed in openconnect), the
# server is probed instead and openconnect woken (SIGUSR2) as soon as it
# answers: a restarted ocserv is back in about a second, not ten.
vpn_output() {
    local pid=$1 line transport="" nudger=""
    trap - EXIT HUP
    while IFS= read -r line || [[ -n $line ]]; do
        printf '%s\n' "$line" >&2
        case $line in
        "sleep "*"s, remaining timeout"*)
            if [[ -z $nudger ]] || process_gone "$nudger"; then
                vpn_nudge "$pid" &
                nudger=$!
            fi
            continue ;;
        *"Established DTLS connection"* | *"with SSL connected and DTLS connected"*)
            transport=dtls ;;
        *"DTLS handshake failed"* | *"DTLS handshake timed out"* | *"Failed to"*"DTLS"* | \
            *"DTLS Dead Peer Detection detected dead peer"* | *"SSL connected and DTLS disabled"* | \
            *"DTLS connection attempted"*"failed"*)
            transport=tls ;;
        *) continue ;;
        esac
        vpn_set_transport "$transport"
    done
}

# vpn_nudge PID: (background) probe the server until it answers, then wake
# openconnect (PID) from its reconnect sleep.
vpn_nudge() {
    local pid=$1 endpoint pause
    endpoint=$(vpn_probe_endpoint)
    while kill -0 "$pid" 2>/dev/null; do
        if supervise_probe "$endpoint"; then
            log "vpn: $endpoint answers again; openconnect reconnects now"
            kill -USR2 "$pid" 2>/dev/null
            return 0
        fi
        supervise_random pause "$((${SUPERVISE_PROBE_MAX_MS:-600} - ${SUPERVISE_PROBE_MIN_MS:-300}))"
        pause_ms "$((${SUPERVISE_PROBE_MIN_MS:-300} + pause))"
    done
}

# vpn_set_transport dtls|tls: record it, and in ns/vpn.state when it is up.
vpn_set_transport() {
    local state="" words=()
    printf '%s\n' "$1" >"$NS_DIR/vpn.transport.tmp.$BASHPID" &&
        mv -f -- "$NS_DIR/vpn.transport.tmp.$BASHPID" "$NS_DIR/vpn.transport"
    IFS= read -r state 2>/dev/null <"$NS_DIR/vpn.state"
    read -r -a words <<<"$state"
    if [[ ${words[0]:-} == up && ${words[2]:-} != "$1" ]]; then
        vpn_state "up ${words[1]:-} $1"
    fi
}

# Up once our --script wrote "up ..." for this start (vpn_exec and
# vpn_classify write "down ..." before and after each start).
vpn_up() {
    local state=""
    IFS= read -r state 2>/dev/null <"$NS_DIR/vpn.state"
    [[ $state == "up "* ]] || return 1
    [[ -z $VPN_SOCKS_PORT ]] || port_open "$VPN_SOCKS_PORT"
}

# vpn_classify STATUS ERRFILE WAS_UP: "CLASS<TAB>DETAIL" from openconnect's
# messages (connection classes as lib/supervise.sh knows them: the supervisor
# then waits for the server to answer); ns/vpn.state goes down with it.
vpn_classify() {
    local status=$1 file=$2 line last="" class="" detail="" pin=""
    while IFS= read -r line; do
        [[ -n ${line//[[:space:]]/} ]] || continue
        case $line in
        *"fingerprint(s) specified via --servercert match"*)
            pin=${line##*: }
            class="server certificate mismatch"
            detail="the server $VPN_SERVER:$VPN_PORT presents $pin, not vpn.servercert" 
            detail+=" ${VPN_SERVERCERT:-}: if the site changed its certificate, set"
            detail+=" vpn.servercert to the new pin after checking it with the site"
            ;;
        *"failed verification"*)
            [[ -n $class ]] || {
                class="server certificate untrusted"
                detail="the certificate of $VPN_SERVER:$VPN_PORT is not trusted: $line"
                detail+=" (set vpn.servercert to the server's pin-sha256)"
            } ;;
        *"Login failed"* | *"Authentication failed"* | *"User input required in non-interactive mode"* | \
            *"authentication error"*)
            [[ $class == "server certificate"* ]] || {
                class="auth failed"
                detail="$VPN_SERVER:$VPN_PORT refused the login of ${VPN_USER:-the client certificate}"
                detail+=" ($line): check vpn.user and the password file (or the certificate)"
            } ;;
        *"Connection refused"*) [[ -n $class ]] || { class="connection refused" && detail=$line; } ;;
        *"Network is unreachable"* | *"No route to host"*) [[ -n $class ]] || { class="no route" && detail=$line; } ;;
        *"timed out"*) [[ -n $class ]] || { class=timeout && detail=$line; } ;;
        *"getaddrinfo failed"* | *"Failed to resolve"*) [[ -n $class ]] || { class="name unknown" && detail=$line; } ;;
        *"Failed to open tun device"* | *"TUNSETIFF"*) class="tun failed" && detail=$line ;;
        *"ocproxy"*"ddress already in use"* | *"bind"*"ddress already in use"*)
            class="socks port taken" && detail=$line ;;
        esac
        last=$line
    done <"$file"
    if [[ -z $class ]]; then
        case $last in
        *"Cookie"* | *"cookie"*) class="session ended" ;;
        *"Reconnect failed"* | *"reconnect"*) class="reconnect failed" ;;
        *) class=exited ;;
        esac
        detail=${last:-exit status $status}
    fi
    vpn_state "down $class"
    printf '%s\t%s\n' "$class" "$detail"
}

# vpn_state TEXT: ns/vpn.state, replaced atomically (the watchdog reads it).
vpn_state() {
    printf '%s\n' "$1" >"$NS_DIR/vpn.state.tmp.$BASHPID" &&
        mv -f -- "$NS_DIR/vpn.state.tmp.$BASHPID" "$NS_DIR/vpn.state"
}

# vpn_error CLASS DETAIL: ns/vpn.error as lib/supervise.sh writes it.
vpn_error() {
    printf '%s\t%s\t%s\n' "$(($(now_us) / 1000000))" "$1" "${2//$'\t'/ }" \
        >"$NS_DIR/vpn.error.tmp" && mv -f -- "$NS_DIR/vpn.error.tmp" "$NS_DIR/vpn.error"
}

# ns/vpn.script: our --script, run by openconnect (through /bin/sh -c) as
# ns-root on connect, reconnect and disconnect. Its functions are this file's
# vpn_script_* (copied with declare -f), its values are put in as %q words.
vpn_write_script() {
    {
        printf '#!/bin/bash\n# openconnect --script of tardis-netadapter (lib/vpn.sh)\n'
        printf 'VPN_SCRIPT_DIR=%q\n' "$NS_DIR"
        printf 'VPN_SCRIPT_MTU=%q\n' "${VPN_MTU:-}"
        printf 'VPN_SCRIPT_LOCALNET=(%s)\n' "$(printf '%q ' "${NS_LOCALNET[@]}")"
        declare -f vpn_script_main vpn_script_outer_routes vpn_script_state
        printf 'vpn_script_main\n'
    } >"$NS_DIR/vpn.script.tmp" && mv -f -- "$NS_DIR/vpn.script.tmp" "$NS_DIR/vpn.script"
}

# (ns/vpn.script) openconnect's reason, INTERNAL_IP4_* and TUNDEV in the
# environment: tun0's address and MTU, the default route via tun0 (as 0/1
# and 128/1, so the outer link's own default route stays for the keeper's
# check and for pasta), the server and localnet via the outer link.
vpn_script_main() {
    local dev=${TUNDEV:-tun0} mtu transport="" dns
    case ${reason:-} in
    connect)
        vpn_script_outer_routes
        # the tunnel's MTU as openconnect and the server agreed it, not
        # vpn.mtu itself: that is the link's (--base-mtu), DTLS's overhead
        # above it (tun0 at vpn.mtu carried nothing: its packets were too big)
        mtu=${INTERNAL_IP4_MTU:-${VPN_SCRIPT_MTU:-1400}}
        ip link set dev "$dev" up mtu "$mtu" || exit 1
        ip -4 addr replace "$INTERNAL_IP4_ADDRESS/32" dev "$dev" || exit 1
        ip -4 route replace 0.0.0.0/1 dev "$dev" || exit 1
        ip -4 route replace 128.0.0.0/1 dev "$dev" || exit 1
        if [[ -n ${INTERNAL_IP4_DNS:-} ]]; then
            # in place: the file is bind-mounted on the namespace's /etc/resolv.conf
            for dns in $INTERNAL_IP4_DNS; do
                printf 'nameserver %s\n' "$dns"
            done >"$VPN_SCRIPT_DIR/resolv.conf"
        fi
        IFS= read -r transport 2>/dev/null <"$VPN_SCRIPT_DIR/vpn.transport"
        vpn_script_state "up $INTERNAL_IP4_ADDRESS ${transport:-tls}"
        ;;
    attempt-reconnect)
        vpn_script_state "down reconnecting"
        vpn_script_outer_routes # a restarted outer link lost them
        ;;
    reconnect)
        IFS= read -r transport 2>/dev/null <"$VPN_SCRIPT_DIR/vpn.transport"
        vpn_script_state "up ${INTERNAL_IP4_ADDRESS:-} ${transport:-tls}"
        ;;
    disconnect)
        vpn_script_state "down disconnected"
        ;;
    esac
    exit 0
}

# (ns/vpn.script) the server (VPNGATEWAY) and localnet via the outer link's
# default route, so they never go into the tun.
vpn_script_outer_routes() {
    local words=() via="" dev="" index net
    read -r -a words < <(ip -4 route show default 2>/dev/null | grep -v " dev ${TUNDEV:-tun0}")
    for ((index = 0; index < ${#words[@]} - 1; index++)); do
        case ${words[index]} in
        via) via=${words[index + 1]} ;;
        dev) dev=${words[index + 1]} ;;
        esac
    done
    [[ -n $dev ]] || return 0
    if [[ -n ${VPNGATEWAY:-} ]]; then
        ip -4 route replace "$VPNGATEWAY/32" ${via:+via "$via"} dev "$dev"
    fi
    for net in "${VPN_SCRIPT_LOCALNET[@]}"; do
        [[ $net != 127.* ]] || continue
        # add, not replace: a connected route of the outer link stays
        ip -4 route add "$net" ${via:+via "$via"} dev "$dev" 2>/dev/null
    done
    return 0
}

vpn_script_state() {
    printf '%s\n' "$1" >"$VPN_SCRIPT_DIR/vpn.state.tmp.$$" &&
        mv -f -- "$VPN_SCRIPT_DIR/vpn.state.tmp.$$" "$VPN_SCRIPT_DIR/vpn.state"
}

# Cleanup of the init role (the fallback: of the keeper), after the drone
# role ended: TERM to the supervisor, which ends openconnect (its BYE frees
# the server's session).
vpn_init_stop() {
    local child=""
    if [[ -n $VPN_SUPERVISOR_PID ]]; then
        stop_process "$VPN_SUPERVISOR_PID" 3000
        IFS= read -r child 2>/dev/null <"$NS_DIR/vpn.child"
        if [[ $child =~ ^[0-9]+$ ]] && ! process_gone "$child"; then
            kill -KILL "$child" 2>/dev/null
        fi
        VPN_SUPERVISOR_PID=""
    fi
    # the fallback: ocproxy ends once openconnect closed its socket (it is
    # openconnect's child, not the supervisor's): wait, KILL after 1 s
    child=""
    IFS= read -r child 2>/dev/null <"$NS_DIR/vpn.ocproxy"
    if [[ $child =~ ^[0-9]+$ ]] && ! wait_until 1000 process_gone "$child"; then
        kill -KILL "$child" 2>/dev/null
    fi
    rm -f -- "$NS_DIR/vpn.ocproxy"
}

# -- drone role -------------------------------------------------------------------

# Stage vpn: ready when ns/vpn.state is up and the collector answers through
# the tun. A failure no retry heals (a wrong pin, refused credentials) ends
# the drone with exit 25 at once, naming the fix.
vpn_stage() {
    local started class="" detail="" state
    started=$(now_us)
    NS_DIR=$DRONE_DIR/ns
    # for the watchdog (lib/watchdog.sh): the VPN's state, its supervisor's files
    # shellcheck disable=SC2034
    {
        TNA_VPN_STATE_FILE=$NS_DIR/vpn.state
        TNA_TUNNEL_ERROR_FILE=$NS_DIR/vpn.error
        TNA_TUNNEL_RESTARTS_FILE=$NS_DIR/vpn.restarts
        PATH_PROBE_PREFIX=()
    }
    if [[ ${CAPTURE_METHOD:-} != namespace || ${TNA_NS_ROLE:-} != drone ]]; then
        if [[ ${VPN_FALLBACK:-none} != ocproxy ]]; then
            fail vpn "$EXIT_VPN" "no private namespace for the VPN (capture" \
                "${CAPTURE_METHOD:-unset}) and vpn.fallback is" \
                "${VPN_FALLBACK:-none}: set vpn.fallback: ocproxy (openconnect's" \
                "userspace SOCKS with the preload chain, not isolated), or" \
                "isolation: required to fail in stage isolation"
        fi
        vpn_fallback_stage "$started"
        return
    fi
    if ! wait_until "$VPN_READY_TIMEOUT_MS" vpn_ready_or_fatal; then
        if vpn_fatal class detail; then
            fail vpn "$EXIT_VPN" "$class: $detail"
        fi
        IFS= read -r state 2>/dev/null <"$NS_DIR/vpn.state"
        stage_unready vpn "$EXIT_VPN" vpn_ready \
            "the VPN to $VPN_SERVER:$VPN_PORT is not up or the collector" \
            "$VPN_PROBE_HOST:$VPN_PROBE_PORT does not answer through it within" \
            "$((VPN_READY_TIMEOUT_MS / 1000))s (vpn ${state:-unknown}$(vpn_last_error))"
    elif vpn_fatal class detail; then
        fail vpn "$EXIT_VPN" "$class: $detail"
    fi
    IFS= read -r state 2>/dev/null <"$NS_DIR/vpn.state"
    read -r _ address transport _ <<<"$state"
    log "vpn: $VPN_DEVICE ${address:-?} through $VPN_SERVER:$VPN_PORT (${transport:-?})," \
        "the collector $VPN_PROBE_HOST:$VPN_PROBE_PORT answers through it"
    stage_ready vpn "$started"
}

vpn_last_error() {
    local line=""
    IFS= read -r line 2>/dev/null <"$NS_DIR/vpn.error"
    [[ -z $line ]] || printf '; last failure: %s' "${line#*$'\t'}"
}

# True when the stage is done waiting: ready, or failed for good.
vpn_ready_or_fatal() {
    vpn_fatal _ _ || vpn_ready
}

# The stage's readiness (also stage_unready's probe): state up and the
# collector answers (TCP, through the namespace's routes: the tun).
vpn_ready() {
    vpn_up || return 1
    # no collector configured (pool.collector ""): nothing to probe
    [[ -z $VPN_PROBE_HOST ]] || supervise_probe "$VPN_PROBE_HOST:$VPN_PROBE_PORT"
}

# vpn_fatal CLASSVAR DETAILVAR: true when ns/vpn.error names a fatal class.
vpn_fatal() {
    local __line="" __class __detail
    IFS= read -r __line 2>/dev/null <"$NS_DIR/vpn.error" || [[ -n $__line ]] || return 1
    __line=${__line#*$'\t'}
    __class=${__line%%$'\t'*}
    __detail=${__line#*$'\t'}
    [[ $VPN_FATAL_CLASSES == *"|$__class|"* ]] || return 1
    printf -v "$1" '%s' "$__class"
    printf -v "$2" '%s' "$__detail"
}

# -- the fallback without a namespace (keeper) ---------------------------------------

# Stage vpn where the keeper could not make a namespace (isolation: preferred,
# vpn.fallback ocproxy): openconnect with --script-tun and ocproxy as its
# stack, a SOCKS5 server on 127.0.0.1:VPN_SOCKS_PORT, supervised as inside;
# the payload's connections reach it through the preload chain. The same
# credential rules, pin, failure classes and exit code as the namespace's.
vpn_fallback_stage() {
    local started=$1 problem library attempt class="" detail="" state
    NS_DIR=$DRONE_DIR/ns
    mkdir -p -- "$NS_DIR" || fail vpn "$EXIT_VPN" "cannot create $NS_DIR"
    vpn_state "down starting"
    rm -f -- "$NS_DIR/vpn.transport" "$NS_DIR/vpn.error"
    for problem in openconnect ocproxy; do
        command -v "$problem" >/dev/null ||
            fail vpn "$EXIT_VPN" "$problem not found in PATH on $(hostname): the" \
                "fallback without a namespace needs it (install it, or set" \
                "isolation: required)"
    done
    if problem=$(vpn_credentials_problem); then
        fail vpn "$EXIT_VPN" "credentials: $problem"
    fi
    library=$(CHAIN_TOOL=proxychains chain_library) ||
        fail vpn "$EXIT_VPN" "no proxychains preload library found on $(hostname)" \
            "for the fallback without a namespace; install proxychains4 or set" \
            "vpn.library"
    [[ -f $library ]] || fail vpn "$EXIT_VPN" "preload library $library not found (vpn.library)"
    if [[ $CONTAINER_RUNTIME != none && -z $CHAIN_LIBRARY ]]; then
        # the container sees the work directory (bound) but not the host's /usr
        if ! { mkdir -p "$DRONE_DIR/lib" && cp -- "$library" "$DRONE_DIR/lib/"; }; then
            fail vpn "$EXIT_VPN" "cannot copy $library into $DRONE_DIR/lib"
        fi
        library=$DRONE_DIR/lib/${library##*/}
    fi
    for ((attempt = 1; ; attempt++)); do
        vpn_fallback_pick_port ||
            fail vpn "$EXIT_VPN" "no free port in vpn.port_range" \
                "${VPN_SOCKS_PORT_RANGE[*]} on 127.0.0.1 for ocproxy: widen it"
        vpn_fallback_start "$library"
        wait_until "$VPN_READY_TIMEOUT_MS" vpn_fallback_ready_or_fatal
        vpn_fatal class detail && fail vpn "$EXIT_VPN" "$class: $detail"
        if [[ $(vpn_fallback_port_owner) == foreign ]]; then
            # another process took the port before ocproxy did: never use
            # it (it may be another user's); a new port
            vpn_init_stop
            ((attempt < VPN_SOCKS_ATTEMPTS)) ||
                fail vpn "$EXIT_VPN" "socks port taken: another process listens on" \
                    "127.0.0.1:$VPN_SOCKS_PORT, the port chosen for ocproxy ($attempt" \
                    "ports tried); choose another vpn.port_range"
            log "vpn: 127.0.0.1:$VPN_SOCKS_PORT was taken by another process;" \
                "ocproxy gets another port"
            continue
        fi
        vpn_fallback_ready && break
        IFS= read -r state 2>/dev/null <"$NS_DIR/vpn.state"
        stage_unready vpn "$EXIT_VPN" vpn_fallback_ready \
            "the VPN to $VPN_SERVER:$VPN_PORT (ocproxy 127.0.0.1:$VPN_SOCKS_PORT)" \
            "is not up or the collector $VPN_PROBE_HOST:$VPN_PROBE_PORT does not" \
            "answer through it within $((VPN_READY_TIMEOUT_MS / 1000))s" \
            "(vpn ${state:-unknown}$(vpn_last_error))"
        break
    done
    IFS= read -r state 2>/dev/null <"$NS_DIR/vpn.state"
    read -r _ address transport _ <<<"$state"
    log "vpn: ocproxy 127.0.0.1:$VPN_SOCKS_PORT, ${address:-?} through" \
        "$VPN_SERVER:$VPN_PORT (${transport:-?}); the collector" \
        "$VPN_PROBE_HOST:$VPN_PROBE_PORT answers through it (preload" \
        "proxychains; not isolated: fallback without a namespace)"
    stage_ready vpn "$started"
}

# Write the fallback's files (ns/vpn.fallback, the proxychains configuration
# with the port) and start openconnect's supervisor; CHAIN_ENV is the
# payload's preload (lib/chain.sh's chain_environment adds it).
vpn_fallback_start() {
    local library=$1 conf=$DRONE_DIR/proxychains.conf text
    vpn_write_fallback ||
        fail vpn "$EXIT_VPN" "cannot write $NS_DIR/vpn.fallback"
    text=$(write_proxychains_conf)
    printf '%s\n' "${text//"@TARDIS_PORT_0@"/$VPN_SOCKS_PORT}" >"$conf" ||
        fail vpn "$EXIT_VPN" "cannot write $conf"
    CHAIN_ENV=("LD_PRELOAD=$library" "PROXYCHAINS_CONF_FILE=$conf")
    if ((${CHAIN_QUIET:-1})); then
        CHAIN_ENV+=(PROXYCHAINS_QUIET_MODE=1)
    fi
    # shellcheck disable=SC2034  # for the watchdog (lib/monitoring.sh)
    PATH_PROBE_PREFIX=(env "${CHAIN_ENV[@]}")
    vpn_state "down starting"
    vpn_supervisor_start
    log "vpn: fallback without a namespace: openconnect to $VPN_SERVER:$VPN_PORT" \
        "with ocproxy as its stack, SOCKS 127.0.0.1:$VPN_SOCKS_PORT (supervisor pid" \
        "$VPN_SUPERVISOR_PID; $(vpn_auth_text); DTLS $( ((VPN_DTLS)) && echo on || echo off))"
}

# ns/vpn.fallback: openconnect's --script with --script-tun (run through
# /bin/sh -c, the packets on the socket VPNFD): records the address in
# ns/vpn.state, then becomes ocproxy (-D: SOCKS5 on 127.0.0.1 only; -k: TCP
# keepalives on the payload's connections, within the firewall's timeout).
vpn_write_fallback() {
    {
        printf '#!/bin/bash\n# openconnect --script-tun of tardis-netadapter (lib/vpn.sh)\n'
        printf 'VPN_SCRIPT_DIR=%q\n' "$NS_DIR"
        printf 'VPN_SCRIPT_PORT=%q\n' "$VPN_SOCKS_PORT"
        printf 'VPN_SCRIPT_KEEPALIVE=%q\n' "${VPN_DPD:-15}"
        declare -f vpn_fallback_script vpn_script_state
        printf 'vpn_fallback_script\n'
    } >"$NS_DIR/vpn.fallback.tmp" && mv -f -- "$NS_DIR/vpn.fallback.tmp" "$NS_DIR/vpn.fallback"
}

# (ns/vpn.fallback) the state, then exec ocproxy; no routes, no tun.
vpn_fallback_script() {
    local transport="" tries
    # a restart: the last ocproxy lets go of the port as openconnect's end
    # closes its socket; wait for that (up to 3 s) rather than fail to bind
    for ((tries = 0; tries < 30; tries++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$VPN_SCRIPT_PORT") 2>/dev/null || break
        sleep 0.1
    done
    IFS= read -r transport 2>/dev/null <"$VPN_SCRIPT_DIR/vpn.transport"
    vpn_script_state "up ${INTERNAL_IP4_ADDRESS:-} ${transport:-tls}"
    printf '%s\n' "$$" >"$VPN_SCRIPT_DIR/vpn.ocproxy" # the keeper's stop waits for it
    exec ocproxy -D "$VPN_SCRIPT_PORT" -k "$VPN_SCRIPT_KEEPALIVE" </dev/null
}

# VPN_SOCKS_PORT: the next port of VPN_SOCKS_PORT_RANGE nothing listens on,
# starting at one derived from the job id (or the drone's uuid), as socks'
# auto ports: drones on one node spread over the range.
vpn_fallback_pick_port() {
    local low=${VPN_SOCKS_PORT_RANGE[0]:-20000} high=${VPN_SOCKS_PORT_RANGE[1]:-32767}
    local count seed tries port id=${TNA_JOB_ID:-} taken char index
    count=$((high - low + 1))
    if [[ $id =~ ^[0-9]{1,15}$ ]]; then
        seed=$((10#$id))
    else
        seed=5381
        for ((index = 0; index < ${#DRONE_UUID}; index++)); do
            printf -v char '%d' "'${DRONE_UUID:index:1}"
            seed=$(((seed * 33 + char) % 2147483647))
        done
    fi
    # a retry (another process took the port) moves on from the last one
    [[ -z $VPN_SOCKS_PORT ]] || seed=$((VPN_SOCKS_PORT - low + 1))
    taken=" $(vpn_listeners | while read -r port _ _; do printf '%s ' "$port"; done) "
    for ((tries = 0; tries < count; tries++)); do
        port=$((low + (seed + tries) % count))
        if [[ $taken != *" $port "* ]] && ! port_open "$port"; then
            VPN_SOCKS_PORT=$port
            return 0
        fi
    done
    return 1
}

# "PORT ADDRESS INODE" per listening TCP socket of this node (IPv4 and IPv6;
# the address as /proc/net writes it), from /proc/net/tcp{,6}.
vpn_listeners() {
    local _ local_address state inode
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        while read -r _ local_address _ state _ _ _ _ _ inode _; do
            [[ $state == 0A ]] || continue
            printf '%d %s %s\n' "$((16#${local_address##*:}))" "${local_address%:*}" "$inode"
        done
}

# Who listens on 127.0.0.1:VPN_SOCKS_PORT: "ours" (a process of openconnect's
# supervisor: ocproxy), "foreign" (anyone else: its SOCKS port must not be
# used, it could be another user's), or "none".
vpn_fallback_port_owner() {
    local port address inode link pid
    while read -r port address inode; do
        ((port == VPN_SOCKS_PORT)) || continue
        case $address in
        0100007F | 7F000001) ;;
        *) printf foreign && return ;; # ocproxy binds 127.0.0.1 only
        esac
        while IFS= read -r link; do
            pid=${link#/proc/}
            if pid_descends "${pid%%/*}" "$VPN_SUPERVISOR_PID"; then
                printf ours
                return
            fi
        done < <(find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\[$inode\]" 2>/dev/null)
        printf foreign
        return
    done < <(vpn_listeners)
    printf none
}

vpn_fallback_ready_or_fatal() {
    vpn_fatal _ _ || vpn_fallback_ready || [[ $(vpn_fallback_port_owner) == foreign ]]
}

# Ready: openconnect is up, ocproxy (ours) listens, and the collector answers
# through it, as the payload connects (bash under the same LD_PRELOAD).
vpn_fallback_ready() {
    vpn_up && [[ $(vpn_fallback_port_owner) == ours ]] || return 1
    [[ -n $VPN_PROBE_HOST ]] || return 0 # no collector configured: nothing to probe
    # shellcheck disable=SC2016  # $1 and $2 expand in the probing bash
    env "${CHAIN_ENV[@]}" timeout 10 bash -c 'exec 3<>"/dev/tcp/$1/$2"' \
        vpn-probe "$VPN_PROBE_HOST" "$VPN_PROBE_PORT" 2>/dev/null
}
