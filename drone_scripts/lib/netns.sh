# shellcheck shell=bash
# netns.sh: stage isolation (mode socks, chain.capture namespace): the drone's
# tunnel and payload run in a private user + network namespace, so no other
# user of the node can reach the drone's local ports, and every TCP connection
# of the payload is captured by the kernel (nft) instead of LD_PRELOAD.
# Why and how: docs/capture.md; stages and exit codes: docs/drone-script.md.
#
# The one rendered script runs three times, told apart by TNA_NS_ROLE:
#   keeper (empty)  the batch job, outside: checks that namespaces work,
#                   writes ns/*, starts `unshare` (the init role) and the
#                   outer link (pasta or slirp4netns, supervised), reports the
#                   link's state in ns/outer.state, waits; never returns
#   init            PID 1 of the new PID namespace, ns-root: loopback, /etc
#                   mounts, nft rules, ns/isolation and ns/leaks, then starts
#                   the drone role demoted to the real uid and waits for it
#   drone           nested user namespace, the real uid, no capabilities over
#                   the network namespace: waits for the outer link, checks
#                   that UDP cannot leave, and main() goes on (tunnel, chain..)
# Settings (group capture): CAPTURE_METHOD ISOLATION NS_OUTER NS_MTU NS_CIDR
# NS_READY_TIMEOUT_MS NS_LOCALNET CHAIN_REDSOCKS; config function
# write_capture_nft (the keeper fills in @TARDIS_HOPS@). The first hops (what
# the outer link carries) are NS_FIRST_HOPS when set (mode vpn: the VPN
# server), else TUNNEL_FIRST_HOPS (mode socks).
#
# Mode vpn (lib/vpn.sh): the init role also starts openconnect (vpn_init_start)
# before the drone role, and needs openconnect instead of redsocks; without a
# namespace the keeper's fallback is vpn.fallback (ocproxy: lib/vpn.sh's
# vpn_fallback_stage, in the keeper).

# this script's own file, copied to ns/drone.sh for the init and drone roles
# (captured when the library is read: inside a function BASH_SOURCE differs)
NS_SELF=${BASH_SOURCE[0]:-$0}
NS_DIR=""
NS_TOOL=""          # pasta or slirp4netns (keeper; TNA_NS_TOOL inside)
NS_UNSHARE_PID=""   # keeper: the unshare process (its net ns is the drone's)
NS_INIT_PID=""      # keeper: the init role's pid as the worker sees it
NS_OUTER_PID=""     # keeper: the outer link's supervisor
NS_REAPER_PID=""    # keeper: stops init and the outer link if the keeper dies
NS_DRONE_PID=""     # init: the drone role
NS_LEAKS_PID=""     # init: the ns/leaks writer
NS_HOPS=()          # keeper: first hops as resolved "ADDR PORT"
NS_HOST_LINES=()    # keeper: "ADDR NAME" of first hops given by name
NS_OUTER_STATE=""   # keeper: last state written to ns/outer.state
NS_GUARD_EVERY_MS=5000 # keeper: how often netns_outer_guard looks again
# slirp4netns (libslirp 4.7) above this MTU carried 0.26-0.31 Gbit/s of a
# 1 Gbit/s link with one stream, 0.96 at 9000-16384 (docs/benchmarks.md)
NS_SLIRP_MTU_MAX=16384
# tcp_retries2 inside the namespace: a connection whose data goes unacked
# for ~25 s (RTO 0.2 s doubling 6 times) ends with ETIMEDOUT instead of
# backing off for 15 min. Seen with pasta: after a burst of 10 streams the
# tunnel's ssh connection sat at RTO 52 s, backoff 8, for 100 s, and the
# login's occasional replies kept ssh's ServerAlive from ever firing; ssh
# must fail so that its supervisor reconnects.
NS_TCP_RETRIES2=6
# Nested stop graces, each longer than the one inside it, so that no role
# kills what it started while that is still stopping what it started: the
# drone role waits for the payload (PAYLOAD_STOP_TIMEOUT_MS), init for the
# drone role (2 s more: tunnel, chain) and then for the rest of its PID
# namespace (1 s more), the keeper (and its reaper) for init (1 s more).
NS_DRONE_GRACE_MS=$((${PAYLOAD_STOP_TIMEOUT_MS:-20000} + 2000))
NS_INIT_GRACE_MS=$((NS_DRONE_GRACE_MS + 1000))
NS_KEEPER_GRACE_MS=$((NS_INIT_GRACE_MS + 1000))

isolation_stage() {
    NS_DIR=$DRONE_DIR/ns
    case ${TNA_NS_ROLE:-} in
    init) netns_init_role ;;
    drone) netns_drone_role ;;
    *) netns_keeper_role ;;
    esac
}

