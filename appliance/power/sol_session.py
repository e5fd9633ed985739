"""One serial-over-LAN session in a process of its own: `python -m appliance.power.sol_session`.

Why a process: pyghmi keeps its IPMI sessions in module-wide state shared by every `Command`
and `Console` of a process, and closing a console session logs out the session the peer's
power actions to the same BMC were using (their next request then went unanswered). Here the
console has its own pyghmi, and the peer's power control is untouched by it.

Reads `{"address", "port", "user", "password"}` as one JSON line on stdin (never argv, which
`ps` shows), writes what the machine prints to stdout as it comes, errors to stderr; runs
until killed.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from pyghmi.ipmi import console

    target = json.loads(sys.stdin.readline())
    out = sys.stdout.buffer

    def received(data: object) -> None:
        if isinstance(data, dict):
            if data.get("error"):
                sys.stderr.write(f"{data['error']}\n")
                sys.stderr.flush()
            return
        out.write(data if isinstance(data, bytes) else str(data).encode())
        out.flush()

    console.Console(bmc=target["address"], userid=target["user"], password=target["password"],
                    port=int(target["port"]), iohandler=received, force=True)
    while True:
        console.Console.wait_for_rsp(timeout=1)


if __name__ == "__main__":
    sys.exit(main())
