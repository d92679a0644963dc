# shellcheck shell=bash
# tunnel.sh: the supervised ssh tunnel from the worker out of the site.
# What ssh does is declared in the rendered ssh_config (write_ssh_config);
# this file picks the cipher, supervises ssh and waits for its ports.

TUNNEL_PID=""

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

# The supervisor's command: autossh -M 0 (restarts ssh on failure) or ssh.
tunnel_command() {
    local ssh_argv=(ssh -N -F "$DRONE_DIR/ssh_config" "$TUNNEL_TARGET")
    if [[ $TUNNEL_SUPERVISOR == autossh ]] && command -v autossh >/dev/null; then
        printf '%s\0' env AUTOSSH_GATETIME=0 AUTOSSH_POLL=30 \
            "AUTOSSH_PATH=$(command -v ssh)" autossh -M 0 "${ssh_argv[@]:1}"
        return
    fi
    printf '%s\0' "${ssh_argv[@]}"
}

# Runs in the background: restart the command whenever it exits, quickly at
# first and slower while it keeps failing at once (e.g. a refused key).
# autossh exits when its ssh is killed by a signal, so it is looped too.
tunnel_supervise() {
    local argv=() child="" started status delay_ms=200
    mapfile -d '' argv < <(tunnel_command)
    trap - EXIT HUP
    trap 'stop_process "$child" 2000; exit 0' TERM INT
    while :; do
        started=$(now_us)
        "${argv[@]}" </dev/null &
        child=$!
        wait "$child"
        status=$?
        if (($(now_us) - started > 30000000)); then
            delay_ms=200
        fi
        log "tunnel: ${argv[0]} exited with status $status; restarting in ${delay_ms}ms"
        sleep "$((delay_ms / 1000)).$(printf '%03d' $((delay_ms % 1000)))"
        delay_ms=$((delay_ms * 2 > 10000 ? 10000 : delay_ms * 2))
    done
}

tunnel_ports() {
    printf '%s\n' "$TUNNEL_SOCKS_PORT" "${TUNNEL_LOCAL_PORTS[@]}"
}

# True when the SOCKS port accepts connections. ssh binds it after every -L
# forward (the ssh_config lists it last) and exits if one fails
# (ExitOnForwardFailure), so the forwards need no probe of their own, which
# would open a connection to the service behind each of them.
tunnel_probe() {
    port_open "$TUNNEL_SOCKS_PORT"
}

tunnel_stop() {
    if [[ -n $TUNNEL_PID ]]; then
        stop_process "$TUNNEL_PID" 5000
        log "tunnel stopped"
    fi
}

tunnel_stage() {
    local started port
    started=$(now_us)
    if [[ $NETWORK_MODE != socks ]]; then
        stage_skipped tunnel "network mode $NETWORK_MODE"
        return 0
    fi
    command -v ssh >/dev/null || fail tunnel "$EXIT_TUNNEL" "ssh not found in PATH"
    for port in $(tunnel_ports); do
        if port_open "$port"; then
            fail tunnel "$EXIT_TUNNEL" "127.0.0.1:$port is already in use on" \
                "$(hostname) (another drone?): give each drone on a node its own" \
                "tunnel.socks_port and forwards"
        fi
    done
    local ciphers
    ciphers=$(tunnel_ciphers)
    {
        write_ssh_config
        if [[ -n $ciphers ]]; then
            printf '    Ciphers %s\n' "$ciphers"
        fi
    } >"$DRONE_DIR/ssh_config" ||
        fail tunnel "$EXIT_TUNNEL" "cannot write $DRONE_DIR/ssh_config"
    tunnel_supervise &
    TUNNEL_PID=$!
    CLEANUP+=(tunnel_stop)
    if ! wait_until "$TUNNEL_READY_TIMEOUT_MS" tunnel_probe; then
        stage_unready tunnel "$EXIT_TUNNEL" tunnel_probe \
            "SOCKS port 127.0.0.1:$TUNNEL_SOCKS_PORT" \
            "not up after $((TUNNEL_READY_TIMEOUT_MS / 1000))s through $TUNNEL_ROUTE;" \
            "see ssh's messages above"
    fi
    stage_ready tunnel "$started"
}