# -- keeper ---------------------------------------------------------------------

# The keeper: decide namespace or preload, and in the namespace case run the
# rest of the drone inside it (this function then ends the script).
netns_keeper_role() {
    local started reason
    started=$(now_us)
    mkdir -p -- "$NS_DIR" || fail isolation "$EXIT_ISOLATION" "cannot create $NS_DIR"
    if [[ ${CAPTURE_METHOD:-preload} != namespace ]]; then
        netns_write_isolation preload "$(netns_preload_tool)" ""
        stage_skipped isolation "capture preload"
        return 0
    fi
    if ! reason=$(netns_available); then
        if [[ $ISOLATION == required ]]; then
            netns_write_isolation preload none "$reason"
            fail isolation "$EXIT_ISOLATION" "$reason (isolation: required)"
        fi
        CAPTURE_METHOD=preload
        netns_write_isolation preload "$(netns_preload_tool)" "$reason"
        stage_skipped isolation "$reason; capture falls back to preload" \
            "($(netns_preload_tool))"
        return 0
    fi
    NS_TOOL=$(netns_outer_tool)
    netns_prepare
    CLEANUP+=(netns_keeper_stop)
    netns_spawn
    netns_outer_start
    if ! wait_until "$NS_READY_TIMEOUT_MS" netns_outer_up_or_ended; then
        fail isolation "$EXIT_ISOLATION" "the outer link ($NS_TOOL) is not up after" \
            "$((NS_READY_TIMEOUT_MS / 1000))s; see its messages above"
    fi
    if ! kill -0 "$NS_UNSHARE_PID" 2>/dev/null; then
        netns_keeper_wait # the drone inside failed early (it said why): its status
    fi
    netns_outer_guard
    log "isolation: namespace ready after $(seconds_since "$started")s" \
        "(outer link $NS_TOOL, unshare pid $NS_UNSHARE_PID, init pid $NS_INIT_PID)"
    netns_keeper_wait
}

# The preload tool the chain stage uses (ns/isolation's TOOL of a preload drone);
# mode vpn: its fallback (ocproxy, with the preload chain to it; lib/vpn.sh).
netns_preload_tool() {
    if [[ ${NETWORK_MODE:-} == vpn ]]; then
        printf '%s' "${VPN_FALLBACK:-none}"
        return
    fi
    printf '%s' "${CHAIN_TOOL:-none}"
}

# ns/isolation: METHOD<TAB>TOOL<TAB>REASON, read by the watchdog's record.
netns_write_isolation() {
    local reason=${3//[$'\t\n']/ }
    mkdir -p -- "$DRONE_DIR/ns" 2>/dev/null
    printf '%s\t%s\t%s\n' "$1" "$2" "$reason" >"$DRONE_DIR/ns/isolation.tmp" &&
        mv -f -- "$DRONE_DIR/ns/isolation.tmp" "$DRONE_DIR/ns/isolation"
}

# pasta or slirp4netns as NS_OUTER asks (auto: slirp4netns first: bookworm's
# pasta stalls behind a rate limit and collapses with many streams, see
# docs/benchmarks.md "Namespace capture"), or nothing.
netns_outer_tool() {
    local tool
    case ${NS_OUTER:-auto} in
    auto) for tool in slirp4netns pasta; do
        if command -v "$tool" >/dev/null; then
            printf '%s' "$tool"
            return 0
        fi
    done ;;
    *) if command -v "$NS_OUTER" >/dev/null; then
        printf '%s' "$NS_OUTER"
        return 0
    fi ;;
    esac
    return 1
}

# redsocks as chain.redsocks names it, else from PATH.
netns_redsocks() {
    if [[ -n ${CHAIN_REDSOCKS:-} ]]; then
        expand_home "$CHAIN_REDSOCKS"
        return
    fi
    command -v redsocks
}

