#!/usr/bin/env bash
# Build the image that deploy/rayservice.yaml names, emotion-service:<version of pyproject.toml>, with no container
# registry at all:
#
#   deploy/image/build.sh    # as root; needs debootstrap (first run only), podman, tar; runc where crun fails
#
#   1. Base image (once; kept as localhost/emotion-base:bookworm, EMOTION_REBUILD_BASE=1 redoes it): debootstrap
#      --variant=minbase bookworm from a Debian mirror, plus python3 (3.11), python3-venv, ca-certificates,
#      libstdc++6, tini, wget and procps (KubeRay's exec probes run `bash -c "wget ... | grep success"` on older
#      Ray versions), trimmed of apt lists, .debs, docs and locales, then `podman import`ed.
#   2. Build context (a fresh folder outside the checkout): what `pip install .` reads (pyproject.toml, README.md,
#      the packages of [tool.setuptools.packages.find], the bundled models/default among them), the Serve config,
#      and a wheelhouse: `pip wheel` of that source tree on this host, with this host's pip configuration (here the
#      local index), i.e. every serving dependency as a wheel, plus setuptools/wheel for the build backend.
#   3. `podman build --network=none` of deploy/image/Containerfile: the image installs from the wheelhouse only.
#
# Why a wheelhouse and not a bind mount of the host's index: the build needs no network and no knowledge of where
# this machine keeps its wheels or how its pip is configured; the context holds exactly the wheels that were
# resolved (and checked: no torch, no transformers, no CUDA); a build that asks for anything else fails instead of
# fetching it. The host's interpreter must be CPython 3.11 on x86-64 Linux so that the resolved wheels fit
# bookworm's python3.11 in the image (checked below; glibc wheels are picked by the host's glibc, bookworm's 2.36).
#
# Environment:
#   PYTHON               CPython 3.11 whose pip sees the wheels (default: the checkout's .venv, else python3.11)
#   EMOTION_IMAGE_TAG    image tag (default emotion-service:<version>)
#   EMOTION_BASE_IMAGE   base image tag (default localhost/emotion-base:bookworm)
#   EMOTION_REBUILD_BASE 1: debootstrap the base again even if it exists
#   EMOTION_IMAGE_WORKDIR scratch folder for the rootfs and the build context (default /var/tmp/emotion-image)
#   DEBIAN_MIRROR        default http://deb.debian.org/debian
#   PODMAN               the podman command (default podman); `buildah bud` can build the same context too
#   STORAGE_DRIVER=vfs   if overlay mounts are refused (read by podman/buildah themselves; overlay worked here)
#   BUILDAH_ISOLATION=chroot  if the build's RUN steps cannot create namespaces (read by podman build)
# The OCI runtime and rlimits that this machine needs (crun vs. hybrid cgroups, no CAP_SYS_RESOURCE) are probed by
# deploy/image/podman-options.sh and passed to podman build and podman run.
set -euo pipefail

