# shellcheck shell=bash
# toy.sh: the toy mode's stage (tests/unit/toys/toy_mode.py), inserted
# into the drone script like any mode library.

TOY_CONF=""

# What the toy adds to the payload: a variable and a layer (lib/payload.sh).
PAYLOAD_ENVIRONMENT+=(toy_environment)
PAYLOAD_LAYERS+=(toy_layer)

toy_environment() {
    PAYLOAD_ENV+=("TOY_SAID=$TOY_GREETING" "TOY_CONF=$TOY_CONF")
}

toy_layer() {
    printf '%s\0' env TOY_LAYER=wrapped
}

toy_stage() {
    local started
    started=$(now_us)
    TOY_CONF=$DRONE_DIR/toy.conf
    write_toy_conf >"$TOY_CONF" || fail toy 60 "cannot write $TOY_CONF"
    log "toy: $TOY_GREETING"
    stage_ready toy "$started"
}
