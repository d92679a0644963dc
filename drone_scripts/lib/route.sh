# shellcheck shell=bash
# route.sh: stage route (network mode nat): the drone's own traffic takes the
# site's NAT path. The site marks the packets of the drone users (nftables,
# `meta skuid`/`skgid`) and routes the mark through its own table to the NAT
# routers' VIP (tardis-netadapter site-nat renders that; docs/site-nat.md).
# The drone adds nothing to the path: no tunnel, no LD_PRELOAD. It checks, as
# the drone user, at start and in every heartbeat round:
#   user     the drone runs as one of nat.users or in one of nat.groups
#            (else its packets are never marked)
#   rule     `ip rule` lists fwmark MARK -> lookup TABLE (or its name)
#   via      `ip route get TARGET mark MARK` says via GATEWAY
#   connect  a TCP connect to the check target (bash /dev/tcp, a timeout)
#   address  with nat.address_echo: the echo service saw us as the NAT's
#            public address (nothing else proves the NAT's own leg)
# The first failure names what is wrong; stage route waits for it to heal
# with monitoring (the watchdog's records name it), else ends the drone with
# exit 35. The watchdog re-runs the check every round (TNA_ROUTE_CHECK) and
# puts its result into the record's "route" object (docs/monitoring.md).
# Settings (group nat): NAT_GATEWAY NAT_PUBLIC_ADDRESS NAT_MARK NAT_TABLE
# NAT_TABLE_NAME NAT_USERS NAT_GROUPS NAT_CHECK_HOST NAT_CHECK_PORT
# NAT_ADDRESS_ECHO NAT_CHECK_TIMEOUT_S NAT_READY_TIMEOUT_MS.

# the last check's result (nat_route_check)
NAT_ROUTE_OK=0
NAT_ROUTE_VIA=""
NAT_ROUTE_SEEN=""
NAT_ROUTE_REASON=""
# one "NAME ok|fail|skip DETAIL" line per check, in order (check --probe)
NAT_ROUTE_ITEMS=()
# where the result is written for the watchdog (set by nat_route_stage)
NAT_ROUTE_STATE_FILE=""

# The mark as `ip rule` prints it (0x1).
nat_mark_hex() {
    printf '0x%x' "$((NAT_MARK))"
}

# nat_item NAME STATE DETAIL: record one check; the first failure is the reason.
nat_item() {
    NAT_ROUTE_ITEMS+=("$1 $2 ${*:3}")
    if [[ $2 == fail && -z $NAT_ROUTE_REASON ]]; then
        NAT_ROUTE_REASON="${*:3}"
    fi
}

# user: the drone's user or one of its groups is marked (names or numeric
# ids, as nat.users and nat.groups may hold either).
nat_check_user() {
    local user uid groups gids name
    uid=$(id -u)
    user=$(id -un 2>/dev/null) || user=$uid
    groups=" $(id -Gn 2>/dev/null) "
    gids=" $(id -G 2>/dev/null) "
    for name in "${NAT_USERS[@]}"; do
        if [[ $name == "$user" || $name == "$uid" ]]; then
            nat_item user ok "drone user $user is in nat.users"
            return 0
        fi
    done
    for name in "${NAT_GROUPS[@]}"; do
        if [[ $groups == *" $name "* || $gids == *" $name "* ]]; then
            nat_item user ok "drone user $user is in group $name (nat.groups)"
            return 0
        fi
    done
    nat_item user fail "drone user $user (groups:${groups% }) is in neither" \
        "nat.users (${NAT_USERS[*]:-none}) nor nat.groups (${NAT_GROUPS[*]:-none}):" \
        "its packets are not marked"
    return 1
}

# rule: a rule sends the mark to the NAT's table.
nat_check_rule() {
    local out line mark table want
    want="fwmark $(nat_mark_hex) lookup $NAT_TABLE_NAME (table $NAT_TABLE)"
    if ! out=$(ip -4 rule show 2>&1); then
        nat_item rule fail "ip rule show failed: ${out##*$'\n'}"
        return 1
    fi
    while IFS= read -r line; do
        [[ $line =~ fwmark\ (0x[0-9a-fA-F]+)(/(0x[0-9a-fA-F]+))?\ .*(lookup|table)\ ([^ ]+) ]] || continue
        mark=${BASH_REMATCH[1]}
        table=${BASH_REMATCH[5]}
        if [[ -n ${BASH_REMATCH[3]} ]] && ((BASH_REMATCH[3] != 0xffffffff)); then
            continue # a masked mark is not ours
        fi
        if ((mark == NAT_MARK)) && [[ $table == "$NAT_TABLE" || $table == "$NAT_TABLE_NAME" ]]; then
            nat_item rule ok "ip rule: ${line#*:$'\t'}"
            return 0
        fi
    done <<<"$out"
    nat_item rule fail "ip rule: no rule $want; the site's routing is not applied" \
        "(tna-nat-routing apply)"
    return 1
}