# The first failing reason why this node cannot give the drone a namespace,
# on stdout (then false); nothing and true when it can. About 30 ms: one
# unshare that needs the capabilities nft needs (catches max_user_namespaces
# 0, Debian's unprivileged_userns_clone 0 and an AppArmor userns restriction
# that allows the unshare but no capabilities).
netns_available() {
    local tool output redsocks
    if [[ ! -r $NS_SELF ]]; then
        printf 'cannot read the drone script %s to run it again inside' "$NS_SELF"
        return 1
    fi
    for tool in unshare nft ip; do
        if ! command -v "$tool" >/dev/null; then
            printf '%s not found in PATH' "$tool"
            return 1
        fi
    done
    if ! output=$(unshare -U -r -n -m -- sh -c \
        'ip link set lo up && nft add table inet tna_probe' 2>&1 </dev/null); then
        output=${output//$'\n'/; }
        printf 'unprivileged network namespace not possible: %s' \
            "${output:-unshare failed}"
        return 1
    fi
    if [[ $(unshare --help 2>&1) != *--map-user* ]]; then
        printf 'unshare has no --map-user (util-linux < 2.38)'
        return 1
    fi
    if ! tool=$(netns_outer_tool); then
        printf 'no outer link: %s not found in PATH' \
            "$([[ ${NS_OUTER:-auto} == auto ]] && echo 'pasta or slirp4netns' || echo "$NS_OUTER")"
        return 1
    fi
    if [[ ${NETWORK_MODE:-} == vpn ]]; then
        if ! command -v openconnect >/dev/null; then
            printf 'openconnect not found in PATH'
            return 1
        fi
    elif ! redsocks=$(netns_redsocks) || [[ ! -x $redsocks ]]; then
        printf 'redsocks not found%s' "${CHAIN_REDSOCKS:+ at $CHAIN_REDSOCKS}"
        return 1
    fi
    if [[ ! -r /dev/net/tun || ! -w /dev/net/tun ]]; then
        printf '/dev/net/tun is not read- and writable for %s (%s needs it)' \
            "$(id -un 2>/dev/null || id -u)" "$tool"
        return 1
    fi
    netns_resolve_hops # its reason, if any, on our stdout
}

# The first hops as configured: NS_FIRST_HOPS when set, else TUNNEL_FIRST_HOPS.
netns_first_hops() {
    if ((${#NS_FIRST_HOPS[@]})); then
        printf '%s\n' "${NS_FIRST_HOPS[@]}"
    elif ((${#TUNNEL_FIRST_HOPS[@]})); then
        printf '%s\n' "${TUNNEL_FIRST_HOPS[@]}"
    fi
}

# Fill NS_HOPS with "ADDR PORT" per first hop (netns_first_hops; names
# resolved to IPv4 here, outside) and NS_HOST_LINES with "ADDR NAME" lines for
# ns/hosts. False (with the reason on stdout) when a hop has no IPv4 address.
netns_resolve_hops() {
    local hop host port address hops=()
    NS_HOPS=()
    NS_HOST_LINES=()
    mapfile -t hops < <(netns_first_hops)
    for hop in "${hops[@]}"; do
        host=${hop%:*}
        port=${hop##*:}
        if [[ $host == \[* ]]; then
            printf 'first hop %s is IPv6: the namespace is IPv4 only' "$hop"
            return 1
        fi
        if netns_is_ipv4 "$host"; then
            address=$host
        else
            address=$(getent ahostsv4 "$host" 2>/dev/null | awk 'NR == 1 { print $1 }')
            if [[ -z $address ]]; then
                printf 'first hop %s does not resolve to an IPv4 address' "$host"
                return 1
            fi
            NS_HOST_LINES+=("$address $host")
        fi
        NS_HOPS+=("$address $port")
    done
}

netns_is_ipv4() {
    [[ $1 =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] &&
        ((BASH_REMATCH[1] < 256 && BASH_REMATCH[2] < 256 &&
            BASH_REMATCH[3] < 256 && BASH_REMATCH[4] < 256))
}

# The files the init role needs: the script, /etc/hosts with the first hops
# (ssh inside keeps host names and known_hosts), resolv.conf (names over TCP
# through the chain, or nowhere), the nft rules with the hops filled in.
netns_prepare() {
    local reason elements="" hop
    cp -- "$NS_SELF" "$NS_DIR/drone.sh" ||
        fail isolation "$EXIT_ISOLATION" "cannot copy $NS_SELF to $NS_DIR"
    # in this shell (not $(...)): it fills NS_HOPS and NS_HOST_LINES
    netns_resolve_hops >"$NS_DIR/hops.reason" || {
        reason=$(<"$NS_DIR/hops.reason")
        fail isolation "$EXIT_ISOLATION" "$reason"
    }
    {
        cat /etc/hosts 2>/dev/null
        printf '# first hops, resolved outside by tardis-netadapter\n'
        ((${#NS_HOST_LINES[@]} == 0)) || printf '%s\n' "${NS_HOST_LINES[@]}"
    } >"$NS_DIR/hosts"
    {
        # no resolver: 127.0.0.1 has none, so names fail at once
        printf 'nameserver %s\n' "${CHAIN_RESOLVER:-127.0.0.1}"
        printf 'options use-vc timeout:3 attempts:2\n'
    } >"$NS_DIR/resolv.conf"
    for hop in "${NS_HOPS[@]}"; do
        elements+="${elements:+, }${hop% *} . ${hop#* }"
    done
    # the hops as resolved, for the roles inside ("ADDR PORT" lines)
    printf '%s\n' "${NS_HOPS[@]}" >"$NS_DIR/hops"
    write_capture_nft | sed "s/@TARDIS_HOPS@/$elements/" >"$NS_DIR/rules.nft" ||
        fail isolation "$EXIT_ISOLATION" "cannot write $NS_DIR/rules.nft"
}

# Start the init role in new user, network, mount and PID namespaces.
# `unshare --fork` ignores TERM and outlives nothing: the init's pid (its
# child) is what the keeper signals.
netns_spawn() {
    TNA_NS_ROLE=init TNA_NS_DIR=$DRONE_DIR TNA_NS_UID=$(id -u) TNA_NS_GID=$(id -g) \
        TNA_NS_TOOL=$NS_TOOL \
        unshare -U -r -n -m --propagation private -p -f --mount-proc \
        -- bash "$NS_DIR/drone.sh" </dev/null &
    NS_UNSHARE_PID=$!
    printf '%s\n' "$NS_UNSHARE_PID" >"$NS_DIR/unshare.pid"
    wait_until 5000 netns_find_init
    if [[ -z $NS_INIT_PID ]]; then
        netns_keeper_wait # it ended already (the init said why): its status
    fi
    printf '%s\n' "$NS_INIT_PID" >"$NS_DIR/init.pid"
}

# NS_INIT_PID = the child of unshare that is PID 1 of the new PID namespace
# ("NSpid: N 1"; unshare may fork a short-lived helper first). True, too,
# when unshare has ended: there is nothing to wait for.
netns_find_init() {
    local children=() child line
    kill -0 "$NS_UNSHARE_PID" 2>/dev/null || return 0
    read -r -a children 2>/dev/null \
        <"/proc/$NS_UNSHARE_PID/task/$NS_UNSHARE_PID/children" || true
    for child in "${children[@]}"; do
        while IFS= read -r line; do
            if [[ $line =~ ^NSpid:[[:space:]]+${child}[[:space:]]+1$ ]]; then
                NS_INIT_PID=$child
                return 0
            fi
        done 2>/dev/null <"/proc/$child/status"
    done
    return 1
}

# Runs in the background: if the keeper dies without its cleanup (SIGKILL),
# end the init role (the kernel then ends everything in its PID namespace)
# and the outer link, which outlives the namespace's processes otherwise.
netns_reaper() {
    local keeper=$$
    trap - EXIT HUP
    trap 'exit 0' TERM INT
    while kill -0 "$keeper" 2>/dev/null && kill -0 "$NS_UNSHARE_PID" 2>/dev/null; do
        pause_ms 1000
    done
    if ! kill -0 "$keeper" 2>/dev/null; then
        stop_process "$NS_INIT_PID" "$NS_KEEPER_GRACE_MS"
    fi
    [[ -z $NS_OUTER_PID ]] || stop_process "$NS_OUTER_PID" 2000
}

# The outer link under lib/supervise.sh (restarted with back-off when it
# ends; no probes, no start slots: it is local).
netns_outer_start() {
    (
        # shellcheck disable=SC2034  # the SUPERVISE_* inputs are read by lib/supervise.sh
        {
            SUPERVISE_LABEL=outer
            SUPERVISE_TARGETS=("$NS_TOOL")
            SUPERVISE_PROBES=("")
            SUPERVISE_NODE_STARTS=0
            SUPERVISE_RESTARTS_FILE=$NS_DIR/outer.restarts
            SUPERVISE_ERROR_FILE=$NS_DIR/outer.error
            SUPERVISE_CHILD_FILE=$NS_DIR/outer.child
            SUPERVISE_READY_TIMEOUT_MS=$NS_READY_TIMEOUT_MS
        }
        supervise_run netns_outer_command netns_outer_up netns_outer_classify
    ) </dev/null &
    NS_OUTER_PID=$!
    netns_reaper &
    NS_REAPER_PID=$!
}

# The outer link's command: every port-forwarding feature off (pasta's
# defaults publish every port bound inside on the worker's 0.0.0.0), IPv4.
netns_outer_command() {
    local route mtu=$NS_MTU
    if [[ $NS_TOOL == slirp4netns ]]; then
        ((mtu <= NS_SLIRP_MTU_MAX)) || mtu=$NS_SLIRP_MTU_MAX
        printf '%s\0' slirp4netns --configure "--mtu=$mtu" --disable-host-loopback \
            --disable-dns "--cidr=$NS_CIDR" "$NS_UNSHARE_PID" tap0
        return
    fi
    printf '%s\0' pasta -4 -f -q --config-net -m "$NS_MTU" -t none -u none -T none \
        -U none --no-map-gw --no-dhcp --no-ndp --no-dhcpv6 --no-ra
    # without a default route pasta finds no interface: name the one that
    # leads to the first hop, and its gateway (or the hop itself)
    if [[ -z $(ip -4 route show default 2>/dev/null) ]] &&
        route=$(netns_hop_route); then
        printf '%s\0' -i "${route% *}" -g "${route#* }"
    fi
    printf '%s\0' "$NS_UNSHARE_PID"
}

# "DEV GATEWAY" of the route to the first hop (the hop itself when direct).
netns_hop_route() {
    local hop=${NS_HOPS[0]%% *} words dev="" via="" index
    read -r -a words < <(ip -4 route get "$hop" 2>/dev/null)
    for ((index = 0; index < ${#words[@]} - 1; index++)); do
        case ${words[index]} in
        dev) dev=${words[index + 1]} ;;
        via) via=${words[index + 1]} ;;
        esac
    done
    [[ -n $dev ]] || return 1
    printf '%s %s' "$dev" "${via:-$hop}"
}

# Up once the namespace has a default route (the outer tool configured it):
# read from /proc, no nsenter and no fork.
netns_outer_up() {
    netns_default_route "/proc/$NS_UNSHARE_PID/net/route"
}

# Up, or the namespace ended already (nothing to wait for).
netns_outer_up_or_ended() {
    netns_outer_up || ! kill -0 "$NS_UNSHARE_PID" 2>/dev/null
}

# True when the route table FILE (/proc/net/route format) has a default route.
netns_default_route() {
    local destination _
    while read -r _ destination _; do
        [[ $destination == 00000000 ]] && return 0
    done 2>/dev/null <"$1"
    return 1
}

netns_outer_classify() {
    local status=$1 file=$2 last="" line
    while IFS= read -r line; do
        [[ -n ${line//[[:space:]]/} ]] && last=$line
    done <"$file"
    if ! kill -0 "$NS_UNSHARE_PID" 2>/dev/null; then
        printf 'namespace gone\t%s\n' "the namespace ended"
        return
    fi
    printf 'exited\t%s\n' "${last:-exit status $status}"
}

# The outer link must publish nothing on the worker: pasta forwards ports
# bound inside to the worker's 0.0.0.0 unless told not to (its defaults, or
# flags a pasta version reads differently), which would hand the drone's
# tunnel and proxies to every user of the node. Two checks of the worker's
# /proc/net/{tcp,udp}{,6}, any hit fails the drone:
#  1. a TCP listener among the tool's own sockets (from /proc/PID/fd), or
#     one of its bound UDP sockets on a port bound inside too: exact, but
#     pasta makes itself non-dumpable, so its fd directory is root's and the
#     drone user reads nothing there;
#  2. a listener of the drone's uid on the wildcard address (0.0.0.0 or ::,
#     where pasta's forwards bind) with a port that also listens inside the
#     namespace: what pasta's forwarding publishes, found without its fds.
netns_outer_guard() {
    local pid="" link inodes=() inode found
    # the supervisor writes the file as it starts the tool, before it is up
    wait_until 2000 test -s "$NS_DIR/outer.child" &&
        IFS= read -r pid 2>/dev/null <"$NS_DIR/outer.child"
    [[ $pid =~ ^[0-9]+$ ]] ||
        fail isolation "$EXIT_ISOLATION" "no pid of $NS_TOOL to check its sockets"
    for link in "/proc/$pid/fd/"*; do
        link=$(readlink "$link" 2>/dev/null) || continue
        [[ $link == socket:\[*\] ]] || continue
        inode=${link#socket:[}
        inodes+=("${inode%]}")
    done
    found=$(netns_published "$(id -u)" "/proc/$NS_UNSHARE_PID/net" "${inodes[*]}")
    if [[ -n $found ]]; then
        fail isolation "$EXIT_ISOLATION" "$NS_TOOL (pid $pid) published the drone's" \
            "ports on $(hostname): $found; refusing (every user of the node could" \
            "use them)"
    fi
}

# netns_published UID INSIDE_NET INODES: the worker's sockets the outer link
# published ("tcp 0.0.0.0:20000, udp 0.0.0.0:5300"), by netns_outer_guard's
# two rules; INSIDE_NET is the namespace's /proc/PID/net. Empty when none.
netns_published() {
    local inside=$2 files=() file
    # only those that exist (no IPv6: no tcp6), or mawk stops at the first
    for file in "$inside/"{tcp,tcp6,udp,udp6} /proc/net/{tcp,tcp6,udp,udp6}; do
        [[ -r $file ]] && files+=("$file")
    done
    awk -v uid="$1" -v inodes=" $3 " -v inside="$inside/" '
        function hex(text, value, i) {
            value = 0
            for (i = 1; i <= length(text); i++)
                value = value * 16 + index("0123456789ABCDEF", toupper(substr(text, i, 1))) - 1
            return value
        }
        function address(text) { # /proc/net hex to dotted IPv4, [::] or [hex]
            if (text ~ /^0+$/) return length(text) == 8 ? "0.0.0.0" : "[::]"
            if (length(text) != 8) return "[" text "]"
            return hex(substr(text, 7, 2)) "." hex(substr(text, 5, 2)) "." \
                hex(substr(text, 3, 2)) "." hex(substr(text, 1, 2))
        }
        FNR == 1 { proto = FILENAME ~ /udp/ ? "udp" : "tcp"; next }
        $4 != (proto == "udp" ? "07" : "0A") { next } # listening / bound UDP
        {
            split($2, bound, ":")
            port = hex(bound[2])
            if (index(FILENAME, inside) == 1) { ports[proto ":" port] = 1; next }
            inner = (proto ":" port) in ports
            # (a UDP socket of the tool on a port unused inside is a NAT
            # flow of slirp4netns, e.g. to a direct resolver: not published)
            if ((index(inodes, " " $10 " ") && (proto == "tcp" || inner)) ||
                ($8 == uid && bound[1] ~ /^0+$/ && inner)) {
                found = found (found == "" ? "" : ", ") proto " " address(bound[1]) ":" port
            }
        }
        END { if (found != "") print found }' "${files[@]}" 2>/dev/null
}

# Wait for the namespace to end (its init's status is the drone's), writing
# ns/outer.state as the outer link goes down and up (the watchdog blames
# stage isolation while it is down), and checking that the link publishes
# no port: after every new start and every NS_GUARD_EVERY_MS (pasta binds
# the ports it forwards about 1 s after they appear inside, were its flags
# ever lost or read differently).
netns_keeper_wait() {
    local status restarts=0 count checked=0 now
    while kill -0 "$NS_UNSHARE_PID" 2>/dev/null; do
        if netns_outer_up; then
            count=$(netns_lines "$NS_DIR/outer.restarts")
            clock_us now
            if ((count != restarts || now - checked >= NS_GUARD_EVERY_MS * 1000)); then
                if ((count != restarts)); then
                    netns_kick_tunnel
                fi
                restarts=$count
                checked=$now
                netns_outer_guard
            fi
            netns_outer_state up
        else
            netns_outer_state "down $(netns_outer_class)"
        fi
        pause_ms 1000
    done
    wait "$NS_UNSHARE_PID"
    status=$?
    NS_UNSHARE_PID=""
    log "isolation: the namespace ended with status $status"
    exit "$status"
}

# The outer link came back after a restart: the tunnel's TCP connections
# went with the old one (pasta and slirp4netns hold the worker's side of
# every socket), and ssh would only notice after ServerAliveInterval x
# ServerAliveCountMax, openconnect only after its dead peer detection. Among
# the namespace's processes (the descendants of its init: this drone's own),
# TERM every ssh so that its supervisor reconnects at once, and send
# openconnect SIGUSR2, its own "reconnect now" (it keeps its session).
netns_kick_tunnel() {
    local pids=("$NS_INIT_PID") pid comm children kicked=()
    [[ -n $NS_INIT_PID ]] || return 0
    while ((${#pids[@]})); do
        pid=${pids[0]}
        pids=("${pids[@]:1}")
        IFS= read -r comm 2>/dev/null <"/proc/$pid/comm" || continue
        case $comm in
        ssh) kill -TERM "$pid" 2>/dev/null && kicked+=("ssh $pid") ;;
        openconnect) kill -USR2 "$pid" 2>/dev/null && kicked+=("openconnect $pid") ;;
        esac
        read -r -a children 2>/dev/null <"/proc/$pid/task/$pid/children" || true
        pids+=("${children[@]}")
    done
    if ((${#kicked[@]})); then
        log "isolation: outer link restarted; told the tunnel to reconnect through" \
            "it now (${kicked[*]})"
    fi
}

netns_lines() {
    local lines=0
    [[ -r $1 ]] && lines=$(wc -l <"$1")
    printf '%d' "$lines"
}

# The outer link's last failure class (lib/supervise.sh's error file).
netns_outer_class() {
    local line="" class
    IFS= read -r line 2>/dev/null <"$NS_DIR/outer.error"
    class=${line#*$'\t'}
    class=${class%%$'\t'*}
    printf '%s' "${class:-starting}"
}

netns_outer_state() {
    [[ $1 != "$NS_OUTER_STATE" ]] || return 0
    if [[ -n $NS_OUTER_STATE || $1 != up ]]; then
        log "isolation: outer link $NS_TOOL $1"
    fi
    NS_OUTER_STATE=$1
    printf '%s\n' "$1" >"$NS_DIR/outer.state.tmp" &&
        mv -f -- "$NS_DIR/outer.state.tmp" "$NS_DIR/outer.state"
}

# Cleanup of the keeper: the reaper, then TERM to the init's pid (it ends
# once nothing else is left in its PID namespace; KILL after
# NS_KEEPER_GRACE_MS, and the kernel ends the rest), then the outer link.
netns_keeper_stop() {
    local child=""
    if [[ -n $NS_REAPER_PID ]]; then
        kill -TERM "$NS_REAPER_PID" 2>/dev/null
        NS_REAPER_PID=""
    fi
    if [[ -n $NS_INIT_PID ]]; then
        stop_process "$NS_INIT_PID" "$NS_KEEPER_GRACE_MS"
        NS_INIT_PID=""
    fi
    if [[ -n $NS_UNSHARE_PID ]]; then
        wait "$NS_UNSHARE_PID" 2>/dev/null # it ends with its child, the init
        NS_UNSHARE_PID=""
    fi
    if [[ -n $NS_OUTER_PID ]]; then
        stop_process "$NS_OUTER_PID" 3000 # its TERM trap stops the tool
        IFS= read -r child 2>/dev/null <"$NS_DIR/outer.child"
        if [[ $child =~ ^[0-9]+$ ]] && ! process_gone "$child"; then
            kill -KILL "$child" 2>/dev/null # the supervisor did not get to it
        fi
        NS_OUTER_PID=""
    fi
}

# -- init -------------------------------------------------------------------------

# The init role (ns-root): plumbing that needs capabilities in the namespace,
# then the drone role demoted to the real uid; exits with its status.
netns_init_role() {
    local status
    netns_init_plumbing
    netns_write_isolation namespace "${TNA_NS_TOOL:-unknown}" ""
    netns_leaks_writer &
    NS_LEAKS_PID=$!
    if [[ ${NETWORK_MODE:-} == vpn ]]; then
        vpn_init_start # its cleanup runs after netns_init_stop (drone role first)
    fi
    CLEANUP+=(netns_init_stop)
    TNA_NS_ROLE=drone unshare -U "--map-user=$TNA_NS_UID" "--map-group=$TNA_NS_GID" \
        -- bash "$NS_DIR/drone.sh" </dev/null &
    NS_DRONE_PID=$!
    while :; do # wait returns early when a trap ran
        wait "$NS_DRONE_PID"
        status=$?
        kill -0 "$NS_DRONE_PID" 2>/dev/null || break
    done
    NS_DRONE_PID=""
    exit "$status"
}

# Loopback, /etc/hosts and /etc/resolv.conf, and the nft rules: default deny
# before anything of the drone runs, so nothing leaks while the tunnel is not
# up yet (connections fail instead).
netns_init_plumbing() {
    local output file
    ip link set lo up || fail isolation "$EXIT_ISOLATION" "cannot set lo up in the namespace"
    for file in hosts resolv.conf; do
        mount --bind "$NS_DIR/$file" "/etc/$file" ||
            fail isolation "$EXIT_ISOLATION" "cannot bind-mount $NS_DIR/$file on /etc/$file"
    done
    if ! output=$(nft -f "$NS_DIR/rules.nft" 2>&1); then
        fail isolation "$EXIT_ISOLATION" "nft refused $NS_DIR/rules.nft: ${output//$'\n'/; }"
    fi
    # per network namespace; a kernel that refuses it keeps its default
    if ! printf '%s\n' "$NS_TCP_RETRIES2" 2>/dev/null >/proc/sys/net/ipv4/tcp_retries2; then
        log "isolation: cannot set tcp_retries2 in the namespace; a stalled tunnel" \
            "connection may take minutes to fail"
    fi
}

# Runs in the background: ns/leaks = "UDP OTHER" packets dropped so far,
# every 5 s (the demoted drone cannot run nft, hence the file).
netns_leaks_writer() {
    trap - EXIT HUP
    trap 'exit 0' TERM INT
    while :; do
        netns_leaks_write
        pause_ms 5000
    done
}

netns_leaks_write() {
    local udp other
    udp=$(netns_counter leaks_udp)
    other=$(netns_counter leaks_other)
    { printf '%s %s\n' "${udp:-0}" "${other:-0}" >"$NS_DIR/leaks.tmp" &&
        mv -f -- "$NS_DIR/leaks.tmp" "$NS_DIR/leaks"; } 2>/dev/null
}

netns_counter() {
    nft list counter inet tna_guard "$1" 2>/dev/null |
        awk '{ for (i = 1; i < NF; i++) if ($i == "packets") { print $(i + 1); exit } }'
}

# Cleanup of the init role: TERM to the drone role, which stops the payload
# and the tunnel (KILL after NS_DRONE_GRACE_MS); then TERM to whatever else
# is still in the PID namespace, and wait until nothing is (up to
# NS_INIT_GRACE_MS since the stop began, within the keeper's grace): when
# init ends, the kernel SIGKILLs every process left in its PID namespace, in
# the middle of its own cleanup (cvmfsexec's unmount and scaffold removal).
netns_init_stop() {
    local started now left
    clock_us started
    if [[ -n $NS_DRONE_PID ]]; then
        stop_process "$NS_DRONE_PID" "$NS_DRONE_GRACE_MS"
        NS_DRONE_PID=""
    fi
    if [[ -n $NS_LEAKS_PID ]]; then
        netns_leaks_write
        stop_process "$NS_LEAKS_PID" 1000
        NS_LEAKS_PID=""
    fi
    netns_alone && return 0
    kill -TERM -1 2>/dev/null # in a PID namespace: all of it but init
    clock_us now
    left=$((NS_INIT_GRACE_MS - (now - started) / 1000))
    if ! wait_until "$((left > 200 ? left : 200))" netns_alone; then
        log "isolation: processes still in the namespace after" \
            "$(seconds_since "$started")s: its end kills them"
    fi
}

# True when init (this shell) is the only live process of its PID namespace
# (its own /proc, from --mount-proc; zombies are gone, init reaps them).
netns_alone() {
    local entry pid stat
    for entry in /proc/[0-9]*/stat; do
        pid=${entry#/proc/}
        pid=${pid%/stat}
        ((pid == BASHPID)) && continue
        IFS= read -r stat 2>/dev/null <"$entry" || continue
        stat=${stat##*") "}
        [[ ${stat%% *} == Z ]] || return 1
    done
    return 0
}

# -- drone ------------------------------------------------------------------------

# The drone role: the namespace is ready once the outer link configured a
# default route and a UDP datagram to the outside is refused by the rules.
netns_drone_role() {
    local started target hops
    started=$(now_us)
    if ! wait_until "$NS_READY_TIMEOUT_MS" netns_default_route /proc/net/route; then
        fail isolation "$EXIT_ISOLATION" "no default route in the namespace after" \
            "$((NS_READY_TIMEOUT_MS / 1000))s: the outer link (${TNA_NS_TOOL:-}) is not up"
    fi
    target=$(netns_udp_target)
    if [[ -n $target ]] && netns_udp_leaves "$target"; then
        fail isolation "$EXIT_ISOLATION" "a UDP datagram to $target was not refused:" \
            "the namespace's rules are not in place"
    fi
    # probes go the payload's way: through the kernel's capture, no prefix
    # shellcheck disable=SC2034  # for the watchdog (lib/monitoring.sh)
    PATH_PROBE_PREFIX=()
    hops=$(netns_first_hops)
    log "isolation: namespace (${TNA_NS_TOOL:-}), hops ${hops//$'\n'/ }," \
        "localnet ${NS_LOCALNET[*]}, resolver ${CHAIN_RESOLVER:-none}" \
        "${CHAIN_RESOLVER:+(route $CHAIN_RESOLVER_ROUTE)}"
    stage_ready isolation "$started"
}

# ADDR/PORT for the UDP check: the collector when it is an IPv4 address
# outside localnet, else a documentation address (never routed). Mode vpn:
# the VPN server's port 9 (routed through the outer link even once the VPN
# is up, where everything else goes into the tun, which the rules let out).
netns_udp_target() {
    local host=${CHAIN_PROBE_HOST:-} port=${CHAIN_PROBE_PORT:-9618} _
    if [[ ${NETWORK_MODE:-} == vpn ]]; then
        read -r host _ 2>/dev/null <"$NS_DIR/hops"
        port=9
    fi
    if ! netns_is_ipv4 "$host" || netns_in_localnet "$host"; then
        host=192.0.2.1
        port=9
    fi
    netns_in_localnet "$host" || printf '%s/%s' "$host" "$port"
}

# True when one datagram to ADDR/PORT could be sent (it must not).
netns_udp_leaves() {
    # shellcheck disable=SC2016  # $1 expands in the sending bash
    bash -c 'exec 3<>"/dev/udp/$1" && printf x >&3' netns-udp "$1" 2>/dev/null
}

# True when the IPv4 ADDR is in one of NS_LOCALNET's CIDRs.
netns_in_localnet() {
    local address net bits value base mask
    netns_is_ipv4 "$1" || return 1
    value=$(netns_ip_value "$1")
    for net in "${NS_LOCALNET[@]}"; do
        address=${net%/*}
        bits=${net#*/}
        [[ $net == */* ]] || bits=32
        netns_is_ipv4 "$address" || continue
        base=$(netns_ip_value "$address")
        mask=$(((0xffffffff << (32 - bits)) & 0xffffffff))
        if (((value & mask) == (base & mask))); then
            return 0
        fi
    done
    return 1
}

netns_ip_value() {
    local IFS=. parts
    read -r -a parts <<<"$1"
    printf '%d' $(((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]))
}
