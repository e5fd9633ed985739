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
`BOOTIF=01-${netX/mac:hexhyp}`) picks the NIC when there are several; `vaq.peers=<base>,..`
lists base URLs to phone home through (same path) when the phone-home URL's peer is gone.
Whatever the markers, the console always shows `VAQ-TEST: PHONED-HOME <mac> <ip> <url>` on
success and `VAQ-TEST: FAILED: <why>` before powering off on failure.

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
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tools.rigs import initramfs
from tools.rigs.initramfs import (
    BUSYBOX,
    TestKernelError,
    build_initramfs,
    module_closure,
)

__all__ = [
    "KERNEL_ARGS",
    "GuestOS",
    "TestKernelError",
    "build_initramfs",
    "build_test_os",
    "cache_dir",
    "fetch_kernel_deb",
    "ipxe_script",
    "kernel_cmdline",
    "parse_phone_home",
    "sha256_file",
]

BUILDER_VERSION = "1"
DEFAULT_CACHE = "/var/cache/vaquero-test"
META_PACKAGE = "linux-image-amd64"
# NIC drivers the QEMU guests use: e1000 (BIOS rig) and virtio-net-pci (UEFI rig).
NIC_MODULES = ("e1000", "virtio_pci", "virtio_net")
# Console on the serial port (QemuGuest logs it); any failure ends the boot at once (see above).
KERNEL_ARGS = "console=ttyS0 panic=-1"


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

    def sot_os(self, os_id: str = "testos", peers_fallback: bool = False) -> str:
        """The SoT's `os/<id>.yml` that boots this test OS and phones home (through every
        peer of the site in turn with `peers_fallback`)."""
        extra = "  - vaq.peers: \"{{ urls.peers | join(',') }}\"\n" if peers_fallback else ""
        return (f"id: {os_id}\nos_family: busybox\nmajor_version: \"1\"\nboot:\n"
                f"  kernel: {{url: \"file://{self.kernel}\", sha256: {self.kernel_sha256}, "
                "name: vmlinuz}\n  initrd:\n"
                f"    - {{url: \"file://{self.initrd}\", sha256: {self.initrd_sha256}, "
                "name: initrd.img}\n"
                "cmdline:\n  - console: ttyS0\n  - panic: \"-1\"\n"
                "  - vaq.phone_home: \"{{ urls.phone_home }}\"\n" + extra)


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


def _prune(cache: Path, keep_builds: int = 4, keep_debs: int = 2) -> None:
    """Bound the cache: the most recently used builds and the newest kernel packages stay."""

    def newest_first(paths: list[Path]) -> list[Path]:
        return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)

    with contextlib.suppress(OSError):
        for old in newest_first([p for p in (cache / "test-os").iterdir() if p.is_dir()])[
            keep_builds:
        ]:
            shutil.rmtree(old, ignore_errors=True)
        for old in newest_first(list((cache / "debs").glob("linux-image-*.deb")))[keep_debs:]:
            old.unlink()
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)


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
                # Any change to the initramfs builder (its /init, cpio writer) rebuilds.
                "initramfs.py": sha256_file(initramfs.__file__),
                "modules": NIC_MODULES,
                "markers": markers,
            },
            sort_keys=True,
        )
        key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
        out = cache / "test-os" / key
        found = _load(out)
        if found is not None:
            with contextlib.suppress(OSError):
                os.utime(out)  # recently used: kept by _prune
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
        _prune(cache)
        built = _load(out)
        assert built is not None
        return built


if __name__ == "__main__":  # `python -m tools.rigs.test_kernel [--markers]`: build, print
    import sys

    t = build_test_os(markers="--markers" in sys.argv[1:])
    print(json.dumps({k: str(v) for k, v in dataclasses.asdict(t).items()}, indent=2))
