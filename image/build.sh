#!/usr/bin/env bash
# Builds the appliance disk image: Debian 12 from Debian's mirror (mmdebstrap), the appliance
# of this repository as a wheel in its own venv with pinned dependencies (requirements.txt),
# a read-only squashfs system in slot A of an A/B disk that boots on BIOS and UEFI.
#
#   image/build.sh [OUT_DIR]        (default: build/image)
#
# Writes OUT_DIR/vaquero.img (raw disk: flash it), vaquero.img.zst, and vaquero-root.sqfs (the
# system alone: what `vaq-peer upgrade` takes). No loop mounts, no mount at all: as root it
# runs mmdebstrap in root mode, as any other user in unshare mode (user namespaces, and
# newuidmap from the uidmap package with a range in /etc/subuid); VAQ_MMDEBSTRAP_MODE overrides.
# VAQ_BUILD_NOTE=TEXT is appended to the build-id (tell two builds of one commit apart).
# VAQ_BUILD_BROKEN=1 builds a system whose peer cannot start (pydantic_core removed from its
# venv after the checks; the build-id says so): only for the A/B fallback test.
# Downloaded .debs and wheels are cached in $VAQ_IMAGE_CACHE (default ~/.cache/vaquero-image).
# SOURCE_DATE_EPOCH (default: the last commit's time) fixes the timestamps in the image.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=$(realpath -m "${1:-$repo/build/image}")
cache=${VAQ_IMAGE_CACHE:-$HOME/.cache/vaquero-image}
mirror=${VAQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${VAQ_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
py=${PYTHON:-python3}
start=$(date +%s)
step() { echo "build: [$(( $(date +%s) - start ))s] $*"; }

for tool in mmdebstrap mksquashfs mkfs.vfat mcopy mke2fs sfdisk grub-mkimage zstd; do
  command -v "$tool" >/dev/null || { echo "build: $tool is missing (tools/install.sh)"; exit 2; }
done
"$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "build: needs Python 3.11 (Debian 12's) to build the wheels: set PYTHON"; exit 2; }

if [ -n "${VAQ_MMDEBSTRAP_MODE:-}" ]; then
  mode=$VAQ_MMDEBSTRAP_MODE
elif [ "$(id -u)" = 0 ]; then
  mode=root
else
  mode=unshare
  unshare --user --map-root-user true 2>/dev/null || {
    echo "build: not root and user namespaces are not allowed here" \
         "('unshare --user --map-root-user true' fails): build as root"; exit 2; }
  command -v newuidmap >/dev/null || { echo "build: unshare mode needs newuidmap (apt-get install uidmap)"; exit 2; }
  grep -q "^$(id -un):" /etc/subuid || {
    echo "build: unshare mode needs a subordinate uid range for $(id -un) in /etc/subuid" \
         "(usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $(id -un))"; exit 2; }
fi
export VAQ_BUILD_BROKEN=${VAQ_BUILD_BROKEN:-}
note=${VAQ_BUILD_NOTE:-}
[ -z "$VAQ_BUILD_BROKEN" ] || note="${note:+$note }BROKEN-ON-PURPOSE(no pydantic_core)"

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
mkdir -p "$out" "$cache/debs" "$cache/wheels"
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/wheels"

step "wheels: the appliance and its pinned dependencies"
"$py" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "$repo"
cp "$here/requirements.txt" "$work/requirements.txt"
"$py" -m pip wheel --quiet --no-index --find-links "$cache/wheels" --wheel-dir "$cache/wheels" \
    -r "$here/requirements.txt" 2>/dev/null \
  || "$py" -m pip wheel --quiet --only-binary=:all: --wheel-dir "$cache/wheels" \
       -r "$here/requirements.txt" 2>/dev/null \
  || "$py" -m pip wheel --quiet --wheel-dir "$cache/wheels" -r "$here/requirements.txt"
cp "$cache"/wheels/*.whl "$work/wheels/"
version=$(cd "$work/wheels" && ls vaquero_appliance-*.whl | sed 's/vaquero_appliance-\([^-]*\)-.*/\1/')
commit=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)
echo "vaquero $version $commit built $(date -u -d "@$SOURCE_DATE_EPOCH" +%FT%TZ)${note:+ $note}" > "$work/build-id"

# What a peer needs at run time, nothing of the test suite (no QEMU, Kea, nginx, compilers).
packages=(
  linux-image-amd64 initramfs-tools systemd systemd-sysv udev systemd-resolved dbus
  python3 python3-venv iproute2 iputils-ping ipxe ca-certificates openssh-server
  e2fsprogs dosfstools fdisk kmod procps
)
# The hooks run as root inside mmdebstrap's namespace: in unshare mode that root is a
# subordinate uid, which may not read this user's files, so what they need is copied in (and
# the squashfs out) by mmdebstrap's copy-in/copy-out, never read from the build directory.
step "system: mmdebstrap --mode=$mode bookworm (${#packages[@]} packages and their dependencies)"
mmdebstrap --variant=minbase --mode="$mode" --format=null \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --include="$(IFS=,; echo "${packages[*]}")" \
  --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
  --setup-hook="sync-in $cache/debs /var/cache/apt/archives" \
  --essential-hook='mkdir -p "$1/usr/share/initramfs-tools/modules.d" && echo squashfs > "$1/usr/share/initramfs-tools/modules.d/vaquero"' \
  --customize-hook="sync-out /var/cache/apt/archives $cache/debs" \
  --customize-hook='mkdir -p "$1/tmp/vaq-in"' \
  --customize-hook="copy-in $here $work/wheels $work/requirements.txt $work/build-id /tmp/vaq-in" \
  --customize-hook='sh "$1/tmp/vaq-in/image/customize.sh" "$1"' \
  --customize-hook="copy-out /tmp/vaquero-root.sqfs $work" \
  bookworm /dev/null \
  "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
  "deb $security bookworm-security main"

step "disk: GPT, GRUB (BIOS and UEFI), slots A/B, config and state partitions"
"$py" "$here/assemble.py" "$work/vaquero-root.sqfs" "$out/vaquero.img" ${VAQ_SLOT_MB:+--slot-mb "$VAQ_SLOT_MB"}
mv "$work/vaquero-root.sqfs" "$out/vaquero-root.sqfs"
cp "$work/build-id" "$out/build-id"
step "compress"
zstd -q -f -T0 -10 "$out/vaquero.img" -o "$out/vaquero.img.zst"
mb() { echo "$(( $(stat -c %s "$1") / 1048576 )) MiB"; }
step "done: $(cat "$out/build-id")"
echo "build: $out/vaquero.img $(mb "$out/vaquero.img") raw ($(du -m "$out/vaquero.img" | cut -f1) MiB allocated), vaquero.img.zst $(mb "$out/vaquero.img.zst"), vaquero-root.sqfs $(mb "$out/vaquero-root.sqfs")"
echo "build: took $(( $(date +%s) - start )) s on $(nproc) cores"
