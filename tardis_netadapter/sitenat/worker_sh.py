"""The fixed body of the workers' ``tna-nat-routing`` script (render.py adds
the configuration block above it).

Three things make the drone users' path: the nft table that marks their
packets, the ``ip rule`` sending that mark to the table, and the table's
default route via the gateway. ``apply`` adds what is missing (the nft table is
replaced as a whole, so applying twice leaves one copy), ``remove`` deletes
exactly those three, ``check`` names what is missing, and ``keep`` repairs
whenever netlink reports a link, address, route or rule change (and every
KEEP_INTERVAL seconds in case an event was missed): an interface taken down
loses its routes, and nobody should have to restart a unit by hand (GSI's
InfiniBand flaps, seed 001).
"""

ROUTING = r"""
set -o nounset -o pipefail

readonly ME=tna-nat-routing
readonly RULE_WORDS=(pref "$RULE_PRIORITY" fwmark "$MARK" table "$TABLE")
readonly ROUTE_WORDS=(default via "$GATEWAY" table "$TABLE")

log() { printf '%s: %s\n' "$ME" "$*" >&2; }

usage() {
    printf 'usage: %s apply | remove | check | keep\n' "$ME" >&2
    exit 2
}

need_root() {
    if ((EUID != 0)); then
        log "$1 changes the network configuration: run it as root"
        exit 1
    fi
}

# --- what is in place -------------------------------------------------------

have_nft() {
    nft list chain inet "$NFT_TABLE" output >/dev/null 2>&1
}

have_rule() {
    [[ -n $(ip -4 rule show "${RULE_WORDS[@]}" 2>/dev/null) ]]
}

have_route() {
    local route
    route=$(ip -4 route show table "$TABLE" exact 0.0.0.0/0 2>/dev/null)
    [[ $route == "default via $GATEWAY "* ]]
}

# One line per missing piece, in the words the repair log uses.
missing() {
    have_nft || echo "nft table inet $NFT_TABLE"
    have_rule || echo "rule fwmark $MARK lookup $TABLE"
    have_route || echo "route default via $GATEWAY table $TABLE"
}

# --- the actions ------------------------------------------------------------

# Adds what is missing. The ruleset file replaces its table as a whole, so it
# is loaded every time (a changed file takes effect, two loads leave one
# table). A route that cannot be added yet (its gateway is on no connected
# network: link down, address gone) is a warning: the keeper adds it later.
apply() {
    local failed=0
    if ! nft -f "$NFT_FILE"; then
        log "cannot load $NFT_FILE"
        failed=1
    fi
    if ! have_rule && ! ip -4 rule add "${RULE_WORDS[@]}"; then
        log "cannot add the rule fwmark $MARK lookup $TABLE"
        failed=1
    fi
    if ! have_route && ! ip -4 route replace "${ROUTE_WORDS[@]}" 2>/dev/null; then
        log "cannot add route default via $GATEWAY table $TABLE yet: the gateway is on no connected network (link down or address missing?)"
    fi
    return "$failed"
}

# Removes exactly what apply adds, and nothing else.
remove() {
    while have_rule; do
        ip -4 rule del "${RULE_WORDS[@]}" || break
    done
    if have_route; then
        ip -4 route del "${ROUTE_WORDS[@]}" || true
    fi
    if nft list table inet "$NFT_TABLE" >/dev/null 2>&1; then
        nft delete table inet "$NFT_TABLE" || true
    fi
    if have_rule || have_route || nft list table inet "$NFT_TABLE" >/dev/null 2>&1; then
        log "could not remove everything:"
        missing_inverse >&2
        return 1
    fi
    return 0
}

missing_inverse() {
    have_nft && echo "  nft table inet $NFT_TABLE is still there"
    have_rule && echo "  rule fwmark $MARK lookup $TABLE is still there"
    have_route && echo "  route default via $GATEWAY table $TABLE is still there"
    return 0
}

# The device a route leaves through ("... dev IF ...").
route_dev() {
    local words word next=""
    read -r -a words <<<"$1"
    for word in "${words[@]}"; do
        if [[ $next == dev ]]; then
            printf '%s\n' "$word"
            return 0
        fi
        next=$word
    done
    return 1
}

# What is not wrong here but breaks the drones' path: said, never fatal.
notes() {
    local main_dev gateway_dev
    if [[ -z $(ip -4 route show default 2>/dev/null) ]]; then
        log "note: the main table has no default route, so a drone connection to an outside address fails ('Network is unreachable') before it can be marked; give the workers their usual default route"
        return 0
    fi
    main_dev=$(route_dev "$(ip -4 route show default | head -n 1)") || return 0
    gateway_dev=$(route_dev "$(ip -4 route get "$GATEWAY" 2>/dev/null | head -n 1)") || return 0
    if [[ $main_dev != "$gateway_dev" ]]; then
        log "note: the main default route leaves through $main_dev but the gateway $GATEWAY is on $gateway_dev: the kernel chooses a connection's source address before the mark re-routes it, so the drones' packets leave $gateway_dev with $main_dev's address. The routers must route that address back to this worker and $gateway_dev needs loose reverse-path filtering (net.ipv4.conf.$gateway_dev.rp_filter=2); see docs/site-nat.md"
    fi
}

check() {
    local gaps line
    gaps=$(missing)
    notes
    if [[ -z $gaps ]]; then
        log "ok: marked traffic (fwmark $MARK) goes via $GATEWAY (table $TABLE)"
        return 0
    fi
    while IFS= read -r line; do
        log "missing: $line"
    done <<<"$gaps"
    return 1
}

# --- the keeper -------------------------------------------------------------

LAST_LEFT=""

# Re-applies when something is missing and says what came back; what cannot be
# repaired yet is logged once per change, not every interval.
repair() {
    local gaps left line errors
    gaps=$(missing)
    if [[ -z $gaps ]]; then
        LAST_LEFT=""
        return 0
    fi
    errors=$(apply 2>&1 >/dev/null)
    left=$(missing)
    while IFS= read -r line; do
        if [[ -n $line && $'\n'$left$'\n' != *$'\n'$line$'\n'* ]]; then
            log "repaired: $line"
        fi
    done <<<"$gaps"
    if [[ -n $left && $left != "$LAST_LEFT" ]]; then
        while IFS= read -r line; do
            log "cannot repair yet: $line"
        done <<<"$left"
        # why, in apply's words (nft's or ip's error, without our prefix)
        while IFS= read -r line; do
            [[ -n $line ]] && log "  ${line#"$ME: "}"
        done <<<"$errors"
    fi
    LAST_LEFT=$left
}

MONITOR=""

stop_monitor() {
    if [[ -n $MONITOR ]]; then
        kill "$MONITOR" 2>/dev/null || true
        MONITOR=""
    fi
}

keep() {
    local events line count
    trap 'stop_monitor; exit 0' TERM INT
    trap stop_monitor EXIT
    log "keeper: watching links, addresses, routes and rules; full check every ${KEEP_INTERVAL}s"
    while :; do
        exec {events}< <(exec ip -4 monitor link address route rule 2>/dev/null)
        MONITOR=$!
        while :; do
            repair
            if read -r -t "$KEEP_INTERVAL" -u "$events" line; then
                # a flap is a burst of events: take them all, then check once
                count=0
                while ((count < 200)) && read -r -t 0.2 -u "$events" line; do
                    count=$((count + 1))
                done
            elif (($? <= 128)); then
                log "keeper: ip monitor ended; starting it again"
                break
            fi
        done
        exec {events}<&-
        stop_monitor
        sleep 1
    done
}

case "${1:-}" in
apply)
    need_root apply
    apply
    ;;
remove)
    need_root remove
    remove
    ;;
check)
    check
    ;;
keep)
    need_root keep
    keep
    ;;
*)
    usage
    ;;
esac
"""
