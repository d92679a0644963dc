# shellcheck shell=bash
# cvmfs.sh: CVMFS without privileges through cvmfsexec's tools.
#   mountrepo  mounts each repository under DIST/cvmfs now; unmounted on exit
#   cvmfsexec  mounts them at /cvmfs in a namespace around the payload
#   singcvmfs  mounts them inside the container (singularity --fusemount)
#   auto       picks the first the worker supports, in that order of cleanliness:
#              cvmfsexec (user namespaces), mountrepo (/dev/fuse), singcvmfs

CVMFS_ACTIVE_MODE=none
CVMFS_TOOLS=""
CVMFS_ROOT=""
CVMFS_MOUNTED=()

# What CVMFS adds to the payload (lib/payload.sh composes it).
PAYLOAD_ENVIRONMENT+=(cvmfs_environment)
PAYLOAD_LAYERS+=(cvmfs_layer)
PAYLOAD_STARTED+=(cvmfs_track_layers)
PAYLOAD_VERDICTS+=(cvmfs_verdict)

# Where CVMFS is visible and through which proxy, for the payload.
cvmfs_environment() {
    if [[ -n $CVMFS_ROOT ]]; then
        PAYLOAD_ENV+=("TARDIS_CVMFS_ROOT=$CVMFS_ROOT"
            "TARDIS_CVMFS_HTTP_PROXY=$CVMFS_HTTP_PROXY")
    fi
}

# /cvmfs/REPO for each repository: what the markers check before going on.
cvmfs_dirs() {
    local repo
    for repo in "${CVMFS_REPOSITORIES[@]}"; do
        printf '%s\0' "/cvmfs/$repo"
    done
}

# cvmfsexec mounts the repositories in a namespace around the rest.
cvmfs_layer() {
    local dirs=()
    if [[ $CVMFS_ACTIVE_MODE == cvmfsexec ]]; then
        mapfile -d '' dirs < <(cvmfs_dirs)
        printf '%s\0' "$CVMFS_TOOLS/cvmfsexec" "${CVMFS_REPOSITORIES[@]}" --
        payload_enter cvmfs "${dirs[@]}"
    fi
}

# STATUS: cvmfsexec or singcvmfs ended before their layer was up.
cvmfs_verdict() {
    local status=$1 marks=$DRONE_DIR/stages
    if [[ $CVMFS_ACTIVE_MODE == cvmfsexec && ! -e $marks/cvmfs ]]; then
        echo "$EXIT_CVMFS cvmfs cvmfsexec exited with status $status before" \
            "${CVMFS_REPOSITORIES[*]} were visible at /cvmfs"
    elif [[ $CVMFS_ACTIVE_MODE == singcvmfs && ! -e $marks/container ]]; then
        echo "$EXIT_CVMFS cvmfs singcvmfs exited with status $status before" \
            "the container started"
    fi
}

# When cvmfsexec or singcvmfs mount around the payload, log the mount as the
# cvmfs stage once the layers are up (or the command line ended).
cvmfs_track_layers() {
    local launched=$2 marks=$DRONE_DIR/stages
    case $CVMFS_ACTIVE_MODE in
    cvmfsexec | singcvmfs) ;;
    *) return 0 ;;
    esac
    wait_until $((CVMFS_MOUNT_TIMEOUT_S * 1000)) payload_layers_done
    if [[ -e $marks/payload ]]; then
        stage_ready cvmfs "$launched"
    fi
}

# cvmfs resolves names itself, past the chain: the proxy is a numeric address,
# written where every mode's cvmfs2 reads it (DIST/etc/cvmfs/default.d). The
# file is shared by every drone of the site: a proxy through a forward with a
# per-drone port is written as a reference to TARDIS_CVMFS_HTTP_PROXY, which
# cvmfs2 expands (it reads its configuration through sh) in the environment of
# the drone that mounts, so drones on one node do not overwrite each other.
cvmfs_write_config() {
    local dist=$1 dir=$1/etc/cvmfs/default.d file text
    file=$dir/90-tardis-netadapter.conf
    text="# written by tardis-netadapter drones (settings of the Network profile)"$'\n'
    if ((CVMFS_PROXY_PER_DRONE)); then
        # shellcheck disable=SC2016  # expanded by cvmfs2's sh, not here
        text+='CVMFS_HTTP_PROXY="${TARDIS_CVMFS_HTTP_PROXY}"'$'\n'
    else
        text+="CVMFS_HTTP_PROXY=\"$CVMFS_HTTP_PROXY\""$'\n'
    fi
    if [[ -n $CVMFS_SERVER_URL ]]; then
        text+="CVMFS_SERVER_URL=\"$CVMFS_SERVER_URL\""$'\n'
    fi
    mkdir -p "$dir" || return 1
    if [[ -f $file && $(<"$file")$'\n' == "$text" ]]; then
        return 0
    fi
    printf '%s' "$text" >"$file.$$" && mv -f "$file.$$" "$file"
}