say() { printf '[build.sh] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$REPO/deploy/image"
PODMAN=${PODMAN:-podman}
WORK=${EMOTION_IMAGE_WORKDIR:-/var/tmp/emotion-image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=${EMOTION_BASE_IMAGE:-localhost/emotion-base:bookworm}
BASE_PACKAGES=python3,python3-venv,ca-certificates,libstdc++6,tini,wget,procps

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3.11; fi
fi
"$PYTHON" -c 'import sys, platform
ok = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64"
sys.exit(0 if ok and sys.platform == "linux" else 1)' \
    || die "$PYTHON is not CPython 3.11 on x86-64 Linux: its wheels would not fit the image's python3.11 (set PYTHON)"
command -v "$PODMAN" >/dev/null || die "$PODMAN not found (apt-get install podman)"

VERSION=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO/pyproject.toml")
TAG=${EMOTION_IMAGE_TAG:-emotion-service:$VERSION}
START=$(date +%s)

# 1. The base image, from Debian packages.
if [[ "${EMOTION_REBUILD_BASE:-0}" == 1 ]] || ! "$PODMAN" image exists "$BASE_IMAGE"; then
    [[ $(id -u) == 0 ]] || die "debootstrap needs root (or build the base elsewhere and set EMOTION_BASE_IMAGE)"
    command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
    mkdir -p "$WORK"
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    say "debootstrap bookworm ($BASE_PACKAGES) from $MIRROR into $rootfs"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
    say "importing $rootfs as $BASE_IMAGE"
    tar -C "$rootfs" --numeric-owner -cf - . | "$PODMAN" import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase --include=$BASE_PACKAGES bookworm $MIRROR" - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
else
    say "base image $BASE_IMAGE exists (EMOTION_REBUILD_BASE=1 rebuilds it)"
fi

# What podman needs here to run a container at all (sandbox cgroup and rlimit quirks: podman-options.sh).
options=$("$HERE/podman-options.sh" "$BASE_IMAGE") || die "podman cannot run $BASE_IMAGE here"
PODMAN_OPTS=()
[[ -z "$options" ]] || mapfile -t PODMAN_OPTS <<<"$options"
(( ${#PODMAN_OPTS[@]} == 0 )) || say "podman options for this machine: ${PODMAN_OPTS[*]}"

# 2. The build context: the source `pip install .` reads, the Serve config, and the wheelhouse.
ctx="$WORK/context"
rm -rf "$ctx"
mkdir -p "$ctx/src" "$ctx/wheels"
mapfile -t packages < <("$PYTHON" - "$REPO" <<'EOF'
import fnmatch, sys, tomllib
from pathlib import Path
repo = Path(sys.argv[1])
patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
for path in sorted(repo.iterdir()):
    if (path / "__init__.py").is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns):
        print(path.name)
EOF
)
[[ " ${packages[*]} " == *" serve "* && " ${packages[*]} " == *" models "* ]] \
    || die "pyproject.toml's packages (${packages[*]}) lack serve or models"
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md "${packages[@]}" \
    | tar -C "$ctx/src" -xf -
cp "$REPO/deploy/serve_config.yaml" "$HERE/Containerfile" "$HERE/verify_install.py" "$ctx/"
say "wheelhouse: pip wheel of the serving install (${packages[*]}) with $PYTHON"
# (file:// extra indexes without a package's folder make pip warn once per package: noise, filtered out)
"$PYTHON" -m pip wheel --quiet --progress-bar off --wheel-dir "$ctx/wheels" "$ctx/src" "setuptools>=68" wheel \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) \
    || die "pip wheel failed: the serving dependencies are not all available to $PYTHON's pip"
# pip wheel builds in the source tree: its leftovers and the project's own wheel stay out of the image's build,
# which runs `pip install .` on the clean tree itself.
rm -rf "$ctx/src/build" "$ctx"/src/*.egg-info "$ctx"/wheels/emotion_service-*.whl
forbidden=$(find "$ctx/wheels" -maxdepth 1 -regextype posix-extended \
    -iregex '.*/(torch|torchvision|transformers|triton|nvidia_[a-z0-9_]+)-[^/]*\.whl' -printf '%f ')
[[ -z "$forbidden" ]] || die "the serving install pulled training/CUDA packages: $forbidden"
say "wheelhouse: $(find "$ctx/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$ctx/wheels" | cut -f1)"

# 3. The image: no network during the build (everything comes from the context).
say "podman build $TAG on $BASE_IMAGE"
previous=$("$PODMAN" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
"$PODMAN" build "${PODMAN_OPTS[@]}" --network=none --pull=never --layers=false \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$VERSION" \
    -f "$ctx/Containerfile" -t "$TAG" "$ctx"

# KubeRay starts Ray with `/bin/bash -lc -- "ulimit -n 65536; ray start ..."`: a login shell must find ray too.
# shellcheck disable=SC2016  # expanded by the container's shell
"$PODMAN" run "${PODMAN_OPTS[@]}" --rm --network=none --entrypoint /bin/bash "$TAG" -lc \
    'set -e; test "$(id -u)" != 0; ray --version; command -v emotion serve python >/dev/null; python --version' \
    >&2 || die "smoke check of $TAG failed"
rm -rf "$ctx"
# The image this tag named before is untagged now: drop it (unless a container still uses it), ~1.6 GB each.
if [[ -n "$previous" && "$previous" != "$("$PODMAN" image inspect --format '{{.Id}}' "$TAG")" ]]; then
    "$PODMAN" rmi "$previous" >/dev/null 2>&1 || say "kept the previous $TAG ($previous): still in use"
fi
say "built $TAG in $(( $(date +%s) - START )) s: $("$PODMAN" image inspect --format '{{.Size}}' "$TAG") bytes"
echo "$TAG"
