# shellcheck shell=bash
# netns.sh: the drone's private user + network namespace (chain.capture:
# namespace). PLACEHOLDER until the namespace is built (issue 12): with capture
# preload the isolation stage is skipped, with namespace it refuses.

isolation_stage() {
    if [[ $CAPTURE_METHOD == preload ]]; then
        stage_skipped isolation "capture preload"
        return 0
    fi
    fail isolation 15 "namespace capture: not built yet"
}

# The capture settings, named once so shellcheck sees them read until the
# namespace code reads them itself.
netns_settings() {
    : "$ISOLATION" "$NS_OUTER" "$NS_MTU" "$NS_CIDR" "$NS_READY_TIMEOUT_MS" \
        "${NS_LOCALNET[@]}" "$CHAIN_RESOLVER" "$CHAIN_RESOLVER_ROUTE" \
        "$CHAIN_REDSOCKS" "$CAPTURE_UPSTREAM_TYPE" "${CAPTURE_UPSTREAM_PORTS[@]}" \
        "$CAPTURE_PORT_BASE"
}