cvmfs_pick_mode() {
    if [[ $CVMFS_MODE != auto ]]; then
        printf '%s' "$CVMFS_MODE"
    elif [[ -x $CVMFS_TOOLS/cvmfsexec ]] && unshare -U true 2>/dev/null; then
        printf cvmfsexec
    elif [[ -x $CVMFS_TOOLS/mountrepo && -r /dev/fuse && -w /dev/fuse ]]; then
        printf mountrepo
    elif [[ -x $CVMFS_TOOLS/singcvmfs && $CONTAINER_RUNTIME != none ]]; then
        printf singcvmfs
    else
        return 1
    fi
}

cvmfs_visible() {
    local root=$1 repo
    for repo in "${CVMFS_REPOSITORIES[@]}"; do
        [[ -d $root/$repo ]] || return 1
    done
}

cvmfs_unmount() {
    local repo
    for repo in "${CVMFS_MOUNTED[@]}"; do
        if "$CVMFS_TOOLS/umountrepo" "$repo" >/dev/null 2>&1; then
            log "cvmfs: unmounted $repo"
        else
            log "cvmfs: could not unmount $repo from $CVMFS_ROOT"
        fi
    done
    CVMFS_MOUNTED=()
}

cvmfs_mountrepo() {
    local repo status
    CVMFS_ROOT=$(expand_home "$CVMFS_DIST")/cvmfs
    CLEANUP+=(cvmfs_unmount)
    for repo in "${CVMFS_REPOSITORIES[@]}"; do
        timeout "$CVMFS_MOUNT_TIMEOUT_S" "$CVMFS_TOOLS/mountrepo" "$repo" >&2
        status=$?
        if ((status != 0)); then
            fail cvmfs "$EXIT_CVMFS" "mountrepo $repo exited with status $status" \
                "(proxy $CVMFS_HTTP_PROXY)"
        fi
        CVMFS_MOUNTED+=("$repo")
    done
    cvmfs_visible "$CVMFS_ROOT" ||
        fail cvmfs "$EXIT_CVMFS" "repositories not visible under $CVMFS_ROOT after mounting"
}

cvmfs_stage() {
    local started dist
    started=$(now_us)
    if [[ $CVMFS_MODE == none ]]; then
        stage_skipped cvmfs "mode none"
        return 0
    fi
    dist=$(expand_home "$CVMFS_DIST")
    CVMFS_TOOLS=$(dirname -- "$dist")
    [[ -d $dist ]] || fail cvmfs "$EXIT_CVMFS" "cvmfsexec distribution $dist not found"
    CVMFS_ACTIVE_MODE=$(cvmfs_pick_mode) ||
        fail cvmfs "$EXIT_CVMFS" "nothing can mount CVMFS on $(hostname):" \
            "unshare -U fails (no unprivileged user namespaces), /dev/fuse is not" \
            "usable and no container is configured for singcvmfs (tools in $CVMFS_TOOLS)"
    [[ -x $CVMFS_TOOLS/$CVMFS_ACTIVE_MODE ]] ||
        fail cvmfs "$EXIT_CVMFS" "$CVMFS_TOOLS/$CVMFS_ACTIVE_MODE not found or not executable"
    cvmfs_write_config "$dist" ||
        fail cvmfs "$EXIT_CVMFS" "cannot write the proxy configuration into $dist/etc/cvmfs"
    TARDIS_CVMFS_HTTP_PROXY=$CVMFS_HTTP_PROXY
    export CVMFS_HTTP_PROXY TARDIS_CVMFS_HTTP_PROXY
    case $CVMFS_ACTIVE_MODE in
    mountrepo)
        cvmfs_mountrepo
        stage_ready cvmfs "$started"
        ;;
    cvmfsexec | singcvmfs)
        CVMFS_ROOT=/cvmfs
        log "stage cvmfs prepared: $CVMFS_ACTIVE_MODE mounts" \
            "${CVMFS_REPOSITORIES[*]} around the payload"
        ;;
    *)
        fail cvmfs "$EXIT_CVMFS" "unknown mode $CVMFS_ACTIVE_MODE"
        ;;
    esac
}
