#!/usr/bin/env bash
# Print the options (one per line) that `podman run` / `podman build` need on this machine to run IMAGE, found by
# probing `podman run --rm --network=none [options] IMAGE true`; nothing where podman's defaults work.
#
#   deploy/image/podman-options.sh IMAGE
#
# Two limits of sandboxes and small VMs are handled (both seen on the 2-core build machine, Debian bookworm's
# podman 4.3):
#   * crun refuses a hybrid cgroup v1 + v2 host: "crun: cgroups in hybrid mode not supported, drop all controllers
#     from cgroupv2" -> --runtime runc (apt-get install runc), which accepts it;
#   * without CAP_SYS_RESOURCE the OCI runtime cannot raise RLIMIT_NOFILE / RLIMIT_NPROC to podman's defaults:
#     "crun: setrlimit `RLIMIT_NOFILE`: Operation not permitted" / "runc: error setting rlimit type 7" ->
#     --ulimit nofile=<this shell's hard limit> and nproc=<the highest value that works, at most the hard limit>.
# PODMAN (default podman) names the engine. Exit 1, with podman's last error, if nothing works.
set -euo pipefail

IMAGE=${1:?usage: podman-options.sh IMAGE}
PODMAN=${PODMAN:-podman}
last_error=""

works() {
    local out
    if out=$(timeout 120 "$PODMAN" run --rm --network=none "$@" "$IMAGE" true 2>&1); then
        return 0
    fi
    last_error=$out
    return 1
}

runtimes=("")
if command -v runc >/dev/null; then runtimes+=("runc"); fi
nofile=$(ulimit -Hn)
nproc_hard=$(ulimit -Hu)
nprocs=()
for n in "$nproc_hard" 32768 4096; do
    if [[ "$nproc_hard" == unlimited || "$n" == unlimited ]] || (( n <= nproc_hard )); then nprocs+=("$n"); fi
done

for runtime in "${runtimes[@]}"; do
    base=()
    [[ -n "$runtime" ]] && base=(--runtime "$runtime")
    if works "${base[@]}"; then
        if (( ${#base[@]} )); then printf '%s\n' "${base[@]}"; fi
        exit 0
    fi
    for nproc in "${nprocs[@]}"; do
        options=("${base[@]}" --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
        if works "${options[@]}"; then
            printf '%s\n' "${options[@]}"
            exit 0
        fi
    done
done
printf 'podman-options.sh: no podman options run %s here; last error:\n%s\n' "$IMAGE" "$last_error" >&2
exit 1
