#!/usr/bin/env bash
# Installs everything a peer and its test suite need on a fresh Debian machine:
# the system packages the tests drive (real git, DHCP/TFTP/HTTP clients, QEMU with iPXE ROMs,
# OVMF, the OpenIPMI simulator, the reference servers of the benchmarks, the tools that build
# the appliance image with image/build.sh) and a virtualenv
# in .venv with the appliance installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  python3 python3-venv python3-dev gcc git iproute2 curl procps
  qemu-system-x86 qemu-utils ipxe ovmf openipmi ipmitool
  isc-dhcp-client tftp-hpa kea-admin kea-dhcp4-server dnsmasq-base tftpd-hpa nginx-light wrk
  busybox-static cpio gnupg openssh-client
  nftables  # tests/workflow/test_peer_death_e2e.py steers DHCP on its boot bridge
  mmdebstrap squashfs-tools mtools dosfstools fdisk e2fsprogs grub-common grub-pc-bin
  grub-efi-amd64-bin zstd  # image/build.sh and tests/image
  ignition cloud-init  # ignition-validate and cloud-init's JSON schema: format checks
  debian-installer-12-netboot-amd64  # the lab example's installer: its true sha256
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: apt packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
echo "install: done (.venv/bin/vaq-peer)"
