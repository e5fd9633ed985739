"""The pure parts of the `vaq-peer` API commands: relative times, tables, event lines, the
clock-skew verdicts of doctor, token and URL options."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli.client import ApiError, PeerClient, Probe, peer_url, read_token
from appliance.cli.doctor import Report, View, _check_clocks
from appliance.cli.exits import EXIT_USAGE
from appliance.cli.peer import ago, duration, event_line, table


def test_relative_times() -> None:
    now = 1_000_000.0
    assert ago(now - 3, now) == "3 s ago"
    assert ago(now - 125, now) == "2 min ago"
    assert ago(now - 3 * 3600 - 60, now) == "3 h 1 min ago"
    assert ago(now - 2 * 86400 - 7200, now) == "2 d 2 h ago"
    assert ago(now + 5, now) == "5 s from now"
    assert ago(None, now) == "-"
    assert duration(59.9) == "59 s"


def test_table_aligns_columns_and_shows_none_as_dash() -> None:
    text = table(["NAME", "STATE"], [("rk-01", "done"), ("a-much-longer-name", None)])
    assert text.splitlines() == ["NAME                STATE",
                                 "rk-01               done",
                                 "a-much-longer-name  -"]


def test_event_line() -> None:
    line = event_line({"seq": 7, "at": 0, "kind": "note", "host": "rk-01",
                       "revision": "ab" * 20, "message": "hello", "data": {"by": "ops"}})
    assert line.split()[0] == "7"
    assert line.endswith('note                  host=rk-01  rev=abababababab  hello  {"by":"ops"}')
    assert event_line({"kind": "gap", "message": "events 3..9 left"}) == "!! events 3..9 left"


def _view(offset: float | None, rtt: float = 0.01) -> View:
    sent = 1_000_000.0
    body = {} if offset is None else {"time": sent + rtt / 2 + offset}
    return View("peer-2", Probe("http://x/v1/status", 200, body, None, sent, sent + rtt, rtt))


@pytest.mark.parametrize(("offset", "result"), [(0.2, "PASS"), (-0.2, "PASS"), (2.0, "WARN"),
                                                (-6.0, "FAIL"), (None, "WARN")])
def test_clock_skew_verdicts(offset: float | None, result: str) -> None:
    report = Report(as_json=True)
    _check_clocks(report, [_view(offset)])
    assert [c["result"] for c in report.checks] == [result]
    if offset is not None:
        assert f"{offset:+.3f} s from this machine" in report.checks[0]["detail"]


def test_a_slow_round_trip_is_not_mistaken_for_skew() -> None:
    report = Report(as_json=True)
    _check_clocks(report, [_view(1.5, rtt=4.0)])  # within the ±2 s the round trip allows
    assert report.checks[0]["result"] == "PASS"


def test_token_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAQ_TOKEN", "from-the-environment")
    assert read_token(None) == "from-the-environment"
    path = tmp_path / "token"
    path.write_text("from-the-file\n")
    assert read_token(str(path)) == "from-the-file"
    with pytest.raises(ApiError) as err:
        read_token(str(tmp_path / "missing"))
    assert err.value.exit_code == EXIT_USAGE and "missing" in err.value.message
    assert "from-the-file" not in repr(PeerClient("http://x", "from-the-file"))


def test_token_file_from_the_environment_as_docs_peer_md_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ops.token"
    path.write_text("the-token-in-the-file\n")
    monkeypatch.setenv("VAQ_TOKEN_FILE", str(path))
    monkeypatch.setenv("VAQ_TOKEN", "ignored-when-a-file-is-named")
    assert read_token(None) == "the-token-in-the-file"
    monkeypatch.delenv("VAQ_TOKEN_FILE")
    # The mistake the old docs taught: a path in VAQ_TOKEN would be sent as the token (401).
    monkeypatch.setenv("VAQ_TOKEN", str(path))
    with pytest.raises(ApiError) as err:
        read_token(None)
    assert err.value.exit_code == EXIT_USAGE and f"VAQ_TOKEN_FILE={path}" in err.value.message


def test_peer_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAQ_PEER", raising=False)
    assert peer_url(None) == "http://127.0.0.1"  # the boot HTTP port's default, 80
    monkeypatch.setenv("VAQ_PEER", "10.0.0.1:9000/")
    assert peer_url(None) == "http://10.0.0.1:9000"
    assert peer_url("https://peer-2.example:8443") == "https://peer-2.example:8443"
    with pytest.raises(ApiError):
        peer_url("ftp://peer")
