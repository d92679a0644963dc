"""The fixed bodies of the routers' scripts (render.py adds the configuration).

``tna-nat-health`` is keepalived's vrrp_script: a TCP connect through the
public side; failing ``fall`` times puts the router in FAULT, so a router
whose way out is broken gives the addresses up. ``tna-nat-notify`` is
keepalived's notify script: it drives conntrackd as conntrackd's own
primary-backup.sh does (Debian: /usr/share/doc/conntrackd/examples/sync/),
so the router becoming MASTER puts the peers' connection state into its kernel
table before it forwards, and a router leaving MASTER asks for a resync. It
does not start conntrackd (its unit does), and it does nothing to conntrackd
when the sync is off; each state change is written to STATE_FILE and
NOTIFY_LOG, which is how failover times are read in the lab.
"""

HEALTH = r"""
set -o nounset

# bash opens the connection itself (/dev/tcp); timeout bounds a silent drop.
# The inner script's $1 and $2 are its own arguments, hence single quotes.
# shellcheck disable=SC2016
exec timeout "$CONNECT_TIMEOUT" bash -c 'exec 3<>"/dev/tcp/$1/$2"' tna-nat-health "$TARGET_HOST" "$TARGET_PORT" 2>/dev/null
"""

NOTIFY = r"""
set -o nounset

log() {
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ) $ROUTER: $*"
    printf '%s\n' "$line" >>"$NOTIFY_LOG" 2>/dev/null || true
    logger -t tna-nat-notify -- "$ROUTER: $*" 2>/dev/null || true
}

# One conntrackd action; a failure is logged and the next action still runs,
# as in conntrackd's primary-backup.sh.
conntrackd_do() {
    local what=$1
    shift
    if ! conntrackd -C "$CONNTRACKD_CONF" "$@" >/dev/null 2>&1; then
        log "conntrackd $* failed ($what)"
    fi
}

# This router now holds the addresses: the flows the old master forwarded are
# in the external cache; put them into the kernel before they arrive here.
primary() {
    conntrackd_do "commit the external cache to the kernel table" -c
    conntrackd_do "flush the internal and external caches" -f
    conntrackd_do "resync the internal cache with the kernel table" -R
    conntrackd_do "send a bulk update to the other routers" -B
}

# Another router holds the addresses (or this one is faulty): age the flows
# this router forwarded and ask the master for its state.
backup() {
    if ! conntrackd -C "$CONNTRACKD_CONF" -s >/dev/null 2>&1; then
        log "conntrackd does not answer on its socket (is tna-nat-conntrackd running?); no state handed over"
        return 0
    fi
    conntrackd_do "shorten the kernel timers of this router's flows" -t
    conntrackd_do "request a resync from the master" -n
}

# keepalived calls: notify TYPE NAME STATE PRIORITY
state=${3:-}
case "$state" in
MASTER | BACKUP | FAULT | STOP) ;;
*)
    log "unexpected call: $*"
    exit 2
    ;;
esac
printf '%s\n' "$state" >"$STATE_FILE" 2>/dev/null || true
log "state $state (${2:-?})"
if [[ $CONNTRACK_SYNC != yes ]]; then
    exit 0
fi
case "$state" in
MASTER) primary ;;
BACKUP | FAULT) backup ;;
STOP) ;;
esac
exit 0
"""
