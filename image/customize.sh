#!/bin/sh
# mmdebstrap customize hook: $1 is the new root. build.sh has copied this image/ directory,
# the wheels, requirements.txt and build-id into $1/tmp/vaq-in, and takes the squashfs from
# $1/tmp/vaquero-root.sqfs. Runs as (possibly namespaced) root, so ownership in the squashfs is
# right even when the build itself is unprivileged (mmdebstrap --mode=unshare).
set -eu
root=$1
work=$root/tmp/vaq-in
here=$work/image
# Commands in the new root get a clean environment (no pip or locale settings of the builder).
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }

# Owned by root in the image, whoever owns the checkout (or the copy-in) outside.
cp -R --preserve=mode,timestamps "$here/rootfs/." "$root/"
chmod 0755 "$root/usr/lib/vaquero/appliance_config.py"
# A fixed uid: files on the state partition must keep their owner across image updates.
in_root groupadd --system --gid 990 vaquero
in_root useradd --system --uid 990 --gid 990 --home-dir /var/lib/vaquero/peer \
  --no-create-home --shell /usr/sbin/nologin vaquero

# The appliance: a wheel of this repository and its pinned dependencies, in their own venv.
mkdir -p "$root/tmp/wheels"
cp "$work"/wheels/*.whl "$work/requirements.txt" "$root/tmp/wheels/"
in_root python3 -m venv /opt/vaquero/venv
in_root /opt/vaquero/venv/bin/pip install --quiet --no-index --no-cache-dir \
  --find-links /tmp/wheels -r /tmp/wheels/requirements.txt
in_root sh -c '/opt/vaquero/venv/bin/pip install --quiet --no-index --no-cache-dir \
  --no-deps /tmp/wheels/vaquero_appliance-*.whl'
in_root /opt/vaquero/venv/bin/pip check
in_root /opt/vaquero/venv/bin/vaq-peer --help >/dev/null
rm -rf "$root/tmp/wheels"
if [ -n "${VAQ_BUILD_BROKEN:-}" ]; then
  # The A/B fallback test's second build: a system that boots but whose peer cannot start.
  echo "customize: VAQ_BUILD_BROKEN: removing pydantic_core, the peer will not start" >&2
  rm -r "$root"/opt/vaquero/venv/lib/python3*/site-packages/pydantic_core
fi
ln -sf /opt/vaquero/venv/bin/vaq-peer "$root/usr/local/bin/vaq-peer"

in_root systemctl enable --quiet vaq-config.service vaq-peer.service \
  vaq-boot-confirm.service vaq-ssh-keys.service systemd-networkd.service \
  systemd-resolved.service serial-getty@ttyS0.service ssh.service
in_root systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer e2scrub_reap.service fstrim.timer 2>/dev/null || true

# Nothing machine-specific in the system: host keys are made at first boot on the state
# partition, the machine id is transient (systemd mounts one over the empty file).
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/etc/vaquero" "$root/boot/efi" "$root/var/lib/vaquero"

# GRUB reads the kernel and initrd straight from the squashfs slot by these names.
kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -1)
ln -sf "$kernel" "$root/boot/vmlinuz"
ln -sf "initrd.img-${kernel#vmlinuz-}" "$root/boot/initrd.img"
# A small initramfs (GRUB reads it from the squashfs; ~8 MB instead of 36 with MODULES=most):
# the storage drivers of x86 servers and VMs, and the file systems of the slots.
cat > "$root/etc/initramfs-tools/conf.d/vaquero" <<'CONF'
MODULES=list
CONF
cat > "$root/usr/share/initramfs-tools/modules.d/vaquero" <<'MODS'
squashfs
ext4
virtio_pci
virtio_blk
virtio_scsi
ahci
ata_piix
sd_mod
sr_mod
nvme
xhci_pci
ehci_pci
uhci_hcd
usb_storage
uas
mpt3sas
megaraid_sas
hpsa
smartpqi
aacraid
mmc_block
sdhci_pci
MODS
in_root update-initramfs -u -k "${kernel#vmlinuz-}"
in_root lsinitramfs "/boot/initrd.img-${kernel#vmlinuz-}" | grep -q 'squashfs.ko' \
  || { echo "customize: squashfs is not in the initramfs" >&2; exit 1; }

# What is inside, for audits (/var is a tmpfs at run time, so dpkg's own records are hidden).
mkdir -p "$root/usr/share/vaquero"
in_root dpkg-query -W -f '${Package} ${Version}\n' > "$root/usr/share/vaquero/packages.txt"
in_root /opt/vaquero/venv/bin/pip freeze > "$root/usr/share/vaquero/python-packages.txt"
cp "$work/build-id" "$root/usr/lib/vaquero/build-id"

rm -rf "$work"
mksquashfs "$root" "$root/tmp/vaquero-root.sqfs" -noappend -quiet -no-progress \
  -comp "${VAQ_SQUASHFS_COMP:-gzip}" -wildcards \
  -e 'proc/*' 'sys/*' 'dev/*' 'run/*' 'tmp/*' 'var/*' 'boot/efi/*'
