"""The console recorder against a real BMC (ipmi_sim): every session it opens is logged out
again, whether the BMC refuses SOL or the recorder stops a session that works. A BMC holds
a few dozen sessions; each one left behind stays until the BMC times it out, and once they
are all taken the peer's power commands to that BMC go unanswered."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.power import console
from appliance.power.console import ConsoleRecorder, SolTarget
from tests.support.ipmi_sim_rig import PASSWORD, Sim, run_sim
from tools.rigs.peer_proc import free_tcp_ports

pytestmark = pytest.mark.slow


def active_sessions(sim: Sim) -> int:
    """The BMC's count of active sessions, less the one ipmitool opens to ask."""
    # -C 3: the cipher suite pyghmi uses; without it ipmitool first asks the sim for its
    # suites, which it does not answer (10 s each time)
    out = subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p",
                          str(sim.port),
                          "-U", "admin", "-P", PASSWORD, "session", "info", "all"],
                         capture_output=True, text=True, timeout=30)
    counts = [int(line.split(":")[1]) for line in out.stdout.splitlines()
              if line.startswith("active sessions")]
    assert counts, out.stdout + out.stderr
    return counts[0] - 1


def wait_for(predicate, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def target(sim: Sim, run: tuple[int, int] = (1, 0)) -> SolTarget:
    return SolTarget("127.0.0.1", sim.port, "admin", PASSWORD, run=run)


def test_a_bmc_without_sol_is_left_with_no_session(sim: Sim, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "RETRY", 0.5)  # the test's pace; doubled as in production
    recorder = ConsoleRecorder(tmp_path / "consoles")
    try:
        for attempt in range(2):  # the first attempt, and the retry after it ended
            recorder.want({"m1": target(sim)})
            proc = recorder._open["m1"][0]
            assert wait_for(lambda proc=proc: proc.poll() is not None, "the refused session")
            assert proc.returncode == 1, attempt
            assert active_sessions(sim) == 0, attempt
            time.sleep(recorder._delay("m1") + 0.1)
        recorder.want({"m1": target(sim)})
        assert recorder._ended["m1"] == 2
        assert recorder._delay("m1") == 2.0  # RETRY, doubled after each refusal
        recorder.want({})
        assert "m1" not in recorder._ended
    finally:
        recorder.close()
    assert active_sessions(sim) == 0


@pytest.fixture
def serial_port() -> Iterator[tuple[int, list[bytes]]]:
    """What the machine's serial port would be: a TCP server the BMC connects its SOL to,
    printing a line every 0.1 s."""
    port = free_tcp_ports(1)[0]
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                n = 0
                while not stop.is_set():
                    try:
                        conn.sendall(b"serial line %d\r\n" % n)
                    except OSError:
                        break
                    n += 1
                    time.sleep(0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, []
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.fixture
def sol_sim(tmp_path: Path, serial_port) -> Iterator[Sim]:
    (tmp_path / "bmc").mkdir()
    yield from run_sim(tmp_path / "bmc", sol_port=serial_port[0])


def test_a_stopped_session_is_logged_out(tmp_path: Path, sol_sim: Sim) -> None:
    recorder = ConsoleRecorder(tmp_path / "consoles")
    try:
        recorder.want({"m1": target(sol_sim)})
        wait_for(lambda: active_sessions(sol_sim) == 1, "the SOL session")
        recorder.want({"m1": target(sol_sim, run=(2, 0))})  # a new run: a new session
        assert wait_for(lambda: active_sessions(sol_sim) == 1, "one session, the new one")
        assert recorder._open["m1"][0].poll() is None
        recorder.want({})
        assert wait_for(lambda: active_sessions(sol_sim) == 0, "the logout")
        assert recorder.recording() == []
    finally:
        recorder.close()