# nat_target_address VAR: the check target's IPv4 address (a name resolved).
nat_target_address() {
    local __address=$NAT_CHECK_HOST __line
    if [[ ! $__address =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
        __line=$(getent ahostsv4 "$NAT_CHECK_HOST" 2>/dev/null | head -n 1)
        __address=${__line%% *}
        [[ -n $__address ]] || return 1
    fi
    printf -v "$1" '%s' "$__address"
}

# via: the marked route to the check target goes through the NAT's VIP.
nat_check_via() {
    local address="" out="" via=""
    if ! nat_target_address address; then
        nat_item via fail "cannot resolve $NAT_CHECK_HOST to an IPv4 address"
        return 1
    fi
    if ! out=$(ip -4 route get "$address" mark "$NAT_MARK" 2>&1); then
        out=${out//$'\n'/ }
        nat_item via fail "ip route get $address mark $(nat_mark_hex): $out" \
            "(expected via $NAT_GATEWAY)"
        return 1
    fi
    out=${out//$'\n'/ }
    if [[ $out =~ \ via\ ([^ ]+) ]]; then
        via=${BASH_REMATCH[1]}
    fi
    NAT_ROUTE_VIA=$via
    if [[ -z $via ]]; then
        nat_item via fail "ip route get $address mark $(nat_mark_hex) goes without" \
            "a gateway (${out%% cache*}), expected via $NAT_GATEWAY (nat.gateway)"
        return 1
    elif [[ $via != "$NAT_GATEWAY" ]]; then
        nat_item via fail "ip route get $address mark $(nat_mark_hex) goes via $via," \
            "expected via $NAT_GATEWAY (nat.gateway)"
        return 1
    fi
    nat_item via ok "ip route get $address mark $(nat_mark_hex): via $via"
}

# connect: TCP to the check target, as the drone user (so its packets are marked).
nat_check_connect() {
    local err rc=0 timeout_s=${NAT_CHECK_TIMEOUT_S:-5} hint="" address
    # shellcheck disable=SC2016 # $1 and $2 expand in the probing shell
    err=$(timeout -k 1 "$timeout_s" "${BASH:-bash}" -c 'exec 3<>"/dev/tcp/$1/$2"' \
        nat-route "$NAT_CHECK_HOST" "$NAT_CHECK_PORT" 2>&1 >/dev/null) || rc=$?
    if ((rc == 0)); then
        nat_item connect ok "TCP connect to $NAT_CHECK_HOST:$NAT_CHECK_PORT"
        return 0
    fi
    if ((rc == 124 || rc == 137)); then
        err="timeout after ${timeout_s}s"
    fi
    err=${err%$'\n'}
    err=${err##*$'\n'}
    # connect() looks its route up before the packet is marked: without a
    # route in the main table it fails at once, whatever the marked table says
    if [[ $err == *"unreachable"* ]] && nat_target_address address &&
        ! ip -4 route get "$address" >/dev/null 2>&1; then
        hint="; the main table has no route to $address: connect() looks the route"
        hint+=" up before the packet is marked, so the worker needs a route there"
        hint+=" in its main table (the site's default router) for the mark to reroute"
    fi
    nat_item connect fail "TCP connect to $NAT_CHECK_HOST:$NAT_CHECK_PORT failed:" \
        "${err#*/dev/tcp/*: }$hint"
    return 1
}

# address: the echo service saw the NAT's public address. The answer's body
# is the caller's address (the first IPv4 address in it counts).
nat_check_address() {
    local url=$NAT_ADDRESS_ECHO rest host port path answer="" rc=0 body seen=""
    local timeout_s=${NAT_CHECK_TIMEOUT_S:-5}
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
    answer=$(timeout -k 1 "$timeout_s" "${BASH:-bash}" -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$3" "$1" >&3
        cat <&3 2>/dev/null || true' nat-echo "$host" "$port" "$path" 2>&1) || rc=$?
    # a server that closes without reading our headers resets the connection:
    # what it sent before counts
    if ((rc != 0)) || [[ $answer != HTTP/* ]]; then
        ((rc == 124 || rc == 137)) && answer="timeout after ${timeout_s}s"
        answer=${answer%$'\n'}
        nat_item address fail "address echo $url did not answer: ${answer##*$'\n'}"
        return 1
    fi
    body=${answer#*$'\r\n\r\n'}
    [[ $body != "$answer" ]] || body=${answer#*$'\n\n'}
    if [[ $body =~ ([0-9]{1,3}(\.[0-9]{1,3}){3}) ]]; then
        seen=${BASH_REMATCH[1]}
    fi
    NAT_ROUTE_SEEN=$seen
    if [[ $seen != "$NAT_PUBLIC_ADDRESS" ]]; then
        body=${body//[$'\r\n']/ }
        nat_item address fail "address echo $url saw us as ${seen:-nothing (${body:0:80})}," \
            "expected nat.public_address $NAT_PUBLIC_ADDRESS"
        return 1
    fi
    nat_item address ok "address echo $url saw us as $seen"
}

# nat_route_check: every check, in order (a later one is not run once one
# failed: its message would only repeat the cause); NAT_ROUTE_OK and the
# others hold the result, NAT_ROUTE_STATE_FILE (if set) gets it too.
nat_route_check() {
    NAT_ROUTE_OK=0 NAT_ROUTE_VIA="" NAT_ROUTE_SEEN="" NAT_ROUTE_REASON=""
    NAT_ROUTE_ITEMS=()
    if nat_check_user && nat_check_rule && nat_check_via && nat_check_connect; then
        if [[ -z $NAT_ADDRESS_ECHO ]]; then
            nat_item address skip "no nat.address_echo: the public address is not checked"
            NAT_ROUTE_OK=1
        elif nat_check_address; then
            NAT_ROUTE_OK=1
        fi
    fi
    nat_route_write_state
    ((NAT_ROUTE_OK))
}

# The result for the watchdog: STATE<TAB>VIA<TAB>SEEN<TAB>REASON (tmp + mv:
# the watchdog and the stage may check at the same moment).
nat_route_write_state() {
    local file=$NAT_ROUTE_STATE_FILE state=fail
    [[ -n $file ]] || return 0
    ((NAT_ROUTE_OK)) && state=ok
    printf '%s\t%s\t%s\t%s\n' "$state" "$NAT_ROUTE_VIA" "$NAT_ROUTE_SEEN" \
        "${NAT_ROUTE_REASON//$'\t'/ }" >"$file.${BASHPID:-$$}" 2>/dev/null &&
        mv -f -- "$file.${BASHPID:-$$}" "$file" 2>/dev/null
    return 0
}

# For the watchdog (TNA_ROUTE_CHECK): the same check, its result in the file.
nat_route_watch() {
    nat_route_check >/dev/null 2>&1 || true
}

# check --probe's job (tardis_netadapter/modes/nat.py): one "NAME STATE
# DETAIL" line per check.
nat_route_probe() {
    local item
    nat_route_check || true
    for item in "${NAT_ROUTE_ITEMS[@]}"; do
        printf 'route:%s\n' "$item"
    done
}

# Stage route: ready when every check passes.
nat_route_stage() {
    local started seen
    started=$(now_us)
    NAT_ROUTE_STATE_FILE=$DRONE_DIR/route.state
    # for the watchdog (lib/watchdog.sh): re-check each round, read the result
    # shellcheck disable=SC2034
    {
        TNA_ROUTE_CHECK=nat_route_watch
        TNA_ROUTE_STATE_FILE=$NAT_ROUTE_STATE_FILE
        PATH_PROBE_PREFIX=()
    }
    if ! wait_until "${NAT_READY_TIMEOUT_MS:-10000}" nat_route_check; then
        stage_unready route "$EXIT_ROUTE" nat_route_check "$NAT_ROUTE_REASON"
    fi
    seen="the public address is not checked (no nat.address_echo)"
    [[ -z $NAT_ROUTE_SEEN ]] || seen="the pool sees us as $NAT_ROUTE_SEEN"
    log "route: marked traffic (fwmark $(nat_mark_hex), table $NAT_TABLE_NAME) leaves via" \
        "${NAT_ROUTE_VIA:-$NAT_GATEWAY}, $NAT_CHECK_HOST:$NAT_CHECK_PORT answers, $seen"
    stage_ready route "$started"
}
