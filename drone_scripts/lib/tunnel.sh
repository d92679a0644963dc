# shellcheck shell=bash
# tunnel.sh: the supervised ssh tunnel from the worker out of the site.
# What ssh does is declared in the rendered ssh_config (write_ssh_config),
# except its local ports: this file chooses them (many drones share a node),
# gives them to ssh as -L/-D, picks the cipher, supervises ssh and waits until
# every port listens and belongs to this drone's ssh.

TUNNEL_PID=""
# this drone's local ports, as numbers: [0] SOCKS, [i] forward i
TUNNEL_PORTS=()
# the next candidate set for auto ports (a set is one port per auto port)
TUNNEL_SLOT=""
# how often a port taken by someone else while ssh started is tolerated
TUNNEL_PORT_ATTEMPTS=5
# a port of TUNNEL_PORTS another process listens on (ssh cannot have it)
TUNNEL_FOREIGN=""
# port -> inode of the socket listening on 127.0.0.1 (or "other": elsewhere)
declare -gA TUNNEL_LISTEN=()
# port -> inode of a listening socket found to be this drone's ssh's
declare -gA TUNNEL_OWNED=()

# What the tunnel adds to the payload (lib/payload.sh composes it).
PAYLOAD_ENVIRONMENT+=(tunnel_port_environment)

# TEXT with each @TARDIS_PORT_<i>@ replaced by the i-th local port this drone
# chose (TUNNEL_PORTS: 0 the SOCKS port, i forward i; set by the tunnel stage).
with_ports() {
    local text=$1 index
    for index in "${!TUNNEL_PORTS[@]}"; do
        text=${text//"@TARDIS_PORT_$index@"/${TUNNEL_PORTS[index]}}
    done
    printf '%s\n' "$text"
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

# Ciphers in order of preference, keeping only those this ssh knows:
# AES-GCM first where the CPU has AES instructions, ChaCha20 first elsewhere.
tunnel_ciphers() {
    if [[ $TUNNEL_CIPHERS != auto ]]; then
        printf '%s' "$TUNNEL_CIPHERS"
        return
    fi
    local preferred=(aes128-gcm@openssh.com chacha20-poly1305@openssh.com
        aes256-gcm@openssh.com aes128-ctr)
    if ! grep -qw aes /proc/cpuinfo 2>/dev/null; then
        preferred=(chacha20-poly1305@openssh.com aes128-gcm@openssh.com
            aes256-gcm@openssh.com aes128-ctr)
    fi
    local known cipher chosen=()
    known=$(ssh -Q cipher 2>/dev/null) || return 0
    for cipher in "${preferred[@]}"; do
        if grep -qxF -- "$cipher" <<<"$known"; then
            chosen+=("$cipher")
        fi
    done
    local IFS=,
    printf '%s' "${chosen[*]}"
}

# The supervised command for TARGET (an ssh Host alias of the rendered
# ssh_config; default the first of TUNNEL_TARGETS): ssh, or autossh -M 0
# (supervisor autossh), with this drone's ports as -L and -D (-D last: ssh
# binds in this order).
tunnel_command() {
    local target=${1:-${TUNNEL_TARGETS[0]:-$TUNNEL_TARGET}} index
    local ssh_argv=(ssh -N -F "$DRONE_DIR/ssh_config")
    for index in "${!TUNNEL_FORWARD_TARGETS[@]}"; do
        ssh_argv+=(-L "127.0.0.1:${TUNNEL_PORTS[index + 1]}:${TUNNEL_FORWARD_TARGETS[index]}")
    done
    ssh_argv+=(-D "127.0.0.1:${TUNNEL_PORTS[0]}" "$target")
    if [[ $TUNNEL_SUPERVISOR == autossh ]] && command -v autossh >/dev/null; then
        printf '%s\0' env AUTOSSH_GATETIME=0 AUTOSSH_POLL=30 \
            "AUTOSSH_PATH=$(command -v ssh)" autossh -M 0 "${ssh_argv[@]:1}"
        return
    fi
    printf '%s\0' "${ssh_argv[@]}"
}

# tunnel_classify STATUS ERRFILE WAS_UP: ssh's ended start as
# "CLASS<TAB>DETAIL" (classes: docs/drone-script.md, shown by `status`), from
# its stderr (ERRFILE) and exit status. WAS_UP 1: its ports had been up, so a
# closed connection is a lost session, not sshd refusing a new one.
tunnel_classify() {
    local status=$1 file=$2 was_up=${3:-0} text last="" class=exited line
    text=$(tr -d '\r' <"$file" 2>/dev/null)
    while IFS= read -r line; do
        [[ -n ${line//[[:space:]@]/} ]] && last=$line
    done <<<"$text"
    case $text in
    *"REMOTE HOST IDENTIFICATION HAS CHANGED"* | *"Host key for "*" has changed"*)
        class="host key mismatch"
        last=$(grep -m1 'Host key for .* has changed' <<<"$text" || printf '%s' "$last")
        ;;
    *"No "*"host key is known for"* | *"Host key verification failed"*)
        class="host key unknown"
        if [[ $text == *"Host key verification failed"* ]] && tunnel_known_host_differs; then
            class="host key mismatch"
        fi
        ;;
    *"Permission denied ("*) class="key refused" ;;
    *"cannot listen to port"* | *"Could not request local forwarding"* | \
        *"remote port forwarding failed"* | *"forwarding failed"*)
        class="forwarding refused"
        ;;
    *"Could not resolve hostname"* | *"Name or service not known"* | \
        *"Temporary failure in name resolution"*)
        class="name unknown"
        ;;
    *"No route to host"* | *"Network is unreachable"*) class="no route" ;;
    *"Connection refused"*) class="connection refused" ;;
    *"timed out"* | *"Timeout, server"*" not responding"*) class=timeout ;;
    *"kex_exchange_identification"* | *"Connection closed by remote host"* | \
        *"Connection reset by peer"* | *"Connection closed by "*" port "*)
        if ((was_up)); then
            class=exited
        else
            class="dropped at MaxStartups"
        fi
        ;;
    esac
    if [[ -z $last ]]; then
        last="exit status $status"
    fi
    printf '%s\t%s\n' "$class" "${last:0:200}"
}

