#!/usr/bin/env bash
# Builds the container image from the Dockerfile for real, without a Docker engine or a registry,
# and runs what it built:
#   1. installs buildah and debootstrap with apt-get (Debian; as root) when they are missing;
#   2. makes the two base images locally when they are missing from buildah's storage (nothing can
#      be pulled): localhost/debian:bookworm-slim, a debootstrap minbase of bookworm from the
#      Debian mirror apt already uses, and localhost/rust:1-bookworm, that plus a copy of this
#      machine's Rust toolchain (`rustc --print sysroot`, without its docs) and gcc. Both get this
#      machine's extra CA certificates (/usr/local/share/ca-certificates), so that cargo's HTTPS
#      to crates.io works behind an intercepting proxy; that is a step of this build environment,
#      not of the Dockerfile. `--rebuild-bases` makes them again (e.g. after a toolchain update);
#   3. builds the Dockerfile with `buildah bud --isolation chroot --layers` (storage driver overlay,
#      or $BUILDAH_DRIVER), under `nice`, keeping buildah's layer cache between runs: the build stage is tagged
#      localhost/fondo-bridge-build:cache so its layers survive, and the layers that a new build
#      superseded are removed;
#   4. checks the image's config (user 10001:10001, working directory and volume
#      /var/lib/fondo-bridge, entrypoint fondo-bridge), then runs the built binary the way
#      `docker run --read-only --user 10001:10001 -v VOLUME:/var/lib/fondo-bridge` would: the
#      image's root filesystem (`buildah mount`) is bind-mounted read-only in a private mount
#      namespace (`unshare --mount`), an empty directory owned by 10001 is mounted on the volume,
#      config/ read-only on /etc/fondo-bridge, a tmpfs with the usual device nodes on /dev and proc
#      on /proc, then `chroot --userspec=10001:10001` starts the image's entrypoint. `buildah run`
#      cannot make the root read-only, hence this. Proven first: even root cannot write to that
#      root filesystem ("Read-only file system"), while 10001 can write to the volume. Then, as
#      10001: `fondo-bridge --version`, `fondo-bridge check --config` on each config/*.yaml, and
#      `fondo-bridge demo` (DEMO_EVENTS events, default 10000, at 2000/s: about 5 s), which must
#      write its JSON lines under the volume;
#   5. prints the image's size and the time of each phase.
#
#   scripts/build-image.sh                  # as root
#   IMAGE=localhost/fondo-bridge:test scripts/build-image.sh --rebuild-bases
#
# A cold run (bases and all layers) took 33 minutes on 2 busy cores; with the cache, a run with
# nothing changed takes seconds and a change under src/ rebuilds the crate only (README: numbers).
# Needs root (debootstrap, mount, chroot), Debian's apt, the rustup toolchain of this machine, and
# network access to the Debian mirror and crates.io. Variables: IMAGE (default
# localhost/fondo-bridge:dev), BUILDAH_DRIVER (default overlay), DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR (default: taken from
# /etc/apt/sources*), DEMO_EVENTS.
# Exit status: 0 when the image built and every check passed, 1 when the build or a check failed,
# 2 when the environment cannot run it (not root, tools missing and not installable).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-localhost/fondo-bridge:dev}
BUILD_CACHE=localhost/fondo-bridge-build:cache
RUNTIME_BASE=localhost/debian:bookworm-slim
RUST_BASE=localhost/rust:1-bookworm
RUN_CONTAINER=fondo-bridge-image-check
DEMO_EVENTS=${DEMO_EVENTS:-10000}
VOLUME=/var/lib/fondo-bridge
REBUILD_BASES=false

say() { echo "build-image: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
die_env() { say "$*"; exit 2; }

for arg in "$@"; do
    case $arg in
        --rebuild-bases) REBUILD_BASES=true ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die_env "unknown argument $arg (see --help)" ;;
    esac
done
[[ "$DEMO_EVENTS" =~ ^[1-9][0-9]*$ ]] || die_env "DEMO_EVENTS must be a positive number"
((EUID == 0)) || die_env "must run as root (debootstrap, buildah's storage, mount, chroot)"

# --- tools ----------------------------------------------------------------------------------------
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die_env "${missing[*]} missing and no apt-get to install them"
    say "installing ${missing[*]} with apt-get (system-wide, as root)"
    apt-get update -qq >&2 || die_env "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        die_env "apt-get install ${missing[*]} failed"
fi
for tool in unshare chroot mount timeout; do
    command -v "$tool" >/dev/null || die_env "$tool is missing (Debian: util-linux, coreutils, mount)"
