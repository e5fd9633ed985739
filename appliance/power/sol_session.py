"""One serial-over-LAN session in a process of its own: `python -m appliance.power.sol_session`.

Why a process: pyghmi keeps its IPMI sessions in module-wide state shared by every `Command`
and `Console` of a process, and closing a console session logs out the session the peer's
power actions to the same BMC were using (their next request then went unanswered). Here the
console has its own pyghmi, and the peer's power control is untouched by it.

Why it logs out: a BMC holds a few dozen sessions at most (ipmi_sim: 63), and a session left
logged in stays until the BMC times it out. When the BMC refuses SOL (no serial port, SOL
disabled) pyghmi reports the error and drops its console without logging out; a process
killed without a logout leaves its session too. Measured against ipmi_sim without SOL: each
attempt left one more active session, and the peer's own power commands to that BMC went
unanswered once the recorder had retried through every stage of a rollout. So the process
ends at the first error, and on SIGTERM, through pyghmi's logout (which also deactivates
SOL).

Reads `{"address", "port", "user", "password"}` as one JSON line on stdin (never argv, which
`ps` shows), writes what the machine prints to stdout as it comes, errors to stderr; exits 0
when terminated, 1 when the BMC ended or refused the session.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any


def main() -> int:
    from pyghmi.ipmi import console

    target = json.loads(sys.stdin.readline())
    out = sys.stdout.buffer
    errors: list[str] = []
    stopping: list[int] = []

    def received(data: object) -> None:
        if isinstance(data, dict):
            if data.get("error") and not stopping:  # a stop's logout says "disconnected"
                errors.append(str(data["error"]))
                sys.stderr.write(f"{data['error']}\n")
                sys.stderr.flush()
            return
        out.write(data if isinstance(data, bytes) else str(data).encode())
        out.flush()

    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    con = console.Console(bmc=target["address"], userid=target["user"],
                          password=target["password"], port=int(target["port"]),
                          iohandler=received, force=True)
    session = con.ipmi_session  # pyghmi forgets it on an error; the logout needs it
    try:
        while not stopping and not errors:
            console.Console.wait_for_rsp(timeout=1)
    finally:
        _log_out(session)
    return 0 if stopping else 1


def _log_out(session: Any) -> None:
    """Best effort: a BMC that is gone cannot be logged out of, and nothing else is left."""
    if session is None:
        return
    try:
        session.logout()
    except Exception as exc:  # noqa: BLE001 - pyghmi raises several kinds; all mean "gone"
        sys.stderr.write(f"logout: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
