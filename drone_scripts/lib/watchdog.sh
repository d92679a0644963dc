# shellcheck shell=bash
# tardis-netadapter drone watchdog: probes the pool through the drone's own
# chain, heals a dead tunnel, and writes one heartbeat record per interval.
#
# Sourced by the drone script (bash >= 4.4, as the whole script); safe under
# `set -euo pipefail`.
# Documented in docs/monitoring.md. The adapter reads the records in bulk
# (tardis_netadapter/connectivity) and decides connected / degraded / lost.
#
# Inputs (shell variables, set before calling tna_watchdog_start):
#   TNA_DRONE_UUID           required; the TARDIS drone uuid (file name of the record)
#   TNA_HEARTBEAT_DIR        required; directory on the shared filesystem the
#                            adapter reads (a leading ~ is expanded to $HOME)
#   TNA_HEARTBEAT_INTERVAL   seconds between rounds (default 30)
#   TNA_PROBE_TIMEOUT        seconds per probe (default 5)
#   TNA_POOL_ENDPOINTS       blank-separated HOST:PORT list (collector, schedds)
#   TNA_CHAIN_PREFIX         bash ARRAY put before each probe to go through the
#                            drone's chain, e.g. (proxychains4 -q -f "$conf");
#                            empty or unset: direct
#   TNA_TUNNEL_PIDFILE       file with the tunnel supervisor's pid (read each
#                            round; autossh writes one via AUTOSSH_PIDFILE), or
#   TNA_TUNNEL_PID           its pid; neither: the tunnel is not checked
#   TNA_TUNNEL_RESTART       name of a shell function that restarts the tunnel
#                            (must return quickly; runs in the watchdog's process
#                            and may set TNA_TUNNEL_PID)
#   TNA_TUNNEL_RESTARTS_FILE a file the tunnel's own supervisor appends one
#                            line to per restart: counted into "restarts"
#   TNA_TUNNEL_ERROR_FILE    the supervisor's last failure, one line
#                            EPOCH<TAB>CLASS<TAB>DETAIL (lib/supervise.sh),
#                            present while it fails: "path_error" in the record
#   TNA_TUNNEL_FORCE_SIGNAL  signal (e.g. USR1) sent to a living supervisor
#                            whose tunnel failed every probe in every round
#                            for TNA_FORCE_AFTER seconds (default two
#                            heartbeat intervals; at least two rounds) while
#                            it reports no failure of its own: it reconnects
#                            at once; at most once per TNA_FORCE_AFTER;
#                            empty: never sent
#   TNA_FAILING_INTERVAL     seconds between rounds while the path fails
#                            (default TNA_HEARTBEAT_INTERVAL): a healed path
#                            shows in the next record sooner
#   TNA_RUN_DIR              node-local directory for stage files and the ad
#                            file (default ${TMPDIR:-/tmp}/tna-$TNA_DRONE_UUID)
#   TNA_JOB_ID               the batch system's job id (the drone script
#                            exports it); empty: null in the record
#   TNA_STAGES               bash ARRAY: the stages in the record, in the order
#                            the first failing one is blamed (the drone script
#                            renders it from tardis_netadapter/modes/stages.py)
#   TNA_CONDOR_PING          auto (default; run condor_ping when installed and
#                            record the result), require (a failed condor_ping
#                            fails the probe) or off
#   TNA_HEARTBEAT_TRANSPORT  file (default) or ssh (no shared filesystem: the
#                            record is sent back through TNA_HEARTBEAT_SSH)
#   TNA_HEARTBEAT_SSH        bash ARRAY: ssh command to the login node for the
#                            ssh transport, e.g. (ssh -o BatchMode=yes -o
#                            ControlPath="$ctl" login.example.org)
#   TNA_ISOLATION_FILE       one line METHOD<TAB>TOOL<TAB>REASON (lib/netns.sh's
#                            ns/isolation): the record's "isolation" object;
#                            unset or absent: null
#   TNA_LEAKS_FILE           one line "UDP OTHER" (packets the namespace's
#                            rules dropped): "leaks_blocked", their sum
#   TNA_OUTER_STATE_FILE     "up" or "down CLASS" (the namespace's outer link,
#                            written by the keeper outside): while down, the
#                            stage isolation is blamed (state restarting)
#   TNA_VPN_STATE_FILE       "up ADDRESS TRANSPORT" or "down CLASS" (mode vpn's
#                            ns/vpn.state, lib/vpn.sh): the record's "vpn"
#                            object ({"transport","address"}); while down, the
#                            stage vpn is blamed (state restarting once it
#                            was ok); unset: "vpn" is null
#   TNA_ROUTE_CHECK          name of a function run at the start of every
#                            round that checks the drone's route again and
#                            rewrites TNA_ROUTE_STATE_FILE (mode nat's
#                            nat_route_watch, lib/route.sh); unset: none
#   TNA_ROUTE_STATE_FILE     "ok|fail<TAB>VIA<TAB>SEEN<TAB>REASON" (mode
#                            nat's route.state): the record's "route" object
#                            ({"ok","via","seen","reason"}); while fail, the
#                            stage route is blamed (failed, with REASON);
#                            unset: "route" is null
#   TNA_CNET_STATE_FILE      "ok|fail<TAB>ADDRESS<TAB>SEEN<TAB>REASON" (mode
#                            container-net's container-net.state, written by
#                            the reporter inside the payload's container,
#                            lib/container_net.sh): the record's
#                            "container_net" object ({"ok","address","seen",
#                            "reason"}); re-read every round: while fail, or
#                            older than TNA_CNET_STALE_S seconds (the reporter
#                            is gone), the stage container-net is blamed;
#                            unset: "container_net" is null
#   TNA_WATCHDOG_ROUNDS      rounds to run, 0 (default) = until the drone script
#                            exits (TNA_PARENT_PID, default: $$ at source time)
#
# Functions for the drone script:
#   tna_stage NAME STATE [DETAIL]  record a stage: NAME one of TNA_STAGES;
#                                  STATE in pending starting ok failed
#                                  restarting skipped
#   tna_watchdog_start             run tna_watchdog_loop in the background,
#                                  pid in TNA_WATCHDOG_PID (kill it at exit)
#   tna_watchdog_once              one round (probe, heal, write)
#   tna_startd_cron_env            export _CONDOR_STARTD_CRON_* publishing the
#                                  ad file in the startd ad
#
# Outputs: "$TNA_HEARTBEAT_DIR/$TNA_DRONE_UUID.json" (one line of ASCII JSON,
# replaced atomically) and "$TNA_RUN_DIR/tna.ad" (ClassAd lines).

