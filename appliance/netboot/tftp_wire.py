"""TFTP wire format: request parsing, option negotiation and packet building.

Pure functions on bytes (RFC 1350, 2347, 2348, 2349, 7440) so that every rule of the RFCs can be
tested without sockets, and the I/O modules stay about timing and state only.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from enum import IntEnum

OP_RRQ = 1
OP_WRQ = 2
OP_DATA = 3
OP_ACK = 4
OP_ERROR = 5
OP_OACK = 6

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
MAX_WINDOWSIZE = 65535
# 1500-byte Ethernet MTU minus IPv4 (20), UDP (8) and TFTP (4) headers.
PATH_MTU_BLKSIZE = 1468

_HEADER = struct.Struct("!HH")


class ErrorCode(IntEnum):
    """RFC 1350 / RFC 2347 error codes."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class MalformedPacket(ValueError):
    """The bytes are not a TFTP packet we can interpret; such packets are ignored, not answered."""


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed RRQ or WRQ. Option names are lower-cased; the first occurrence of a name wins."""

    opcode: int
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What a transfer will use, and the options to acknowledge (empty: no OACK is sent)."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float | None = None
    oack: dict[str, str] = field(default_factory=dict)


def parse_request(data: bytes) -> Request:
    """Parse an RRQ/WRQ; raise MalformedPacket for anything else or any framing error.

    Filenames are decoded with the filesystem encoding and surrogateescape, so that any byte
    string maps to exactly one on-disk name. An unpaired trailing option field (some PXE ROMs pad
    requests with NULs) is ignored rather than rejecting the whole request.
    """
    if len(data) < 4:
        raise MalformedPacket("short packet")
    opcode = (data[0] << 8) | data[1]
    if opcode not in (OP_RRQ, OP_WRQ):
        raise MalformedPacket(f"opcode {opcode} is not a request")
    fields = data[2:].split(b"\0")
    if len(fields) < 3 or fields[-1] != b"":
        raise MalformedPacket("request fields are not NUL-terminated")
    filename, mode, *rest = fields[:-1]
    if not filename:
        raise MalformedPacket("empty filename")
    if not mode.isascii() or not mode:
        raise MalformedPacket("bad mode")
    options: dict[str, str] = {}
    for i in range(0, len(rest) - 1, 2):
        name, value = rest[i], rest[i + 1]
        if not name.isascii() or not value.isascii():
            continue
        options.setdefault(name.decode().lower(), value.decode())
    return Request(opcode, os.fsdecode(filename), mode.decode().lower(), options)


def _small_int(value: str) -> int | None:
    if 0 < len(value) <= 10 and value.isascii() and value.isdigit():
        return int(value)
    return None


def negotiate(
    options: dict[str, str],
    *,
    file_size: int,
    max_blksize: int = PATH_MTU_BLKSIZE,
    max_windowsize: int = 64,
    max_timeout: int = 255,
) -> Negotiated:
    """Decide blksize, windowsize, timeout and tsize from the client's options.

    Out-of-range values make us ignore that option (RFC 2347 lets a server leave any option
    unacknowledged) except blksize/windowsize above our limits, which are lowered: a smaller
    block than asked is always acceptable to an RFC 2348 client. A timeout above
    `max_timeout` is not acknowledged (RFC 2349 allows only the client's own value back):
    a client must not hold a transfer slot for minutes by asking for 255 s.
    """
    oack: dict[str, str] = {}
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, None
    for name, value in options.items():
        number = _small_int(value)
        if name == "blksize" and number is not None and number >= MIN_BLKSIZE:
            blksize = min(number, MAX_BLKSIZE, max_blksize)
            oack[name] = str(blksize)
        elif name == "windowsize" and number is not None and number >= 1:
            windowsize = min(number, MAX_WINDOWSIZE, max_windowsize)
            oack[name] = str(windowsize)
        elif name == "timeout" and number is not None and 1 <= number <= min(255, max_timeout):
            timeout = float(number)
            oack[name] = str(number)
        elif name == "tsize" and number is not None:
            oack[name] = str(file_size)
    return Negotiated(blksize, windowsize, timeout, oack)


def data_packet(block: int, payload: bytes | memoryview) -> bytes:
    """DATA packet; block is an absolute block number, sent modulo 2**16 (rollover to 0)."""
    return _HEADER.pack(OP_DATA, block & 0xFFFF) + payload


def oack_packet(options: dict[str, str]) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())
    return _HEADER.pack(OP_OACK, 0)[:2] + body


def error_packet(code: ErrorCode, message: str) -> bytes:
    return _HEADER.pack(OP_ERROR, int(code)) + message.encode("ascii", "replace") + b"\0"


def parse_error(data: bytes) -> tuple[int, str]:
    """Code and message of an ERROR packet a client sent us (lenient: it is only logged)."""
    code = (data[2] << 8) | data[3] if len(data) >= 4 else 0
    message = data[4:].split(b"\0", 1)[0].decode("ascii", "replace")
    return code, message


def parse_ack(data: bytes) -> int | None:
    """Block number of an ACK, or None when the packet is not an ACK."""
    if len(data) >= 4 and data[0] == 0 and data[1] == OP_ACK:
        return (data[2] << 8) | data[3]
    return None


def to_netascii(data: bytes) -> bytes:
    """RFC 764 netascii: CR becomes CR NUL, then LF becomes CR LF."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
