"""A UDP relay that loses packets: a lossy management network in front of a real BMC.

    python -m tests.support.lossy_udp_relay TARGET_HOST TARGET_PORT COUNT LOSS SECONDS

Listens on COUNT loopback ports (printed on one line once bound) and forwards each client's
datagrams to the target from a socket of that client's own, and the answers back, dropping
each datagram, either way, with probability LOSS. Runs in a process of its own so that it
does not compete for the GIL with the client under test; exits after SECONDS.
"""

from __future__ import annotations

import random
import selectors
import socket
import sys
import time


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def main() -> int:
    host, port, count, loss, seconds = sys.argv[1:6]
    target, drop, end = (host, int(port)), float(loss), time.monotonic() + float(seconds)
    sel = selectors.DefaultSelector()
    fronts = [_udp() for _ in range(int(count))]
    for front in fronts:
        sel.register(front, selectors.EVENT_READ, None)
    print(" ".join(str(f.getsockname()[1]) for f in fronts), flush=True)
    backs: dict[tuple[socket.socket, object], socket.socket] = {}
    while time.monotonic() < end:
        for key, _ in sel.select(0.5):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data, addr = sock.recvfrom(65536)
            except OSError:
                continue
            if random.random() < drop:
                continue
            if key.data is None:  # from a client: out through its own socket
                back = backs.get((sock, addr))
                if back is None:
                    if len(backs) >= 4096:  # bounded: a test opens a few hundred sessions
                        continue
                    back = backs[(sock, addr)] = _udp()
                    sel.register(back, selectors.EVENT_READ, (sock, addr))
                back.sendto(data, target)
            else:  # the target's answer, back to its client
                front, client = key.data
                front.sendto(data, client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