done
# Storage driver overlay: vfs (for where overlay mounts are impossible) copies each layer and each
# build step's container in full, so even a build with every layer cached writes tens of GB.
DRIVER=${BUILDAH_DRIVER:-overlay}
B=(buildah --storage-driver "$DRIVER")
if ! err=$("${B[@]}" images 2>&1 >/dev/null); then
    echo "$err" >&2
    die_env "buildah cannot use its storage with the $DRIVER driver (a store made with another driver? set BUILDAH_DRIVER)"
fi
# chroot isolation: the default OCI runtime cannot create namespaces on every machine (not here).
export BUILDAH_ISOLATION=chroot

WORK=$(mktemp -d "${TMPDIR:-/tmp}/build-image.XXXXXX")
CONTAINERS=() # buildah containers to remove on exit
cleanup() {
    for c in "${CONTAINERS[@]}"; do
        "${B[@]}" umount "$c" >/dev/null 2>&1 || true
        "${B[@]}" rm "$c" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # so that cleanup runs
have_image() { "${B[@]}" inspect --type image "$1" >/dev/null 2>&1; }
image_id() { "${B[@]}" inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }
new_container() { # IMAGE [NAME]: sets CONTAINER to the new container's id (no subshell, so
    # that CONTAINERS keeps it for the cleanup)
    CONTAINER=$("${B[@]}" from --pull=never ${2:+--name "$2"} "$1") || fail "buildah from $1"
    CONTAINERS+=("$CONTAINER")
}

# --- base images ----------------------------------------------------------------------------------
# The first http(s) URI of this machine's apt sources whose path ends in /$1 (debian, debian-security).
apt_uri() {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -E '^[[:space:]]*(deb[[:space:]]|URIs:)' | grep -oE 'https?://[^[:space:]]+' |
        grep -E "/$1/?\$" | head -n 1 || true
}

make_runtime_base() {
    local mirror security c m
    mirror=${DEBIAN_MIRROR:-$(apt_uri debian)}
    mirror=${mirror:-http://deb.debian.org/debian}
    security=${DEBIAN_SECURITY_MIRROR:-$(apt_uri debian-security)}
    security=${security:-http://deb.debian.org/debian-security}
    say "making $RUNTIME_BASE: debootstrap --variant=minbase bookworm from $mirror"
    new_container scratch
    c=$CONTAINER
    m=$("${B[@]}" mount "$c")
    [ -d "$m" ] && [ "$m" != / ] || fail "buildah mount gave '$m'"
    nice -n 15 debootstrap --variant=minbase bookworm "$m" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap (log above)"; }
    # Like the official slim image: the three suites, and no docs, man pages or translations.
    rm -f "$m/etc/apt/sources.list"
    cat >"$m/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$m/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    find "$m/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$m/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    rm -rf "${m:?}/usr/share/man/"* "${m:?}/usr/share/info/"* "${m:?}/var/lib/apt/lists/"* \
        "${m:?}/var/cache/apt/"*.bin "${m:?}/var/cache/apt/archives/"*.deb "${m:?}/dev/"*
    if [ -d /usr/local/share/ca-certificates ]; then
        cp -a /usr/local/share/ca-certificates/. "$m/usr/local/share/ca-certificates/"
    fi
    "${B[@]}" umount "$c" >/dev/null
    "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd bash --label "org.fondo-bridge.base=debootstrap minbase bookworm $mirror" "$c"
    "${B[@]}" commit --quiet --rm "$c" "$RUNTIME_BASE" >/dev/null || fail "buildah commit $RUNTIME_BASE"
}

make_rust_base() {
    local sysroot version c m d
    sysroot=$(cd "$ROOT" && rustc --print sysroot 2>/dev/null) ||
        die_env "rustc (rustup) is needed: its toolchain is copied into $RUST_BASE"
    version=$("$sysroot/bin/rustc" --version)
    say "making $RUST_BASE: $RUNTIME_BASE + $version from $sysroot + gcc"
    new_container "$RUNTIME_BASE"
    c=$CONTAINER
    m=$("${B[@]}" mount "$c")
    [ -d "$m" ] && [ "$m" != / ] || fail "buildah mount gave '$m'"
    mkdir -p "$m/usr/local/rust"
    for d in bin lib libexec etc; do # share/ is the docs (most of the size), not needed
        if [ -d "$sysroot/$d" ]; then nice -n 15 cp -a "$sysroot/$d" "$m/usr/local/rust/"; fi
    done
    "${B[@]}" umount "$c" >/dev/null
    "${B[@]}" config --env CARGO_HOME=/usr/local/cargo \
        --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --label "org.fondo-bridge.base.rust=$version" "$c"
    nice -n 15 "${B[@]}" run "$c" -- sh -c 'apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            ca-certificates gcc libc6-dev >/dev/null \
        && rm -rf /var/lib/apt/lists/* \
        && rustc --version && cargo --version' >&2 || fail "installing gcc into $RUST_BASE"
    "${B[@]}" commit --quiet --rm "$c" "$RUST_BASE" >/dev/null || fail "buildah commit $RUST_BASE"
}

SECONDS=0
if $REBUILD_BASES; then
    for base in "$RUST_BASE" "$RUNTIME_BASE"; do
        if have_image "$base"; then "${B[@]}" rmi "$base" >/dev/null || fail "cannot remove $base"; fi
    done
fi
if have_image "$RUNTIME_BASE"; then say "reusing $RUNTIME_BASE"; else make_runtime_base; fi
if have_image "$RUST_BASE"; then say "reusing $RUST_BASE"; else make_rust_base; fi
T_BASES=$SECONDS

# --- build ----------------------------------------------------------------------------------------
SECONDS=0
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)
REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$REVISION" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then
    REVISION="$REVISION-dirty"
fi
# Docker's image format, as `docker build` makes: the OCI format has no SHELL or HEALTHCHECK.
BUD=(bud --isolation chroot --layers --pull=never --force-rm --format docker
    --build-arg "RUST_IMAGE=$RUST_BASE" --build-arg "RUNTIME_IMAGE=$RUNTIME_BASE"
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" -f "$ROOT/Dockerfile")
old_build=$(image_id "$BUILD_CACHE")
old_image=$(image_id "$IMAGE")
say "building the build stage as $BUILD_CACHE (nice -n 15; the dependency layer is cached until Cargo.toml, Cargo.lock or the Dockerfile change)"
nice -n 15 "${B[@]}" "${BUD[@]}" --target build -t "$BUILD_CACHE" "$ROOT" >&2 ||
    fail "the build stage of the Dockerfile did not build (output above)"
say "building $IMAGE"
nice -n 15 "${B[@]}" "${BUD[@]}" -t "$IMAGE" "$ROOT" >&2 ||
    fail "the Dockerfile did not build (output above)"
# A replaced image keeps its layers until removed; removing it also removes its parents that no
# other image uses, i.e. the layers only it needed.
for pair in "$old_build:$BUILD_CACHE" "$old_image:$IMAGE"; do
    old=${pair%%:*} name=${pair#*:}
    if [ -n "$old" ] && [ "$old" != "$(image_id "$name")" ]; then
        "${B[@]}" rmi "$old" >/dev/null 2>&1 || say "note: could not remove the superseded image $old"
    fi
done
T_BUILD=$SECONDS

# --- the image's config ---------------------------------------------------------------------------
SECONDS=0
inspect() { "${B[@]}" inspect --type image --format "$1" "$IMAGE"; }
user=$(inspect '{{.OCIv1.Config.User}}')
workdir=$(inspect '{{.OCIv1.Config.WorkingDir}}')
# shellcheck disable=SC2016 # a Go template, not a shell expansion
volumes=$(inspect '{{range $v, $_ := .OCIv1.Config.Volumes}}{{$v}} {{end}}')
mapfile -t entrypoint < <(inspect '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}')
mapfile -t image_env < <(inspect '{{range .OCIv1.Config.Env}}{{println .}}{{end}}')
[ "$user" = 10001:10001 ] || fail "the image's user is '$user', not 10001:10001"
[ "$workdir" = "$VOLUME" ] || fail "the image's working directory is '$workdir', not $VOLUME"
[ "${volumes% }" = "$VOLUME" ] || fail "the image's volumes are '$volumes', not $VOLUME alone"
[ "${entrypoint[*]}" = fondo-bridge ] || fail "the image's entrypoint is '${entrypoint[*]}', not fondo-bridge"
say "image config: user $user, workdir $workdir, volume $volumes, entrypoint ${entrypoint[*]}"

# --- running it: read-only root, user 10001, a volume -----------------------------------------------
"${B[@]}" rm "$RUN_CONTAINER" >/dev/null 2>&1 || true # left over by an interrupted run
new_container "$IMAGE" "$RUN_CONTAINER"
ctr=$CONTAINER
ROOTFS=$("${B[@]}" mount "$ctr")
[ -d "$ROOTFS" ] && [ "$ROOTFS" != / ] || fail "buildah mount gave '$ROOTFS'"
DATA=$WORK/volume
mkdir -m 0750 "$DATA"
chown 10001:10001 "$DATA"
home=$(awk -F: '$3 == 10001 { print $6 }' "$ROOTFS/etc/passwd")
image_env+=("HOME=${home:-/}")

# Runs in a private mount namespace, so every mount goes away with the process.
# Arguments: ROOTFS VOLUME_DIR CONFIG_DIR USERSPEC WORKDIR N_ENV ENV... COMMAND...
enter_image() {
    set -eu
    local rootfs=$1 data=$2 config=$3 userspec=$4 workdir=$5 n=$6 d
    shift 6
    local env=("${@:1:n}")
    shift "$n"
    mount --bind "$rootfs" "$rootfs"
    mount -o remount,bind,ro "$rootfs"
    mount --bind "$data" "$rootfs/var/lib/fondo-bridge"
    mount --bind "$config" "$rootfs/etc/fondo-bridge"
    mount -o remount,bind,ro "$rootfs/etc/fondo-bridge"
    mount -t tmpfs -o mode=0755,nosuid,size=1m tmpfs "$rootfs/dev"
    for d in null zero full random urandom; do
        touch "$rootfs/dev/$d"
        mount --bind "/dev/$d" "$rootfs/dev/$d"
    done
    mount -t proc -o nosuid,nodev,noexec proc "$rootfs/proc" 2>/dev/null || mount --rbind /proc "$rootfs/proc"
    exec chroot --userspec="$userspec" "$rootfs" /usr/bin/env -i -C "$workdir" "${env[@]}" "$@"
}
in_image() { # USERSPEC COMMAND...
    local userspec=$1
    shift
    timeout --kill-after=10 120 unshare --mount --propagation private -- \
        bash -c "$(declare -f enter_image); enter_image \"\$@\"" enter_image \
        "$ROOTFS" "$DATA" "$ROOT/config" "$userspec" "$workdir" "${#image_env[@]}" "${image_env[@]}" "$@"
}

if out=$(in_image 0:0 /usr/bin/touch /usr/local/bin/probe 2>&1); then
    fail "root could write to the image's root filesystem: it is not mounted read-only"
fi
case $out in
    *"Read-only file system"*) say "read-only root: even root gets '$out'" ;;
    *) fail "writing to the read-only root failed for another reason: $out" ;;
esac
in_image 10001:10001 /usr/bin/touch "$VOLUME/probe" || fail "user 10001 cannot write to the volume $VOLUME"
[ "$(stat -c %u "$DATA/probe")" = 10001 ] || fail "the probe file on the volume is not owned by 10001"
rm -f "$DATA/probe"
ids=$(in_image 10001:10001 /usr/bin/id) || fail "id in the image"
say "runs as: $ids"
[[ "$ids" == "uid=10001(fondo) gid=10001(fondo) groups=10001(fondo)" ]] ||
    fail "the process runs as '$ids', not as the image's user fondo (10001) alone"

version=$(in_image 10001:10001 "${entrypoint[@]}" --version) || fail "fondo-bridge --version in the image"
say "fondo-bridge --version: $version"
[[ "$version" == *"$VERSION"* ]] || fail "the binary reports '$version', not version $VERSION"

for f in "$ROOT"/config/*.yaml; do
    name=$(basename "$f")
    in_image 10001:10001 "${entrypoint[@]}" check --config "/etc/fondo-bridge/$name" >"$WORK/check.log" 2>&1 ||
        { cat "$WORK/check.log" >&2; fail "fondo-bridge check --config config/$name in the image (output above)"; }
    say "check --config config/$name: ok"
done

say "demo: $DEMO_EVENTS events at 2000/s into $VOLUME/demo-out, as 10001, root read-only"
in_image 10001:10001 "${entrypoint[@]}" demo --rate 2000 --count "$DEMO_EVENTS" >"$WORK/demo.log" 2>&1 ||
    { tail -c 2000 "$WORK/demo.log" >&2; fail "fondo-bridge demo in the image (output above)"; }
grep -a '^demo: sent' "$WORK/demo.log" >&2 || fail "the demo printed no summary"
shopt -s nullglob
outputs=("$DATA"/demo-out/fondo.*.jsonl)
((${#outputs[@]})) || fail "the demo wrote no fondo.*.jsonl under $VOLUME/demo-out"
lines=0
for f in "${outputs[@]}"; do
    [ "$(stat -c %u "$f")" = 10001 ] || fail "$(basename "$f") is not owned by 10001"
    [[ "$f" == */fondo.dead-letter.jsonl ]] || lines=$((lines + $(wc -l <"$f")))
done
# The per-entity route matches every event: each is at least one line in a fondo.<entity> file.
((lines >= DEMO_EVENTS)) || fail "the demo wrote $lines event lines in fondo.<entity>.jsonl, expected >= $DEMO_EVENTS"
say "demo wrote $lines lines in ${#outputs[@]} files under $VOLUME/demo-out"
T_CHECKS=$SECONDS

# --- size -----------------------------------------------------------------------------------------
size=$("${B[@]}" images --format '{{.Size}}' "$IMAGE" | head -n 1)
binary=$(du -h "$ROOTFS/usr/local/bin/fondo-bridge" | cut -f1)
say "OK: $IMAGE ($VERSION, $REVISION): $size (binary $binary); bases ${T_BASES}s, build ${T_BUILD}s, checks ${T_CHECKS}s"
say "buildah storage: $(du -sh /var/lib/containers/storage 2>/dev/null | cut -f1), free on /: $(df -h --output=avail / | tail -n 1 | tr -d ' ')"
