# shellcheck shell=bash
# vpn.sh: stage vpn (mode vpn): openconnect into the site's VPN server inside
# the drone's private namespace. PLACEHOLDER until VPN-BASH builds it.
# Settings (group vpn, rendered by tardis_netadapter/modes/vpn.py): VPN_SERVER
# VPN_PORT VPN_SERVERCERT VPN_USER VPN_PASSWORD_FILE VPN_CERTIFICATE VPN_KEY
# VPN_AUTHGROUP VPN_DTLS VPN_PROTOCOL VPN_MTU VPN_RECONNECT_TIMEOUT VPN_DPD
# VPN_FALLBACK VPN_INTERFACE VPN_ROUTE VPN_READY_TIMEOUT_MS VPN_PROBE_HOST
# VPN_PROBE_PORT NS_FIRST_HOPS; config function write_capture_nft (the guard).

vpn_stage() {
    # placeholder: names every setting so shellcheck sees them read
    local settings=("$VPN_SERVER" "$VPN_PORT" "$VPN_SERVERCERT" "$VPN_USER"
        "$VPN_PASSWORD_FILE" "$VPN_CERTIFICATE" "$VPN_KEY" "$VPN_AUTHGROUP"
        "$VPN_DTLS" "$VPN_PROTOCOL" "$VPN_MTU" "$VPN_RECONNECT_TIMEOUT" "$VPN_DPD"
        "$VPN_FALLBACK" "$VPN_INTERFACE" "$VPN_ROUTE" "$VPN_READY_TIMEOUT_MS"
        "$VPN_PROBE_HOST" "$VPN_PROBE_PORT" "${NS_FIRST_HOPS[@]}")
    log "vpn: ${#settings[@]} settings; $VPN_ROUTE"
    fail vpn "${EXIT_VPN:-25}" "not built yet"
}