: "${TNA_PARENT_PID:=$$}"
if ! declare -p TNA_STAGES >/dev/null 2>&1; then
  TNA_STAGES=()
fi
TNA_SEQ=0
TNA_RESTARTS=0
TNA_LAST_OK=""
TNA_FAILING_SINCE=""
TNA_LAST_ERROR=""
TNA_FAILING_STAGE=""
# rounds in a row in which every probe through a living tunnel failed,
# since when (epoch s), and when the supervisor was last forced
TNA_DEAD_ROUNDS=0
TNA_DEAD_SINCE=""
TNA_FORCED_AT=0

tna_log() {
  printf 'tna-watchdog: %s\n' "$*" >&2
}

# tna_json_escape OUTVAR STRING: STRING as a JSON string literal, ASCII only
# (bytes outside printable ASCII become \u00XX), at most 300 characters.
tna_json_escape() {
  local LC_ALL=C
  local __tna_s=${2:0:300} __tna_out="" __tna_c __tna_code __tna_i
  if [[ $__tna_s != *[!\ -~]* && $__tna_s != *[\"\\]* ]]; then
    printf -v "$1" '"%s"' "$__tna_s"
    return 0
  fi
  for ((__tna_i = 0; __tna_i < ${#__tna_s}; __tna_i++)); do
    __tna_c=${__tna_s:__tna_i:1}
    case $__tna_c in
      '"') __tna_out+='\"' ;;
      \\) __tna_out+="\\\\" ;;
      [\ -~]) __tna_out+=$__tna_c ;;
      *)
        printf -v __tna_code '%d' "'$__tna_c"
        printf -v __tna_c '\\u%04x' $((__tna_code & 255))
        __tna_out+=$__tna_c
        ;;
    esac
  done
  printf -v "$1" '"%s"' "$__tna_out"
}

# tna_json_opt OUTVAR STRING: like tna_json_escape, but null for an empty STRING.
tna_json_opt() {
  if [[ -z ${2:-} ]]; then
    printf -v "$1" 'null'
  else
    tna_json_escape "$1" "$2"
  fi
}

# tna_classad_escape OUTVAR STRING: a ClassAd string literal (quotes and
# backslashes become ', anything not printable ASCII becomes ?).
tna_classad_escape() {
  local LC_ALL=C
  local __tna_s=${2:0:300}
  __tna_s=${__tna_s//[\"\\]/\'}
  __tna_s=${__tna_s//[!\ -~]/?}
  printf -v "$1" '"%s"' "$__tna_s"
}

tna_now() {
  printf -v "$1" '%(%s)T' -1
}

# tna_now_us OUTVAR: microseconds since the epoch (bash 5 EPOCHREALTIME, else date).
tna_now_us() {
  local __tna_t
  if [[ -n ${EPOCHREALTIME:-} ]]; then
    __tna_t=${EPOCHREALTIME//[!0-9]/}
  else
    __tna_t=$(date +%s%6N)
  fi
  printf -v "$1" '%s' "$((10#$__tna_t))"
}

tna_run_dir() {
  printf '%s' "${TNA_RUN_DIR:-${TMPDIR:-/tmp}/tna-${TNA_DRONE_UUID}}"
}

tna_heartbeat_dir() {
  local dir=${TNA_HEARTBEAT_DIR:-}
  if [[ $dir == \~ || $dir == \~/* ]]; then
    dir=${HOME}${dir:1}
  fi
  printf '%s' "$dir"
}

# tna_stage NAME STATE [DETAIL]: remember a stage's state for the watchdog
# (a file, because the watchdog runs in another process).
tna_stage() {
  local dir
  dir=$(tna_run_dir)
  mkdir -p -- "$dir" || return 0
  if printf '%s\t%s\n' "$2" "${3:-}" >"$dir/.stage.$1.tmp"; then
    mv -f -- "$dir/.stage.$1.tmp" "$dir/stage.$1" || true
  fi
}

# tna_stage_read NAME STATEVAR DETAILVAR
tna_stage_read() {
  local __tna_file __tna_line __tna_state="unknown" __tna_detail=""
  __tna_file="$(tna_run_dir)/stage.$1"
  if [[ -r $__tna_file ]] && IFS= read -r __tna_line <"$__tna_file"; then
    __tna_state=${__tna_line%%$'\t'*}
    __tna_detail=${__tna_line#*$'\t'}
    [[ $__tna_line == *$'\t'* ]] || __tna_detail=""
  fi
  printf -v "$2" '%s' "${__tna_state:-unknown}"
  printf -v "$3" '%s' "$__tna_detail"
}

tna_tunnel_pid() {
  local pid=""
  if [[ -n ${TNA_TUNNEL_PIDFILE:-} && -r $TNA_TUNNEL_PIDFILE ]]; then
    IFS= read -r pid <"$TNA_TUNNEL_PIDFILE" || true
  fi
  pid=${pid:-${TNA_TUNNEL_PID:-}}
  [[ $pid =~ ^[0-9]+$ ]] && printf '%s' "$pid"
  return 0
}

# tna_probe HOST PORT: TCP connect through the chain. Sets TNA_PROBE_OK (0/1),
# TNA_PROBE_MS (milliseconds, one decimal) and TNA_PROBE_ERR.
tna_probe() {
  local host=$1 port=$2 t0 t1 err rc us
  local timeout_s=${TNA_PROBE_TIMEOUT:-5}
  local -a prefix=()
  if declare -p TNA_CHAIN_PREFIX >/dev/null 2>&1; then
    prefix=("${TNA_CHAIN_PREFIX[@]}")
  fi
  tna_now_us t0
  rc=0
  # shellcheck disable=SC2016 # $1 and $2 expand in the probing shell
  err=$(timeout -k 2 "$timeout_s" ${prefix[@]+"${prefix[@]}"} "${BASH:-bash}" -c \
    'exec 3<>"/dev/tcp/$1/$2"' tna-probe "$host" "$port" 2>&1 >/dev/null) || rc=$?
  tna_now_us t1
  us=$((t1 - t0))
  printf -v TNA_PROBE_MS '%d.%d' $((us / 1000)) $((us % 1000 / 100))
  if ((rc == 0)); then
    TNA_PROBE_OK=1
    TNA_PROBE_ERR=""
  else
    TNA_PROBE_OK=0
    if ((rc == 124 || rc == 137)); then
      TNA_PROBE_ERR="timeout after ${timeout_s}s connecting to $host:$port"
    else
      err=${err%$'\n'}
      TNA_PROBE_ERR="${err##*$'\n'}"
      TNA_PROBE_ERR=${TNA_PROBE_ERR:-exit status $rc connecting to $host:$port}
    fi
  fi
}

# tna_condor_ping HOST PORT: 0 when condor_ping through the chain succeeds.
tna_condor_ping() {
  local -a prefix=()
  if declare -p TNA_CHAIN_PREFIX >/dev/null 2>&1; then
    prefix=("${TNA_CHAIN_PREFIX[@]}")
  fi
  timeout -k 2 "${TNA_PROBE_TIMEOUT:-5}" ${prefix[@]+"${prefix[@]}"} \
    condor_ping -address "<$1:$2>" -quiet READ >/dev/null 2>&1
}

# tna_check_tunnel STATEVAR: "ok" if the supervisor lives (or is not watched),
# else restart it through TNA_TUNNEL_RESTART and report "restarting"/"failed".
tna_check_tunnel() {
  local __tna_pid
  __tna_pid=$(tna_tunnel_pid)
  if [[ -z $__tna_pid ]] || kill -0 "$__tna_pid" 2>/dev/null; then
    printf -v "$1" 'ok'
    return 0
  fi
  TNA_LAST_ERROR="tunnel supervisor (pid $__tna_pid) is gone"
  if [[ -n ${TNA_TUNNEL_RESTART:-} ]] && declare -F "$TNA_TUNNEL_RESTART" >/dev/null; then
    TNA_RESTARTS=$((TNA_RESTARTS + 1))
    tna_log "tunnel (pid $__tna_pid) is gone; restart $TNA_RESTARTS"
    "$TNA_TUNNEL_RESTART" || tna_log "tunnel restart function failed"
    tna_stage tunnel restarting "$TNA_LAST_ERROR"
    printf -v "$1" 'restarting'
  else
    tna_stage tunnel failed "$TNA_LAST_ERROR"
    printf -v "$1" 'failed'
  fi
}

# tna_write_record LINE: replace the drone's record atomically (tmp + mv in
# the same directory), on the shared filesystem or through ssh.
tna_write_record() {
  local line=$1 dir tmp final rdir
  local name="${TNA_DRONE_UUID}.json"
  if [[ ${TNA_HEARTBEAT_TRANSPORT:-file} == ssh ]]; then
    dir=${TNA_HEARTBEAT_DIR:-}
    if [[ $dir == \~/* ]]; then
      # shellcheck disable=SC2016 # $HOME expands on the login node
      printf -v rdir '"$HOME"/%q' "${dir:2}"
    else
      printf -v rdir '%q' "$dir"
    fi
    printf '%s\n' "$line" | timeout -k 2 "${TNA_PROBE_TIMEOUT:-5}" \
      "${TNA_HEARTBEAT_SSH[@]}" \
      "mkdir -p -- $rdir && cat > $rdir/.$name.tmp.$$ && mv -f -- $rdir/.$name.tmp.$$ $rdir/$name" \
      >/dev/null 2>&1 || {
      tna_log "could not send the heartbeat through ssh"
      return 0
    }
    return 0
  fi
  dir=$(tna_heartbeat_dir)
  tmp="$dir/.$name.tmp.${BASHPID:-$$}"
  final="$dir/$name"
  {
    mkdir -p -- "$dir" &&
      printf '%s\n' "$line" >"$tmp" &&
      mv -f -- "$tmp" "$final"
  } 2>/dev/null || {
    rm -f -- "$tmp" 2>/dev/null
    tna_log "could not write the heartbeat to $final"
  }
  return 0
}

# tna_restarts VAR: tunnel restarts so far, the watchdog's and the supervisor's.
tna_restarts() {
  local __tna_lines=0
  if [[ -n ${TNA_TUNNEL_RESTARTS_FILE:-} && -r $TNA_TUNNEL_RESTARTS_FILE ]]; then
    __tna_lines=$(wc -l <"$TNA_TUNNEL_RESTARTS_FILE" 2>/dev/null) || __tna_lines=0
  fi
  printf -v "$1" '%d' "$((TNA_RESTARTS + ${__tna_lines//[^0-9]/}))"
}

# tna_write_ad VERDICT STAGE LATENCY NOW: the ClassAd lines for STARTD_CRON.
tna_write_ad() {
  local dir stage=undefined latency=undefined err=undefined restarts
  dir=$(tna_run_dir)
  tna_restarts restarts
  [[ -n $2 ]] && tna_classad_escape stage "$2"
  [[ -n $3 ]] && latency=$3
  [[ -n $TNA_LAST_ERROR ]] && tna_classad_escape err "$TNA_LAST_ERROR"
  mkdir -p -- "$dir" 2>/dev/null || return 0
  printf 'TnaVerdict = "%s"\nTnaFailingStage = %s\nTnaHeartbeatTime = %s\nTnaProbeLatencyMs = %s\nTnaRestarts = %s\nTnaLastError = %s\n' \
    "$1" "$stage" "$4" "$latency" "$restarts" "$err" >"$dir/.tna.ad.tmp" 2>/dev/null &&
    mv -f -- "$dir/.tna.ad.tmp" "$dir/tna.ad" 2>/dev/null
  return 0
}

# tna_path_error OUTVAR: the supervisor's last failure as the record's
# "path_error" object ({"class","detail","since"}), or null.
tna_path_error() {
  local __tna_line="" __tna_since __tna_class __tna_detail __tna_pclass __tna_pdetail
  if [[ -n ${TNA_TUNNEL_ERROR_FILE:-} && -r $TNA_TUNNEL_ERROR_FILE ]]; then
    IFS= read -r __tna_line <"$TNA_TUNNEL_ERROR_FILE" || true
  fi
  if [[ $__tna_line != *$'\t'*$'\t'* ]]; then
    printf -v "$1" 'null'
    return 0
  fi
  __tna_since=${__tna_line%%$'\t'*}
  __tna_line=${__tna_line#*$'\t'}
  __tna_class=${__tna_line%%$'\t'*}
  __tna_detail=${__tna_line#*$'\t'}
  [[ $__tna_since =~ ^[0-9]{1,12}$ ]] || __tna_since=null
  tna_json_escape __tna_pclass "${__tna_class:0:40}"
  tna_json_escape __tna_pdetail "$__tna_detail"
  printf -v "$1" '{"class":%s,"detail":%s,"since":%s}' "$__tna_pclass" "$__tna_pdetail" "$__tna_since"
}

# tna_isolation OUTVAR: the record's "isolation" object from
# TNA_ISOLATION_FILE and TNA_LEAKS_FILE
# ({"method","tool","reason","leaks_blocked"}), or null.
tna_isolation() {
  local __tna_line="" __tna_method __tna_tool __tna_reason __tna_leaks=null
  local __tna_udp="" __tna_other=""
  if [[ -n ${TNA_ISOLATION_FILE:-} && -r $TNA_ISOLATION_FILE ]]; then
    IFS= read -r __tna_line <"$TNA_ISOLATION_FILE" || true
  fi
  if [[ $__tna_line != *$'\t'*$'\t'* ]]; then
    printf -v "$1" 'null'
    return 0
  fi
  __tna_method=${__tna_line%%$'\t'*}
  __tna_line=${__tna_line#*$'\t'}
  __tna_tool=${__tna_line%%$'\t'*}
  __tna_reason=${__tna_line#*$'\t'}
  if [[ $__tna_method == namespace && -n ${TNA_LEAKS_FILE:-} && -r $TNA_LEAKS_FILE ]] &&
    read -r __tna_udp __tna_other _ <"$TNA_LEAKS_FILE" &&
    [[ $__tna_udp =~ ^[0-9]{1,15}$ && $__tna_other =~ ^[0-9]{1,15}$ ]]; then
    __tna_leaks=$((__tna_udp + __tna_other))
  fi
  tna_json_opt __tna_method "${__tna_method:0:20}"
  tna_json_opt __tna_tool "${__tna_tool:0:40}"
  tna_json_opt __tna_reason "$__tna_reason"
  printf -v "$1" '{"method":%s,"tool":%s,"reason":%s,"leaks_blocked":%s}' \
    "$__tna_method" "$__tna_tool" "$__tna_reason" "$__tna_leaks"
}

# tna_outer_down DETAILVAR: true while TNA_OUTER_STATE_FILE says the
# namespace's outer link is down; DETAILVAR then names its class.
tna_outer_down() {
  local __tna_state=""
  if [[ -n ${TNA_OUTER_STATE_FILE:-} && -r $TNA_OUTER_STATE_FILE ]]; then
    IFS= read -r __tna_state <"$TNA_OUTER_STATE_FILE" || true
  fi
  [[ $__tna_state == down* ]] || return 1
  __tna_state=${__tna_state#down}
  printf -v "$1" 'outer link down: %s' "${__tna_state# }"
}

# tna_vpn_state STATEVAR ADDRESSVAR TRANSPORTVAR: the words of
# TNA_VPN_STATE_FILE (false when it is not configured or unreadable).
tna_vpn_state() {
  local __tna_line="" __tna_words=()
  [[ -n ${TNA_VPN_STATE_FILE:-} && -r $TNA_VPN_STATE_FILE ]] || return 1
  IFS= read -r __tna_line <"$TNA_VPN_STATE_FILE" || [[ -n $__tna_line ]] || return 1
  read -r -a __tna_words <<<"$__tna_line"
  printf -v "$1" '%s' "${__tna_words[0]:-}"
  if [[ ${__tna_words[0]:-} == up ]]; then
    printf -v "$2" '%s' "${__tna_words[1]:-}"
    printf -v "$3" '%s' "${__tna_words[2]:-}"
  else
    printf -v "$2" '%s' ""
    printf -v "$3" '%s' "${__tna_line#*down}" # the class, for the detail
  fi
}

# tna_vpn OUTVAR: the record's "vpn" object ({"transport","address"}: dtls or
# tls and the tun's IPv4 address while up, nulls while down), or null when
# the drone has no VPN.
tna_vpn() {
  local __tna_state="" __tna_address="" __tna_transport="" __tna_a=null __tna_t=null
  if [[ -z ${TNA_VPN_STATE_FILE:-} ]]; then
    printf -v "$1" 'null'
    return 0
  fi
  if tna_vpn_state __tna_state __tna_address __tna_transport && [[ $__tna_state == up ]]; then
    [[ $__tna_address =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] && __tna_a="\"$__tna_address\""
    [[ $__tna_transport == dtls || $__tna_transport == tls ]] && __tna_t="\"$__tna_transport\""
  fi
  printf -v "$1" '{"transport":%s,"address":%s}' "$__tna_t" "$__tna_a"
}

# tna_vpn_down DETAILVAR: true while TNA_VPN_STATE_FILE says the VPN is down
# (or says nothing yet); DETAILVAR then names its class.
tna_vpn_down() {
  local __tna_state="" __tna_address="" __tna_class=""
  [[ -n ${TNA_VPN_STATE_FILE:-} ]] || return 1
  tna_vpn_state __tna_state __tna_address __tna_class || __tna_class=" starting"
  [[ $__tna_state != up ]] || return 1
  __tna_class=${__tna_class# }
  printf -v "$1" 'vpn down: %s' "${__tna_class:-unknown}"
}

# tna_route_state OKVAR VIAVAR SEENVAR REASONVAR: the fields of
# TNA_ROUTE_STATE_FILE (false when it is not configured or not written yet).
tna_route_state() {
  local __tna_rl="" __tna_rs_state __tna_rs_via __tna_rs_seen __tna_rs_reason
  [[ -n ${TNA_ROUTE_STATE_FILE:-} && -r $TNA_ROUTE_STATE_FILE ]] || return 1
  IFS= read -r __tna_rl <"$TNA_ROUTE_STATE_FILE" || [[ -n $__tna_rl ]] || return 1
  [[ $__tna_rl == *$'\t'*$'\t'*$'\t'* ]] || return 1
  # split by hand: a tab is IFS white space, so read would merge empty fields
  __tna_rs_state=${__tna_rl%%$'\t'*}
  __tna_rl=${__tna_rl#*$'\t'}
  __tna_rs_via=${__tna_rl%%$'\t'*}
  __tna_rl=${__tna_rl#*$'\t'}
  __tna_rs_seen=${__tna_rl%%$'\t'*}
  __tna_rs_reason=${__tna_rl#*$'\t'}
  [[ $__tna_rs_state == ok || $__tna_rs_state == fail ]] || return 1
  printf -v "$1" '%s' "$__tna_rs_state"
  printf -v "$2" '%s' "$__tna_rs_via"
  printf -v "$3" '%s' "$__tna_rs_seen"
  printf -v "$4" '%s' "$__tna_rs_reason"
}

# tna_route OUTVAR: the record's "route" object ({"ok","via","seen","reason"}:
# the last route check of a mode nat drone, addresses null when unknown), or
# null when the drone has no route check.
tna_route() {
  local __tna_state="" __tna_via="" __tna_seen="" __tna_reason="" __tna_ok=false
  local __tna_v=null __tna_s=null __tna_r
  if [[ -z ${TNA_ROUTE_STATE_FILE:-} ]]; then
    printf -v "$1" 'null'
    return 0
  fi
  if ! tna_route_state __tna_state __tna_via __tna_seen __tna_reason; then
    __tna_reason="not checked yet"
  fi
  [[ $__tna_state == ok ]] && __tna_ok=true
  [[ $__tna_via =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] && __tna_v="\"$__tna_via\""
  [[ $__tna_seen =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] && __tna_s="\"$__tna_seen\""
  tna_json_escape __tna_r "$__tna_reason"
  printf -v "$1" '{"ok":%s,"via":%s,"seen":%s,"reason":%s}' "$__tna_ok" "$__tna_v" "$__tna_s" "$__tna_r"
}

# tna_cnet_state OKVAR ADDRVAR SEENVAR REASONVAR: the fields of
# TNA_CNET_STATE_FILE, a report older than TNA_CNET_STALE_S read as failing
# (false when it is not configured or not written yet).
tna_cnet_state() {
  local __tna_cl="" __tna_cs __tna_ca __tna_cn __tna_cr __tna_mtime __tna_now
  [[ -n ${TNA_CNET_STATE_FILE:-} && -r $TNA_CNET_STATE_FILE ]] || return 1
  IFS= read -r __tna_cl <"$TNA_CNET_STATE_FILE" || [[ -n $__tna_cl ]] || return 1
  [[ $__tna_cl == *$'\t'*$'\t'*$'\t'* ]] || return 1
  __tna_cs=${__tna_cl%%$'\t'*}
  __tna_cl=${__tna_cl#*$'\t'}
  __tna_ca=${__tna_cl%%$'\t'*}
  __tna_cl=${__tna_cl#*$'\t'}
  __tna_cn=${__tna_cl%%$'\t'*}
  __tna_cr=${__tna_cl#*$'\t'}
  [[ $__tna_cs == ok || $__tna_cs == fail ]] || return 1
  if [[ -n ${TNA_CNET_STALE_S:-} ]] &&
    __tna_mtime=$(stat -c %Y -- "$TNA_CNET_STATE_FILE" 2>/dev/null); then
    tna_now __tna_now
    if ((__tna_now - __tna_mtime > TNA_CNET_STALE_S)); then
      __tna_cs=fail
      __tna_cr="no report from the container for $((__tna_now - __tna_mtime))s: the"
      __tna_cr+=" reporter in the payload's container is gone"
    fi
  fi
  printf -v "$1" '%s' "$__tna_cs"
  printf -v "$2" '%s' "$__tna_ca"
  printf -v "$3" '%s' "$__tna_cn"
  printf -v "$4" '%s' "$__tna_cr"
}

# tna_cnet OUTVAR: the record's "container_net" object
# ({"ok","address","seen","reason"}: the last report from the payload's
# container, addresses null when unknown), or null without container-net.
tna_cnet() {
  local __tna_state="" __tna_addr="" __tna_seen="" __tna_reason="" __tna_ok=false
  local __tna_a=null __tna_s=null __tna_r
  if [[ -z ${TNA_CNET_STATE_FILE:-} ]]; then
    printf -v "$1" 'null'
    return 0
  fi
  if ! tna_cnet_state __tna_state __tna_addr __tna_seen __tna_reason; then
    __tna_reason="no report yet"
  fi
  [[ $__tna_state == ok ]] && __tna_ok=true
  [[ $__tna_addr =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] && __tna_a="\"$__tna_addr\""
  [[ $__tna_seen =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] && __tna_s="\"$__tna_seen\""
  tna_json_escape __tna_r "$__tna_reason"
  printf -v "$1" '{"ok":%s,"address":%s,"seen":%s,"reason":%s}' "$__tna_ok" "$__tna_a" "$__tna_s" "$__tna_r"
}

# tna_round_cnet STATES DETAILS: the container's last report decides stage
# container-net once it was ready: a failing or stale report blames it, a
# passing one clears it.
tna_round_cnet() {
  local -n __tna_cstates=$1 __tna_cdetails=$2
  # shellcheck disable=SC2034 # address and seen go into the record elsewhere
  local state="" address="" seen="" reason=""
  tna_cnet_state state address seen reason || return 0
  case ${__tna_cstates[container-net]} in
  pending | starting) return 0 ;;
  esac
  if [[ $state == fail ]]; then
    __tna_cstates[container-net]=failed
    __tna_cdetails[container-net]=${reason:-container network check failed}
  elif [[ ${__tna_cstates[container-net]} == failed ]]; then
    __tna_cstates[container-net]=ok
  fi
}

# tna_force_reconnect N_OK N_FAILED: when every probe failed while the
# supervisor lives and reports no failure (it believes ssh works: a hung
# session ServerAlive has not caught yet), and has for TNA_FORCE_AFTER
# seconds (at least two rounds), send it TNA_TUNNEL_FORCE_SIGNAL, at most
# once per TNA_FORCE_AFTER (a pool that is down, not the tunnel, must not
# make every drone log in again and again). Its own restart line counts the
# reconnect, so TNA_RESTARTS is not raised here.
tna_force_reconnect() {
  local pid now after=${TNA_FORCE_AFTER:-$((2 * ${TNA_HEARTBEAT_INTERVAL:-30}))}
  if (($1 > 0 || $2 == 0)) || [[ -z ${TNA_TUNNEL_FORCE_SIGNAL:-} ]]; then
    TNA_DEAD_ROUNDS=0
    TNA_DEAD_SINCE=""
    return 0
  fi
  pid=$(tna_tunnel_pid)
  if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null ||
    [[ -n ${TNA_TUNNEL_ERROR_FILE:-} && -e $TNA_TUNNEL_ERROR_FILE ]]; then
    TNA_DEAD_ROUNDS=0 # no supervisor, or it knows and is at work
    TNA_DEAD_SINCE=""
    return 0
  fi
  tna_now now
  TNA_DEAD_ROUNDS=$((TNA_DEAD_ROUNDS + 1))
  TNA_DEAD_SINCE=${TNA_DEAD_SINCE:-$now}
  if ((TNA_DEAD_ROUNDS >= 2 && now - TNA_DEAD_SINCE >= after &&
    now - TNA_FORCED_AT >= after)); then
    tna_log "every probe failed for $((now - TNA_DEAD_SINCE))s ($TNA_DEAD_ROUNDS" \
      "rounds) while the tunnel supervisor (pid $pid) lives: forcing a" \
      "reconnect (SIG$TNA_TUNNEL_FORCE_SIGNAL)"
    kill -s "$TNA_TUNNEL_FORCE_SIGNAL" "$pid" 2>/dev/null || true
    TNA_FORCED_AT=$now
    TNA_DEAD_ROUNDS=0
    TNA_DEAD_SINCE=""
  fi
}

# tna_round_route STATES DETAILS (names of the round's associative arrays):
# check the route again (TNA_ROUTE_CHECK) and let its result decide stage
# route: a failing check blames it (failed, the check's reason) whatever its
# stage file says; a passing one clears a failed stage. A stage not run yet
# (pending, starting) keeps its state.
tna_round_route() {
  local -n __tna_states=$1 __tna_details=$2
  # shellcheck disable=SC2034 # via and seen are filled but go into the record elsewhere
  local state="" via="" seen="" reason=""
  if [[ -n ${TNA_ROUTE_CHECK:-} ]] && declare -F "$TNA_ROUTE_CHECK" >/dev/null; then
    "$TNA_ROUTE_CHECK" || true
  fi
  tna_route_state state via seen reason || return 0
  case ${__tna_states[route]} in
  pending | starting) return 0 ;;
  esac
  if [[ $state == fail ]]; then
    __tna_states[route]=failed
    __tna_details[route]=${reason:-route check failed}
  elif [[ ${__tna_states[route]} == failed || ${__tna_states[route]} == restarting ]]; then
    __tna_states[route]=ok
  fi
}

# tna_watchdog_once: check the tunnel, probe every endpoint, write the record.
tna_watchdog_once() {
  local now name state detail stage_json="" probes_json="" endpoint host port
  local n_ok=0 n_failed=0 failing="" error="" e_json ep_json slowest=""
  local condor_mode=${TNA_CONDOR_PING:-auto} condor tunnel_state
  local -A states=() details=()
  for name in "${TNA_STAGES[@]}"; do
    tna_stage_read "$name" state detail
    states[$name]=$state
    details[$name]=$detail
  done
  TNA_LAST_ERROR=""
  if [[ -n ${states[route]+set} ]]; then
    tna_round_route states details
  fi
  if [[ -n ${states[container-net]+set} ]]; then
    tna_round_cnet states details
  fi
  if [[ -n ${states[isolation]+set} ]] && tna_outer_down detail; then
    states[isolation]=restarting # the keeper outside restarts it
    details[isolation]=$detail
  fi
  if [[ -n ${states[vpn]+set} ]] && tna_vpn_down detail; then
    case ${states[vpn]} in
    ok | restarting) states[vpn]=restarting ;; # its supervisor reconnects
    pending | starting) ;;                    # not up yet: the detail says why
    *) detail=${details[vpn]:-$detail} ;;
    esac
    details[vpn]=$detail
  fi
  tna_check_tunnel tunnel_state
  if [[ $tunnel_state != ok ]]; then
    states[tunnel]=$tunnel_state
    details[tunnel]=$TNA_LAST_ERROR
  elif [[ ${states[tunnel]:-} == restarting || ${states[tunnel]:-} == failed ]] &&
    [[ -n $(tna_tunnel_pid) ]]; then
    # the restarted supervisor lives: the probes tell whether it works
    states[tunnel]=ok
    tna_stage tunnel ok
  fi
  [[ $condor_mode == auto || $condor_mode == require ]] &&
    ! command -v condor_ping >/dev/null 2>&1 && condor_mode=off

  for endpoint in ${TNA_POOL_ENDPOINTS:-}; do
    host=${endpoint%:*}
    port=${endpoint##*:}
    host=${host#[}
    host=${host%]}
    tna_probe "$host" "$port"
    condor=null
    if ((TNA_PROBE_OK)) && [[ $condor_mode != off ]]; then
      if tna_condor_ping "$host" "$port"; then
        condor=true
      else
        condor=false
        if [[ $condor_mode == require ]]; then
          TNA_PROBE_OK=0
          TNA_PROBE_ERR="condor_ping READ to $host:$port failed"
        fi
      fi
    fi
    tna_json_escape ep_json "$endpoint"
    [[ -n $probes_json ]] && probes_json+=","
    if ((TNA_PROBE_OK)); then
      n_ok=$((n_ok + 1))
      probes_json+="{\"endpoint\":$ep_json,\"ok\":true,\"latency_ms\":$TNA_PROBE_MS,\"error\":null,\"condor\":$condor}"
      if [[ -z $slowest ]] || ((${TNA_PROBE_MS/./} > ${slowest/./})); then
        slowest=$TNA_PROBE_MS
      fi
    else
      n_failed=$((n_failed + 1))
      [[ -n $error ]] || error=$TNA_PROBE_ERR
      tna_json_escape e_json "$TNA_PROBE_ERR"
      probes_json+="{\"endpoint\":$ep_json,\"ok\":false,\"latency_ms\":null,\"error\":$e_json,\"condor\":$condor}"
    fi
  done

  if [[ $tunnel_state == ok ]]; then
    tna_force_reconnect "$n_ok" "$n_failed"
  fi

  for name in "${TNA_STAGES[@]}"; do
    if [[ ${states[$name]} == failed || ${states[$name]} == restarting ]]; then
      failing=$name
      error=${details[$name]:-stage $name ${states[$name]}}
      break
    fi
  done
  if [[ -z $failing ]] && ((n_failed > 0 || n_ok + n_failed == 0)); then
    for name in "${TNA_STAGES[@]}"; do
      [[ $name != payload ]] || continue # the path's stages, not the payload
      if [[ ${states[$name]} == pending || ${states[$name]} == starting ]]; then
        failing=$name
        error=${details[$name]:-${error:-stage $name is still ${states[$name]}}}
        break
      fi
    done
    if [[ -z $failing ]] && ((n_failed > 0)); then
      if ((n_ok == 0)); then failing=chain; else failing=pool; fi
    fi
  fi

  tna_now now
  TNA_SEQ=$((TNA_SEQ + 1))
  if [[ -z $failing ]]; then
    [[ -n $TNA_FAILING_STAGE ]] && tna_log "path to the pool works again"
    TNA_LAST_OK=$now
    TNA_FAILING_SINCE=""
    TNA_LAST_ERROR=""
  else
    [[ $failing != "$TNA_FAILING_STAGE" ]] && tna_log "failing at stage $failing: $error"
    TNA_FAILING_SINCE=${TNA_FAILING_SINCE:-$now}
    TNA_LAST_ERROR=$error
  fi
  TNA_FAILING_STAGE=$failing

  for name in "${TNA_STAGES[@]}"; do
    tna_json_escape state "${states[$name]}"
    stage_json+="${stage_json:+,}\"$name\":$state"
  done
  local j_uuid j_job j_host j_err j_stage restarts path_error isolation vpn route cnet
  tna_restarts restarts
  tna_path_error path_error
  tna_isolation isolation
  tna_vpn vpn
  tna_route route
  tna_cnet cnet
  tna_json_escape j_uuid "$TNA_DRONE_UUID"
  tna_json_opt j_job "${TNA_JOB_ID:-}"
  tna_json_opt j_host "${HOSTNAME:-}"
  tna_json_opt j_err "$TNA_LAST_ERROR"
  tna_json_opt j_stage "$failing"
  tna_write_record "{\"v\":1,\"uuid\":$j_uuid,\"time\":$now,\"seq\":$TNA_SEQ,\"job\":$j_job,\"host\":$j_host,\"interval\":${TNA_HEARTBEAT_INTERVAL:-30},\"stages\":{$stage_json},\"probes\":[$probes_json],\"restarts\":$restarts,\"last_ok\":${TNA_LAST_OK:-null},\"failing_since\":${TNA_FAILING_SINCE:-null},\"last_error\":$j_err,\"failing_stage\":$j_stage,\"path_error\":$path_error,\"isolation\":$isolation,\"vpn\":$vpn,\"route\":$route,\"container_net\":$cnet}"

  local verdict=connected
  if [[ -n $failing ]]; then
    if [[ -n $TNA_LAST_OK ]]; then verdict=degraded; else verdict=connecting; fi
  fi
  tna_write_ad "$verdict" "$failing" "$slowest" "$now"
  return 0
}

# tna_watchdog_loop: a round every TNA_HEARTBEAT_INTERVAL seconds, until the
# drone script (TNA_PARENT_PID) is gone or TNA_WATCHDOG_ROUNDS are done.
tna_watchdog_loop() {
  local interval=${TNA_HEARTBEAT_INTERVAL:-30} rounds=${TNA_WATCHDOG_ROUNDS:-0}
  local done_rounds=0 t0 t1 rest
  if [[ -z ${TNA_DRONE_UUID:-} ]] ||
    [[ -z ${TNA_HEARTBEAT_DIR:-} && ${TNA_HEARTBEAT_TRANSPORT:-file} == file ]]; then
    tna_log "TNA_DRONE_UUID and TNA_HEARTBEAT_DIR are required; no watchdog"
    return 0
  fi
  while kill -0 "$TNA_PARENT_PID" 2>/dev/null; do
    tna_now t0
    tna_watchdog_once
    done_rounds=$((done_rounds + 1))
    if ((rounds > 0 && done_rounds >= rounds)); then
      break
    fi
    tna_now t1
    if [[ -n $TNA_FAILING_STAGE ]]; then
      rest=$((${TNA_FAILING_INTERVAL:-$interval} - (t1 - t0)))
    else
      rest=$((interval - (t1 - t0)))
    fi
    ((rest > 0)) || rest=1
    sleep "$rest" || true
  done
  return 0
}

# tna_watchdog_start: the loop in the background; its pid in TNA_WATCHDOG_PID.
tna_watchdog_start() {
  tna_watchdog_loop </dev/null &
  # shellcheck disable=SC2034 # for the drone script, which kills it at exit
  TNA_WATCHDOG_PID=$!
}

# tna_startd_cron_env: publish the ad file in the startd ad (the same knobs as
# tardis_netadapter.connectivity.startd_cron.startd_cron_knobs). Set
# TNA_STARTD_CRON_JOBLIST to the payload's own job list to keep it.
tna_startd_cron_env() {
  local joblist="${TNA_STARTD_CRON_JOBLIST:-} TNA"
  export _CONDOR_STARTD_CRON_JOBLIST="${joblist# }"
  export _CONDOR_STARTD_CRON_TNA_EXECUTABLE=/bin/cat
  _CONDOR_STARTD_CRON_TNA_ARGS="$(tna_run_dir)/tna.ad"
  export _CONDOR_STARTD_CRON_TNA_ARGS
  export _CONDOR_STARTD_CRON_TNA_PERIOD="${TNA_HEARTBEAT_INTERVAL:-30}s"
  export _CONDOR_STARTD_CRON_TNA_MODE=Periodic
}
