"""A tiny bootable test OS for real-PXE-client tests: Debian's kernel + a busybox initramfs.

Why: end-to-end netboot tests need something that a real firmware (SeaBIOS+iPXE, OVMF) can
boot over the network and that proves, from the server side, that the boot worked. The
initramfs does only that: it brings its NIC up with DHCP (busybox `udhcpc`), POSTs a JSON
"phone home" to the URL given on the kernel command line as `vaq.phone_home=<URL>`, and powers
off. The body is one JSON object (see `parse_phone_home`)::

    {"mac": "52:54:00:..", "ip": "198.18.0.11", "iface": "eth0", "firmware": "bios"|"uefi",
     "uuid": "<SMBIOS UUID>", "uname": "Linux ..."}

The kernel comes from Debian's `linux-image-<abi>-amd64` package (the one `linux-image-amd64`
depends on, fetched with `apt-get download`, extracted with `dpkg -x`), and only the NIC
modules the guests need (e1000, virtio_net and their dependencies, resolved from each module's
own `.modinfo`, since the package ships no `modules.dep`) go into the initramfs. The result is
built once and cached under `$VAQ_TEST_CACHE` (default /var/cache/vaquero-test), keyed by the
package's sha256, busybox's sha256 and this builder's inputs; the archive is deterministic
(mtime 0, sorted), so the same inputs give the same sha256 that a test SoT can reference.

Kernel command line the test OS expects (the SoT / boot script carries it; `kernel_cmdline`
and `ipxe_script` write it)::

    initrd=initrd.img console=ttyS0 panic=-1 vaq.phone_home=http://198.18.0.1:8080/ph/<token>

`panic=-1` makes any failure (an init that dies, a kernel that cannot mount the initramfs)
reboot at once, and QEMU's `-no-reboot` turns that reboot into an exit, so a failed boot
ends the guest immediately instead of running into the test's timeout. Optional:
`vaq.markers=1` prints a `VAQ-TEST: <step>` line on the console at each step (also enabled at
build time with `build_test_os(markers=True)`), `BOOTIF=01-aa-bb-..` (iPXE's
`BOOTIF=01-${netX/mac:hexhyp}`) picks the NIC when there are several. Whatever the markers,
the console always shows `VAQ-TEST: PHONED-HOME <mac> <ip>` on success and
`VAQ-TEST: FAILED: <why>` before powering off on failure.

Usage::

    from tools.rigs.test_kernel import build_test_os
    tos = build_test_os()   # ~20 s the first time (70 MB .deb, dpkg -x), ~0.1 s when cached
    tos.kernel, tos.initrd, tos.kernel_sha256, tos.initrd_sha256
    script = ipxe_script(f"{base}/vmlinuz", f"{base}/initrd.img", f"{base}/phone-home/h1")

`python -m tools.rigs.test_kernel [--markers]` builds it and prints the paths and hashes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BUILDER_VERSION = "1"
DEFAULT_CACHE = "/var/cache/vaquero-test"
META_PACKAGE = "linux-image-amd64"
BUSYBOX = "/bin/busybox"
# NIC drivers the QEMU guests use: e1000 (BIOS rig) and virtio-net-pci (UEFI rig).
NIC_MODULES = ("e1000", "virtio_pci", "virtio_net")
MARKER = "VAQ-TEST:"
# Console on the serial port (QemuGuest logs it); any failure ends the boot at once (see above).
KERNEL_ARGS = "console=ttyS0 panic=-1"


class TestKernelError(RuntimeError):
    """The test OS cannot be built here (no package, no apt, no busybox); says what to do."""

    __test__ = False  # not a pytest test class


@dataclasses.dataclass(frozen=True)
class GuestOS:
    """A built test OS: where its files are and what they hash to."""

    kernel: Path
    initrd: Path
    kernel_sha256: str
    initrd_sha256: str
    kernel_release: str  # e.g. "6.1.0-56-amd64"
    package: str  # the .deb file name it came from
    markers: bool


def cache_dir() -> Path:
    return Path(os.environ.get("VAQ_TEST_CACHE") or DEFAULT_CACHE)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _deb_sha256(path: Path) -> str:
    """sha256 of a (70 MB) .deb, remembered next to it: a cached build should cost no hashing."""
    st = path.stat()
    memo = path.with_name(path.name + ".sha256")
    stamp = f"{st.st_size} {st.st_mtime_ns}"
    with contextlib.suppress(OSError, ValueError):
        got_stamp, digest = memo.read_text().rsplit(" ", 1)
        if got_stamp == stamp and len(digest.strip()) == 64:
            return digest.strip()
    digest = sha256_file(path)
    with contextlib.suppress(OSError):  # a read-only cache (VAQ_TEST_KERNEL_DEB) is fine
        memo.write_text(f"{stamp} {digest}\n")
    return digest


def kernel_cmdline(
    phone_home_url: str, *, markers: bool = False, initrd: str = "initrd.img"
) -> str:
    """The command line to boot the test OS with (what a SoT's `os` entry should carry).

    `initrd=<name>` is for UEFI: an EFI-stub kernel loaded by iPXE finds its initrd by the
    name iPXE gave it (the last path element of the `initrd` URL); BIOS ignores it.
    """
    if any(c.isspace() for c in phone_home_url):
        raise ValueError("the phone-home URL must not contain spaces")
    args = f"initrd={initrd} {KERNEL_ARGS} vaq.phone_home={phone_home_url}"
    return args + (" vaq.markers=1" if markers else "")


def ipxe_script(kernel_url: str, initrd_url: str, phone_home_url: str, **kw: Any) -> str:
    """A complete iPXE script booting the test OS (keyword arguments: see `kernel_cmdline`)."""
    initrd = initrd_url.rstrip("/").rsplit("/", 1)[-1]
    cmdline = kernel_cmdline(phone_home_url, initrd=initrd, **kw)
    return f"#!ipxe\nkernel {kernel_url} {cmdline}\ninitrd {initrd_url}\nboot\n"


def parse_phone_home(body: bytes | str) -> dict[str, str]:
    """The test OS's phone-home body as a dict (raises ValueError on anything else)."""
    data = json.loads(body)
    if not isinstance(data, dict) or "mac" not in data or "ip" not in data:
        raise ValueError(f"not a test-OS phone home: {body!r:.200}")
    return {str(k): str(v) for k, v in data.items()}


# --- the kernel package -------------------------------------------------------------------


def _run(argv: Sequence[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)


def _apt_stamp() -> str:
    """Changes whenever apt's view of the archive changes (apt-get update rewrites the lists)."""
    parts = []
    for p in ("/var/lib/apt/lists", "/var/cache/apt/pkgcache.bin", "/etc/apt/sources.list.d"):
        with contextlib.suppress(OSError):
            st = os.stat(p)
            parts.append(f"{p}:{st.st_mtime_ns}:{st.st_size}")
    return " ".join(parts)


def _resolve_package(cache: Path) -> tuple[str, str, str] | None:
    """(package, version, sha256 of the .deb) that linux-image-amd64 points to, from apt's lists.

    Remembered in the cache while apt's lists are unchanged: apt-cache takes seconds, and a
    cached build should be instant.
    """
    memo = cache / "debs" / "resolved.json"
    stamp = _apt_stamp()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        got = json.loads(memo.read_text())
        if got["stamp"] == stamp:
            return got["package"], got["version"], got["sha256"]
    resolved = _resolve_with_apt()
    if resolved is not None:
        with contextlib.suppress(OSError):
            keys = ("package", "version", "sha256")
            memo.write_text(json.dumps({"stamp": stamp, **dict(zip(keys, resolved, strict=True))}))
    return resolved


def _resolve_with_apt() -> tuple[str, str, str] | None:
    if shutil.which("apt-cache") is None:
        return None
    dep = _run(["apt-cache", "depends", META_PACKAGE], timeout=60)
    names = [
        line.split(":", 1)[1].strip()
        for line in dep.stdout.splitlines()
        if line.strip().startswith("Depends:") and "linux-image-" in line
    ]
    if dep.returncode != 0 or not names:
        return None
    show = _run(["apt-cache", "show", "--no-all-versions", names[0]], timeout=60)
    fields = dict(
        line.split(": ", 1) for line in show.stdout.splitlines() if ": " in line and line[0] != " "
    )
    if show.returncode != 0 or "Version" not in fields or "SHA256" not in fields:
        return None
    return names[0], fields["Version"], fields["SHA256"]


def _deb_name(package: str, version: str) -> str:
    return f"{package}_{version.replace(':', '%3a')}_amd64.deb"


def fetch_kernel_deb(cache: Path | None = None) -> Path:
    """The kernel .deb: $VAQ_TEST_KERNEL_DEB, else Debian's current one (downloaded once).

    Runs `apt-get update` once if the download fails (stale lists); without apt or network it
    falls back to the newest .deb already in the cache.
    """
    override = os.environ.get("VAQ_TEST_KERNEL_DEB")
    if override:
        if not os.path.isfile(override):
            raise TestKernelError(f"VAQ_TEST_KERNEL_DEB={override} does not exist")
        return Path(override)
    cache = cache or cache_dir()
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    resolved = _resolve_package(cache)
    errors: list[str] = []
    for attempt in range(2):
        if attempt == 1:  # stale or missing lists: refresh once, then resolve again
            upd = _run(["apt-get", "update", "-q"], timeout=600)
            if upd.returncode != 0:
                errors.append(f"apt-get update failed: {upd.stderr.strip()[-400:]}")
                break
            resolved = _resolve_package(cache)
        if resolved is None:
            errors.append(f"apt-cache cannot resolve {META_PACKAGE}")
            continue
        package, version, want_sha = resolved
        target = debs / _deb_name(package, version)
        if target.is_file() and _deb_sha256(target) == want_sha:
            return target
        got = _run(["apt-get", "download", f"{package}={version}"], timeout=900, cwd=debs)
        if got.returncode == 0 and target.is_file():
            if _deb_sha256(target) == want_sha:
                return target
            target.unlink()
            errors.append(f"{target.name}: sha256 differs from apt's lists")
        else:
            errors.append(f"apt-get download {package}={version}: {got.stderr.strip()[-400:]}")
    cached = sorted(debs.glob("linux-image-*-amd64_*.deb"), key=lambda p: p.stat().st_mtime)
    if cached:  # offline, but an earlier run downloaded one: good enough for a test OS
        return cached[-1]
    raise TestKernelError(
        "cannot get the test kernel (" + "; ".join(errors) + "). The rig needs Debian's"
        " mirrors through apt once (then it is cached in " + str(debs) + "), or"
        " VAQ_TEST_KERNEL_DEB=<path to a linux-image-*-amd64 .deb>"
    )


# --- kernel modules -----------------------------------------------------------------------


def modinfo(ko: Path) -> dict[str, str]:
    """The `.modinfo` section of an ELF64 kernel module (no kmod tools needed)."""
    data = ko.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise TestKernelError(f"{ko}: not an ELF64 module (compressed modules are not supported)")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return name, off, size

    _n, str_off, _s = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", str_off + name)
        if data[str_off + name : end] == b".modinfo":
            out: dict[str, str] = {}
            for item in data[off : off + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    out.setdefault(key, value)
            return out
    return {}


def module_closure(moddir: Path, roots: Sequence[str]) -> list[Path]:
    """The .ko files for `roots` and everything they depend on, dependencies first."""
    index = {p.name[: -len(".ko")].replace("-", "_"): p for p in moddir.rglob("*.ko")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        if name not in index:
            raise TestKernelError(f"module {name} (needed by {chain or 'the rig'}) not in {moddir}")
        seen.add(name)
        deps = modinfo(index[name]).get("depends", "")
        for dep in filter(None, deps.split(",")):
            visit(dep, (*chain, name))
        order.append(index[name])

    for root in roots:
        visit(root, ())
    return order


# --- initramfs ----------------------------------------------------------------------------

INIT_TEMPLATE = r"""#!/bin/sh
# /init of the Vaquero test OS (generated by tools/rigs/test_kernel.py): DHCP, phone home, off.
export PATH=/bin
MARKERS=@MARKERS@
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp
CMDLINE=$(cat /proc/cmdline)
URL=
BOOTIF=
for w in $CMDLINE; do
  case "$w" in
    vaq.phone_home=*) URL="${w#vaq.phone_home=}" ;;
    vaq.markers=1) MARKERS=1 ;;
    BOOTIF=*) BOOTIF=$(echo "${w#BOOTIF=}" | sed 's/^01-//; s/-/:/g' | tr A-F a-f) ;;
  esac
done
mark() { [ "$MARKERS" = 1 ] && echo "@MARKER@ $*"; }
fail() { echo "@MARKER@ FAILED: $*"; sleep 1; poweroff -f; sleep 5; exit 1; }
mark init
[ -n "$URL" ] || fail "no vaq.phone_home= on the kernel command line"
for ko in $(cat /lib/modules/load.order); do
  insmod "/lib/modules/$ko" || fail "insmod $ko"
done
mark modules-loaded
IFACE=
i=0
while [ -z "$IFACE" ] && [ $i -lt 100 ]; do
  for d in /sys/class/net/*; do
    n=${d##*/}
    [ "$n" = lo ] && continue
    m=$(cat "$d/address")
    if [ -z "$BOOTIF" ] || [ "$m" = "$BOOTIF" ]; then IFACE=$n; MAC=$m; break; fi
  done
  [ -z "$IFACE" ] && { i=$((i+1)); usleep 100000; }
done
[ -n "$IFACE" ] || fail "no network interface"
mark "nic $IFACE $MAC"
ip link set "$IFACE" up
# A DISCOVER sent before the link is up is lost and costs a whole retry: wait for carrier.
i=0
while [ "$(cat "/sys/class/net/$IFACE/carrier" 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do
  i=$((i+1)); usleep 50000
done
mark "link $IFACE carrier=$(cat "/sys/class/net/$IFACE/carrier" 2>/dev/null)"
udhcpc -i "$IFACE" -f -q -n -t 10 -T 1 -s /bin/udhcpc.script || fail "udhcpc on $IFACE"
[ -s /tmp/ip ] || fail "udhcpc gave no address"
IP=$(cat /tmp/ip)
mark "dhcp $IFACE $IP"
FW=bios
[ -d /sys/firmware/efi ] && FW=uefi
UUID=$(cat /sys/class/dmi/id/product_uuid 2>/dev/null)
BODY="{\"mac\": \"$MAC\", \"ip\": \"$IP\", \"iface\": \"$IFACE\", \"firmware\": \"$FW\","
BODY="$BODY \"uuid\": \"$UUID\", \"uname\": \"$(uname -a)\"}"
ok=0
for try in 1 2 3 4 5; do
  if timeout 10 wget -q -O /tmp/reply --header "Content-Type: application/json" \
      --post-data "$BODY" "$URL"; then ok=1; break; fi
  sleep 1
done
[ $ok = 1 ] || fail "phone home to $URL"
echo "@MARKER@ PHONED-HOME $MAC $IP"
poweroff -f
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc hook: configure the address it got and note it for /init.
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    [ -n "$router" ] && route add default gw "${router%% *}" dev "$interface" 2>/dev/null
    echo "$ip" > /tmp/ip ;;
esac
exit 0
"""


class _Cpio:
    """A deterministic cpio "newc" archive (what the kernel unpacks as initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 300000

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self.ino += 1
        nb = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0)
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + nb)
        self.buf.write(b"\0" * (-(110 + len(nb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def build_initramfs(modules: Sequence[Path], markers: bool, busybox: str = BUSYBOX) -> bytes:
    """The gzip'd cpio: busybox, its applets as symlinks, /init, the NIC modules in load order."""
    applets = _run([busybox, "--list"], timeout=30).stdout.split()
    if "udhcpc" not in applets or "wget" not in applets or "insmod" not in applets:
        raise TestKernelError(f"{busybox} lacks udhcpc/wget/insmod: install busybox-static")
    c = _Cpio()
    for d in ("bin", "dev", "lib", "lib/modules", "proc", "sys", "tmp"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    for applet in sorted(set(applets) - {"busybox"}):
        c.symlink(f"bin/{applet}", "busybox")
    init = INIT_TEMPLATE.replace("@MARKERS@", "1" if markers else "0").replace("@MARKER@", MARKER)
    c.file("init", init.encode(), 0o755)
    c.file("bin/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    for ko in modules:
        c.file(f"lib/modules/{ko.name}", ko.read_bytes())
    c.file("lib/modules/load.order", "".join(f"{ko.name}\n" for ko in modules).encode())
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(c.finish())
    return out.getvalue()


# --- the whole build, cached --------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time per cache (parallel test processes would race on the rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load(out: Path) -> GuestOS | None:
    try:
        meta = json.loads((out / "manifest.json").read_text())
        tos = GuestOS(
            kernel=out / "vmlinuz",
            initrd=out / "initrd.img",
            kernel_sha256=meta["kernel_sha256"],
            initrd_sha256=meta["initrd_sha256"],
            kernel_release=meta["kernel_release"],
            package=meta["package"],
            markers=meta["markers"],
        )
    except (OSError, ValueError, KeyError):
        return None
    return tos if tos.kernel.is_file() and tos.initrd.is_file() else None


def build_test_os(cache: Path | None = None, *, markers: bool = False) -> GuestOS:
    """Build (or reuse) the test OS; `markers` makes /init print each step on the console."""
    cache = cache or cache_dir()
    if not os.path.isfile(BUSYBOX):
        raise TestKernelError(f"{BUSYBOX} not found: install busybox-static")
    with _locked(cache / ".lock"):
        deb = fetch_kernel_deb(cache)
        key_src = json.dumps(
            {
                "builder": BUILDER_VERSION,
                "deb": _deb_sha256(deb),
                "busybox": sha256_file(BUSYBOX),
                "init": INIT_TEMPLATE,
                "udhcpc": UDHCPC_SCRIPT,
                "modules": NIC_MODULES,
                "markers": markers,
            },
            sort_keys=True,
        )
        key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
        out = cache / "test-os" / key
        found = _load(out)
        if found is not None:
            return found
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            root = Path(tmp) / "root"
            x = _run(["dpkg", "-x", str(deb), str(root)], timeout=600)
            if x.returncode != 0:
                raise TestKernelError(f"dpkg -x {deb}: {x.stderr.strip()[-400:]}")
            kernels = sorted((root / "boot").glob("vmlinuz-*"))
            if not kernels:
                raise TestKernelError(f"{deb} holds no /boot/vmlinuz-*")
            release = kernels[0].name[len("vmlinuz-") :]
            moddir = next(p for p in (root / "lib/modules", root / "usr/lib/modules") if p.is_dir())
            modules = module_closure(moddir / release, NIC_MODULES)
            stage = Path(tmp) / "out"
            stage.mkdir()
            shutil.copyfile(kernels[0], stage / "vmlinuz")
            (stage / "initrd.img").write_bytes(build_initramfs(modules, markers))
            meta = {
                "kernel_sha256": sha256_file(stage / "vmlinuz"),
                "initrd_sha256": sha256_file(stage / "initrd.img"),
                "kernel_release": release,
                "package": deb.name,
                "markers": markers,
                "modules": [m.name for m in modules],
            }
            (stage / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n")
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.exists():
                shutil.rmtree(out)
            os.rename(stage, out)
        built = _load(out)
        assert built is not None
        return built


if __name__ == "__main__":  # `python -m tools.rigs.test_kernel [--markers]`: build, print
    import sys

    t = build_test_os(markers="--markers" in sys.argv[1:])
    print(json.dumps({k: str(v) for k, v in dataclasses.asdict(t).items()}, indent=2))