# True when the known_hosts file has an entry for a first hop of the tunnel:
# "Host key verification failed" with a key on file means the key differs.
tunnel_known_host_differs() {
    local file hop host port
    file=$(expand_home "${TUNNEL_KNOWN_HOSTS:-~/.ssh/known_hosts}")
    for hop in "${TUNNEL_FIRST_HOPS[@]}"; do
        host=${hop%:*}
        port=${hop##*:}
        host=${host#[}
        host=${host%]} # an IPv6 address comes in brackets
        if [[ $port != 22 ]]; then
            host="[$host]:$port"
        fi
        if ssh-keygen -F "$host" -f "$file" >/dev/null 2>&1; then
            return 0
        fi
    done
    return 1
}

# True once the supervised ssh's ports are all up (the supervisor's READY).
tunnel_up() {
    tunnel_socks_accepts && tunnel_ports_state
}

# True when the SOCKS port, which ssh binds after every -L forward, accepts a
# connection: a test that starts no process, polled before the full check of
# every port's owner (which reads /proc/net/tcp with awk). A hundred drones
# starting on a node spent most of its CPU on that awk.
tunnel_socks_accepts() {
    local fd
    { exec {fd}<>"/dev/tcp/127.0.0.1/${TUNNEL_PORTS[0]}"; } 2>/dev/null || return 1
    exec {fd}>&-
}

# Runs in the background: keep ssh up through lib/supervise.sh over the
# targets (TUNNEL_TARGETS, their first hops probed while they are down), the
# restarts and the last failure in $DRONE_DIR for the watchdog. With
# supervisor autossh, autossh restarts ssh and this only restarts autossh.
tunnel_supervise() {
    # this subshell is the supervisor: the ports' owner must descend from it
    TUNNEL_PID=$BASHPID
    if declare -F tunnel_order_targets >/dev/null; then
        tunnel_order_targets
    fi
    # shellcheck disable=SC2034  # the SUPERVISE_* inputs are read by lib/supervise.sh
    SUPERVISE_LABEL=tunnel
    SUPERVISE_TARGETS=("${TUNNEL_TARGETS[@]}")
    SUPERVISE_PROBES=("${TUNNEL_FIRST_HOPS[@]}")
    # shellcheck disable=SC2034
    SUPERVISE_RESTARTS_FILE=$DRONE_DIR/tunnel.restarts
    # shellcheck disable=SC2034
    SUPERVISE_ERROR_FILE=$DRONE_DIR/tunnel.error
    # shellcheck disable=SC2034
    SUPERVISE_CHILD_FILE=$DRONE_DIR/tunnel.child
    if [[ $TUNNEL_SUPERVISOR == autossh ]]; then
        # autossh retries by itself (fixed back-off): no target rotation,
        # no probing; its own restarts are not seen here
        SUPERVISE_TARGETS=("${SUPERVISE_TARGETS[0]}")
        # shellcheck disable=SC2034
        SUPERVISE_PROBES=("")
    fi
    supervise_run tunnel_command tunnel_up tunnel_classify
}

# The configured ports, [0] SOCKS then each forward: numbers or auto; then
# (tunnel.parallel) the SOCKS port of connections 2..N and, when the chain
# reaches its first proxy through -L forwards, each connection's forward to
# it: auto. The order is tardis_netadapter/modes/socks.py's local_port_settings.
tunnel_wanted() {
    local count=$((TUNNEL_PARALLEL - 1))
    if [[ -n $TUNNEL_PROXY_FORWARD ]]; then
        count=$((count + TUNNEL_PARALLEL))
    fi
    printf '%s\n' "$TUNNEL_SOCKS_PORT" "${TUNNEL_FORWARD_PORTS[@]}"
    for ((; count > 0; count--)); do
        printf 'auto\n'
    done
}

# Narrow TUNNEL_PORTS and TUNNEL_FORWARD_TARGETS to what connection K (1..N)
# of tunnel.parallel binds, in the shape tunnel_command reads ([0] its SOCKS
# port, [i] forward i): connection 1 has the configured forwards, every
# connection its own -L to the chain's first proxy (TUNNEL_PROXY_FORWARD).
# Connection K starts on the K-th route of TUNNEL_TARGETS (rotated), so N
# connections spread over the login nodes. Runs in the connection's subshell.
tunnel_connection_view() {
    local k=$1 forwards=${#TUNNEL_FORWARD_TARGETS[@]} all=("${TUNNEL_PORTS[@]}")
    local ports=() targets=() routes shift
    if ((k == 1)); then
        ports=("${all[@]:0:forwards+1}")
        targets=("${TUNNEL_FORWARD_TARGETS[@]}")
    else
        ports=("${all[forwards + k - 1]}")
    fi
    if [[ -n $TUNNEL_PROXY_FORWARD ]]; then
        ports+=("${all[forwards + TUNNEL_PARALLEL + k - 1]}")
        targets+=("$TUNNEL_PROXY_FORWARD")
    fi
    TUNNEL_PORTS=("${ports[@]}")
    TUNNEL_FORWARD_TARGETS=("${targets[@]}")
    if declare -p TUNNEL_TARGETS >/dev/null 2>&1; then
        routes=${#TUNNEL_TARGETS[@]}
        if ((routes > 1)); then
            shift=$(((k - 1) % routes))
            TUNNEL_TARGETS=("${TUNNEL_TARGETS[@]:shift}" "${TUNNEL_TARGETS[@]:0:shift}")
            TUNNEL_TARGET=${TUNNEL_TARGETS[0]}
        fi
    fi
}

# Runs in the background (TUNNEL_PID): tunnel.parallel connections, each its
# own tunnel_supervise in a subshell with its view of the ports. With one
# connection this process is its supervisor, as it always was. With more it
# only holds them: TERM/INT stop them all, USR1 (the watchdog's forced
# reconnect) goes to each. Every connection's ssh descends from TUNNEL_PID,
# so tunnel_holds knows them all; the chain skips a dead one (random_chain),
# so the watchdog's probes pass while at least one connection works.
tunnel_supervise_parallel() {
    local k children=() pid alive
    if ((TUNNEL_PARALLEL <= 1)); then
        tunnel_connection_view 1
        tunnel_supervise
        return
    fi
    trap - EXIT HUP
    for ((k = 1; k <= TUNNEL_PARALLEL; k++)); do
        (
            tunnel_connection_view "$k"
            tunnel_supervise
        ) &
        children+=("$!")
    done
    trap 'kill -TERM "${children[@]}" 2>/dev/null; wait; exit 0' TERM INT
    trap 'kill -USR1 "${children[@]}" 2>/dev/null' USR1
    while :; do
        wait
        alive=0
        for pid in "${children[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || exit 1
    done
}

# Where this drone's candidates start: from the batch job id (TNA_JOB_ID), so
# drones that start together on a node (nearby ids) try different sets; else
# the uuid.
tunnel_seed() {
    local id=${TNA_JOB_ID:-} hash=5381 char index
    if [[ $id =~ ^[0-9]{1,15}$ ]]; then
        printf '%s' "$((10#$id))"
        return
    fi
    for ((index = 0; index < ${#DRONE_UUID}; index++)); do
        printf -v char '%d' "'${DRONE_UUID:index:1}"
        hash=$(((hash * 33 + char) % 2147483647))
    done
    printf '%s' "$hash"
}

# Rotate TUNNEL_TARGETS and TUNNEL_FIRST_HOPS (one entry per route, i.e. per
# first-hop host) so that this drone starts on route seed mod routes: drones
# with consecutive job ids spread evenly over the login nodes, and the same
# job always starts on the same one. The supervisor then fails over in this
# order. TUNNEL_TARGET follows the new first entry. Once per drone: a second
# call (e.g. from the supervisor as well as the stage) must not rotate again.
tunnel_order_targets() {
    local count=${#TUNNEL_TARGETS[@]} start
    ((count > 1)) && [[ -z ${TUNNEL_TARGETS_ORDERED:-} ]] || return 0
    TUNNEL_TARGETS_ORDERED=1
    start=$(($(tunnel_seed) % count))
    TUNNEL_TARGETS=("${TUNNEL_TARGETS[@]:start}" "${TUNNEL_TARGETS[@]:0:start}")
    TUNNEL_FIRST_HOPS=("${TUNNEL_FIRST_HOPS[@]:start}" "${TUNNEL_FIRST_HOPS[@]:0:start}")
    TUNNEL_TARGET=${TUNNEL_TARGETS[0]}
    log "tunnel: routes in order ${TUNNEL_TARGETS[*]} (first hops ${TUNNEL_FIRST_HOPS[*]})"
}

# Every TCP listener of this node (IPv4 and IPv6, one awk over /proc/net) into
# TUNNEL_LISTEN. False where /proc/net/tcp cannot be read.
tunnel_listeners() {
    local address inode port
    TUNNEL_LISTEN=()
    [[ -r /proc/net/tcp ]] || return 1
    while read -r address inode; do
        port=$((16#${address##*:}))
        case ${address%:*} in
        0100007F | 7F000001) TUNNEL_LISTEN[$port]=$inode ;; # 127.0.0.1, either byte order
        *) TUNNEL_LISTEN[$port]=${TUNNEL_LISTEN[$port]:-other} ;;
        esac
    done < <(awk '$4 == "0A" { print $2, $10 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)
}

# Fill TUNNEL_PORTS: configured numbers as they are, auto ports from the next
# candidate set of TUNNEL_PORT_RANGE on which nothing listens. A set is
# consecutive ports; the first one tried comes from tunnel_seed.
tunnel_pick_ports() {
    local wanted=() auto=0 low=${TUNNEL_PORT_RANGE[0]} high=${TUNNEL_PORT_RANGE[1]}
    local slots tries candidate port fixed proc=1
    mapfile -t wanted < <(tunnel_wanted)
    for port in "${wanted[@]}"; do
        [[ $port == auto ]] && auto=$((auto + 1))
    done
    TUNNEL_PORTS=("${wanted[@]}")
    ((auto > 0)) || return 0
    fixed=" ${wanted[*]} "
    tunnel_listeners || proc=0
    slots=$(((high - low + 1) / auto))
    if [[ -z $TUNNEL_SLOT ]]; then
        TUNNEL_SLOT=$(($(tunnel_seed) % slots))
    fi
    for ((tries = 0; tries < slots; tries++)); do
        candidate=$((low + TUNNEL_SLOT * auto))
        TUNNEL_SLOT=$(((TUNNEL_SLOT + 1) % slots))
        TUNNEL_PORTS=()
        for port in "${wanted[@]}"; do
            if [[ $port == auto ]]; then
                if [[ -n ${TUNNEL_LISTEN[$candidate]:-} || $fixed == *" $candidate "* ]] ||
                    { ((!proc)) && port_open "$candidate"; }; then
                    continue 2 # taken: the next set
                fi
                port=$candidate
                candidate=$((candidate + 1))
            fi
            TUNNEL_PORTS+=("$port")
        done
        return 0
    done
    return 1
}

# True when the socket with INODE belongs to this drone's tunnel: a process
# holding it (a /proc/PID/fd link) descends from the supervisor TUNNEL_PID.
# The supervisor's current command (tunnel.child, usually ssh itself) is
# looked at first: scanning every process's descriptors costs a node's CPU
# when a hundred drones start on it together.
tunnel_holds() {
    local inode=$1 link pid=""
    if [[ -r $DRONE_DIR/tunnel.child ]]; then
        IFS= read -r pid <"$DRONE_DIR/tunnel.child"
    fi
    if [[ $pid =~ ^[0-9]+$ ]] && pid_descends "$pid" "$TUNNEL_PID" &&
        [[ -n $(find "/proc/$pid/fd" -maxdepth 1 -lname "socket:\[$inode\]" \
            -print -quit 2>/dev/null) ]]; then
        return 0
    fi
    while IFS= read -r link; do
        pid=${link#/proc/}
        if pid_descends "${pid%%/*}" "$TUNNEL_PID"; then
            return 0
        fi
    done < <(find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\[$inode\]" 2>/dev/null)
    return 1
}

# 0 when every port of TUNNEL_PORTS listens on 127.0.0.1 and is this drone's
# ssh's, 1 while some are not up yet, 2 when another process listens on one
# (TUNNEL_FOREIGN): then ssh cannot bind it (ExitOnForwardFailure ends it).
# Checking the owner keeps a drone from using another drone's tunnel.
# Without /proc/net/tcp: only whether the SOCKS port accepts connections.
tunnel_ports_state() {
    local port inode missing=0
    if ! tunnel_listeners; then
        port_open "${TUNNEL_PORTS[0]}"
        return
    fi
    for port in "${TUNNEL_PORTS[@]}"; do
        inode=${TUNNEL_LISTEN[$port]:-}
        if [[ -z $inode ]]; then
            missing=1
        elif [[ ${TUNNEL_OWNED[$port]:-} != "$inode" ]]; then
            if [[ $inode == other ]] || ! tunnel_holds "$inode"; then
                TUNNEL_FOREIGN=$port
                return 2
            fi
            TUNNEL_OWNED[$port]=$inode
        fi
    done
    return "$missing"
}

# Poll tunnel_ports_state for up to TUNNEL_READY_TIMEOUT_MS (every 50 ms at
# first, then less often, as wait_until): its status, 1 when the time is up.
tunnel_wait_ports() {
    local now deadline state interval_ms=50 full_at=0
    clock_us now
    deadline=$((now + TUNNEL_READY_TIMEOUT_MS * 1000))
    while :; do
        # the full check once the SOCKS port accepts, and once a second
        # anyway: a forward port another process holds stops ssh before it
        # binds the SOCKS port (state 2: other ports are tried)
        if tunnel_socks_accepts || ((now >= full_at)); then
            tunnel_ports_state
            state=$?
            if ((state != 1)); then
                return "$state"
            fi
            full_at=$((now + 1000000))
        fi
        clock_us now
        if ((now >= deadline)); then
            return 1
        fi
        pause_ms "$interval_ms"
        interval_ms=$((interval_ms >= 200 ? 400 : interval_ms * 2))
    done
}

# True when the tunnel works: every port listens and is this drone's ssh's.
tunnel_probe() {
    tunnel_ports_state
}

# The chosen ports into every setting that holds a placeholder for them.
tunnel_use_ports() {
    TUNNEL_ROUTE=$(with_ports "$TUNNEL_ROUTE")
    CHAIN_ROUTE=$(with_ports "$CHAIN_ROUTE")
    CVMFS_HTTP_PROXY=$(with_ports "$CVMFS_HTTP_PROXY")
}

# "socks 127.0.0.1:P, squid 127.0.0.1:Q" for the log; with tunnel.parallel
# or a proxy forward, then "; connection K socks ..., proxy ..." per connection.
tunnel_ports_text() {
    local index name text="socks 127.0.0.1:${TUNNEL_PORTS[0]}" k
    local forwards=${#TUNNEL_FORWARD_TARGETS[@]}
    for index in "${!TUNNEL_FORWARD_TARGETS[@]}"; do
        name=${TUNNEL_FORWARD_NAMES[index]:-forward $((index + 1))}
        text+=", $name 127.0.0.1:${TUNNEL_PORTS[index + 1]} -> ${TUNNEL_FORWARD_TARGETS[index]}"
    done
    for ((k = 1; k <= TUNNEL_PARALLEL; k++)); do
        if ((k > 1)); then
            text+="; connection $k socks 127.0.0.1:${TUNNEL_PORTS[forwards + k - 1]}"
        fi
        if [[ -n $TUNNEL_PROXY_FORWARD ]]; then
            text+=", proxy 127.0.0.1:${TUNNEL_PORTS[forwards + TUNNEL_PARALLEL + k - 1]}"
            text+=" -> $TUNNEL_PROXY_FORWARD"
        fi
    done
    printf '%s' "$text"
}

tunnel_stop() {
    if [[ -n $TUNNEL_PID ]]; then
        stop_process "$TUNNEL_PID" 5000
        TUNNEL_PID=""
        # shellcheck disable=SC2034  # for the watchdog (lib/monitoring.sh)
        PATH_SUPERVISOR_PID=""
        log "tunnel stopped"
    fi
}

# Write the ssh_config, start the supervisor on the picked ports and wait: 0
# ready, 1 not up in time, 2 a port was taken by another process meanwhile.
tunnel_start() {
    local ciphers
    ciphers=$(tunnel_ciphers)
    {
        with_ports "$(write_ssh_config)"
        if [[ -n $ciphers ]]; then
            printf '    Ciphers %s\n' "$ciphers"
        fi
    } >"$DRONE_DIR/ssh_config" ||
        fail tunnel "$EXIT_TUNNEL" "cannot write $DRONE_DIR/ssh_config"
    TUNNEL_OWNED=()
    TUNNEL_FOREIGN=""
    tunnel_supervise_parallel &
    TUNNEL_PID=$!
    # shellcheck disable=SC2034  # for the watchdog (lib/monitoring.sh)
    PATH_SUPERVISOR_PID=$TUNNEL_PID
    tunnel_wait_ports
}

tunnel_stage() {
    local started port attempt state
    started=$(now_us)
    command -v ssh >/dev/null || fail tunnel "$EXIT_TUNNEL" "ssh not found in PATH"
    for port in $(tunnel_wanted); do
        if [[ $port != auto ]] && port_open "$port"; then
            fail tunnel "$EXIT_TUNNEL" "127.0.0.1:$port is already in use on" \
                "$(hostname) (another drone?): set tunnel.socks_port and the" \
                "forwards' listen_port to auto to give each drone its own ports"
        fi
    done
    CLEANUP+=(tunnel_stop)
    tunnel_order_targets
    for ((attempt = 1; ; attempt++)); do
        tunnel_pick_ports ||
            fail tunnel "$EXIT_TUNNEL" "no free local ports in" \
                "${TUNNEL_PORT_RANGE[0]}-${TUNNEL_PORT_RANGE[1]} on $(hostname);" \
                "widen tunnel.port_range"
        tunnel_start
        state=$?
        ((state == 2)) || break
        tunnel_stop
        if [[ " $(tunnel_wanted | tr '\n' ' ') " == *" $TUNNEL_FOREIGN "* ]] ||
            ((attempt >= TUNNEL_PORT_ATTEMPTS)); then
            fail tunnel "$EXIT_TUNNEL" "127.0.0.1:$TUNNEL_FOREIGN was taken by" \
                "another process on $(hostname) while the tunnel started" \
                "(attempt $attempt)"
        fi
        log "tunnel: 127.0.0.1:$TUNNEL_FOREIGN was taken by another process;" \
            "trying other ports"
    done
    tunnel_use_ports
    log "tunnel: local ports $(tunnel_ports_text)"
    if ((state != 0)); then
        stage_unready tunnel "$EXIT_TUNNEL" tunnel_probe \
            "SOCKS port 127.0.0.1:${TUNNEL_PORTS[0]}" \
            "not up after $((TUNNEL_READY_TIMEOUT_MS / 1000))s through $TUNNEL_ROUTE;" \
            "see ssh's messages above"
    fi
    stage_ready tunnel "$started"
}
