"""Wire format and path resolution of the TFTP server, on bytes and a temporary tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.netboot.tftp_files import FileMissing, FileResolver, PathRefused, relative_name
from appliance.netboot.tftp_wire import (
    OP_RRQ,
    OP_WRQ,
    ErrorCode,
    MalformedPacket,
    data_packet,
    error_packet,
    negotiate,
    oack_packet,
    parse_ack,
    parse_request,
    to_netascii,
)


def test_parse_rrq_with_options_lowercases_names_and_mode() -> None:
    req = parse_request(b"\x00\x01/undionly.kpxe\x00OCTET\x00BlkSize\x001468\x00tsize\x000\x00")
    assert req.opcode == OP_RRQ
    assert req.filename == "/undionly.kpxe"
    assert req.mode == "octet"
    assert req.options == {"blksize": "1468", "tsize": "0"}


def test_parse_wrq_and_padding_nul_is_tolerated() -> None:
    req = parse_request(b"\x00\x02f\x00netascii\x00\x00")
    assert req.opcode == OP_WRQ
    assert req.options == {}


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x00\x01",
        b"\x00\x03\x00\x01data",  # DATA is not a request
        b"\x00\x01file\x00octet",  # mode not NUL-terminated
        b"\x00\x01\x00octet\x00",  # empty filename
        b"\x00\x01file\x00\x00",  # empty mode
        b"\x00\x09file\x00octet\x00",
    ],
)
def test_malformed_requests_raise(packet: bytes) -> None:
    with pytest.raises(MalformedPacket):
        parse_request(packet)


def test_non_utf8_filename_roundtrips_to_bytes() -> None:
    req = parse_request(b"\x00\x01caf\xe9\x00octet\x00")
    assert os.fsencode(req.filename) == b"caf\xe9"


def test_negotiate_clamps_blksize_to_path_mtu_and_reports_tsize() -> None:
    nego = negotiate({"blksize": "65464", "tsize": "0"}, file_size=74213)
    assert nego.blksize == 1468
    assert nego.oack == {"blksize": "1468", "tsize": "74213"}


def test_negotiate_honours_a_larger_configured_blksize() -> None:
    nego = negotiate({"blksize": "9000"}, file_size=1, max_blksize=65464)
    assert nego.blksize == 9000


@pytest.mark.parametrize(
    "options",
    [{"blksize": "7"}, {"blksize": "x"}, {"timeout": "0"}, {"timeout": "256"},
     {"windowsize": "0"}, {"blksize": "9" * 20}, {"unknown": "1"}],
)
def test_negotiate_ignores_invalid_or_unknown_options(options: dict[str, str]) -> None:
    nego = negotiate(options, file_size=10)
    assert nego.oack == {}
    assert (nego.blksize, nego.windowsize, nego.timeout) == (512, 1, None)


def test_negotiate_windowsize_and_timeout() -> None:
    nego = negotiate({"windowsize": "1000", "timeout": "3"}, file_size=10, max_windowsize=16)
    assert (nego.windowsize, nego.timeout) == (16, 3.0)
    assert nego.oack == {"windowsize": "16", "timeout": "3"}


def test_packets() -> None:
    assert data_packet(65536 + 7, b"ab") == b"\x00\x03\x00\x07ab"
    assert oack_packet({"blksize": "1468"}) == b"\x00\x06blksize\x001468\x00"
    assert error_packet(ErrorCode.FILE_NOT_FOUND, "file not found") == (
        b"\x00\x05\x00\x01file not found\x00")
    assert parse_ack(b"\x00\x04\xff\xff") == 65535
    assert parse_ack(b"\x00\x05\x00\x01") is None


def test_netascii_conversion() -> None:
    assert to_netascii(b"a\nb\rc\r\n") == b"a\r\nb\r\0c\r\0\r\n"


# -- path resolution ----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    ipxe, peer, outside = tmp_path / "ipxe", tmp_path / "peer", tmp_path / "outside"
    for d in (ipxe, peer, outside, ipxe / "sub"):
        d.mkdir()
    (ipxe / "undionly.kpxe").write_bytes(b"ipxe-binary")
    (ipxe / "sub" / "x.efi").write_bytes(b"efi")
    (peer / "undionly.kpxe").write_bytes(b"shadowed")
    (peer / "only-peer").write_bytes(b"peer file")
    (outside / "secret").write_bytes(b"secret")
    (ipxe / "escape").symlink_to(outside / "secret")
    (ipxe / "dir-escape").symlink_to(outside)
    (ipxe / "inner-link").symlink_to(ipxe / "sub" / "x.efi")
    return ipxe, peer, outside


def _read(resolver: FileResolver, name: str) -> bytes:
    source = resolver.open(name)
    try:
        return bytes(source.read(0, source.size + 1))
    finally:
        source.close()


def test_roots_are_searched_in_order_and_leading_slash_accepted(tree) -> None:
    ipxe, peer, _ = tree
    resolver = FileResolver([ipxe, peer])
    assert _read(resolver, "/undionly.kpxe") == b"ipxe-binary"
    assert _read(resolver, "only-peer") == b"peer file"
    assert _read(resolver, "//sub/./x.efi") == b"efi"
    assert _read(resolver, "inner-link") == b"efi"


@pytest.mark.parametrize(
    "name", ["../outside/secret", "/../outside/secret", "sub/../../outside/secret", "escape",
             "dir-escape/secret", "sub"],
)
def test_escapes_and_non_files_are_refused(tree, name: str) -> None:
    ipxe, peer, _ = tree
    with pytest.raises(PathRefused):
        FileResolver([ipxe, peer]).open(name)


def test_missing_file(tree) -> None:
    ipxe, peer, _ = tree
    with pytest.raises(FileMissing):
        FileResolver([ipxe, peer]).open("nope.efi")
    with pytest.raises(FileMissing):
        FileResolver([ipxe]).open("/")


def test_virtual_files_are_consulted_first_with_the_relative_name(tree) -> None:
    ipxe, _, _ = tree
    seen: list[str] = []

    def virtual(name: str) -> bytes | None:
        seen.append(name)
        return b"generated" if name == "undionly.kpxe" else None

    resolver = FileResolver([ipxe], virtual)
    assert _read(resolver, "/undionly.kpxe") == b"generated"
    assert _read(resolver, "sub/x.efi") == b"efi"
    assert seen == ["undionly.kpxe", "sub/x.efi"]
    with pytest.raises(PathRefused):
        resolver.open("../x")
    assert seen == ["undionly.kpxe", "sub/x.efi"]  # refused before reaching the callable


def test_cache_sees_a_replaced_file_and_big_files_are_read_by_offset(tree) -> None:
    ipxe, _, _ = tree
    resolver = FileResolver([ipxe], cache_file_max=1024)
    assert _read(resolver, "undionly.kpxe") == b"ipxe-binary"
    tmp = ipxe / "new"
    tmp.write_bytes(b"rebuilt ipxe")
    tmp.replace(ipxe / "undionly.kpxe")
    assert _read(resolver, "undionly.kpxe") == b"rebuilt ipxe"

    big = os.urandom(300 << 10)
    (ipxe / "big").write_bytes(big)
    source = resolver.open("big")
    try:
        blocks = [bytes(source.read(off, 1468)) for off in range(0, len(big), 1468)]
        assert b"".join(blocks) == big
        assert bytes(source.read(0, 10)) == big[:10]  # going back (a retransmission)
    finally:
        source.close()


def test_relative_name() -> None:
    assert relative_name("/a//b/./c") == "a/b/c"
    with pytest.raises(PathRefused):
        relative_name("a/../b")
