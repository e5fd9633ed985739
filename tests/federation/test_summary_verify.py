"""Summaries signed and verified with real Ed25519 keys: what is accepted, what is refused and
why, and the cross-site gate as a pure function of summaries and time."""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import pytest

from appliance.federation.gate import gate, state_of
from appliance.federation.keys import generate_signing_key
from appliance.federation.summary import (
    MAX_SUMMARY_BYTES,
    RECENT,
    SiteFacts,
    build_summary,
    canonical,
    digest,
    sign,
)
from appliance.federation.verify import Keyring, Refused, verify
from appliance.sot.models import Federation

SHA = "a" * 40
OLD = "b" * 40


@pytest.fixture
def keys(tmp_path: Path):
    return {s: generate_signing_key(tmp_path / f"{s}.key") for s in ("ams1", "fra1", "sjc1")}


def ring(keys) -> Keyring:
    return Keyring.from_declared((s, [k.public_text()]) for s, k in keys.items())


def facts(applied=SHA, state="done", failed=0, since=1000.0) -> SiteFacts:
    return SiteFacts(applied, {OLD: "superseded", SHA: "applied"},
                     {"revision": SHA, "state": state, "since": since, "done": 10_000,
                      "failed": failed, "in_flight": 0}, True, 3, 3)


def test_a_site_of_10000_hosts_publishes_under_4_kb_and_a_relayed_copy_verifies(keys) -> None:
    many = SiteFacts(SHA, {f"{i:040x}": "superseded" for i in range(50)}, facts().rollout,
                     True, 5, 5)
    envelope = sign(build_summary("ams1", 7, 1234.5, many, "f" * 64), keys["ams1"])
    assert len(envelope["summary"]["revisions"]) == RECENT
    assert len(canonical(envelope["summary"])) < MAX_SUMMARY_BYTES
    relayed = copy.deepcopy(envelope)  # what a third site hands over
    accepted = verify(relayed, ring(keys), {})
    assert (accepted.site, accepted.seq, accepted.digest) == ("ams1", 7, digest(
        envelope["summary"]))
    # the same summary again is a duplicate (None), not a refusal
    assert verify(relayed, ring(keys), {"ams1": (7, accepted.digest, envelope["sig"])}) is None


def refusal(envelope, keyring, last=None) -> str:
    with pytest.raises(Refused) as exc:
        verify(envelope, keyring, last or {})
    return exc.value.reason


def test_forged_replayed_wrong_key_and_undeclared_site_are_refused(keys, tmp_path) -> None:
    keyring = ring(keys)
    good = sign(build_summary("fra1", 5, 100.0, facts(), None), keys["fra1"])
    forged = copy.deepcopy(good)
    forged["summary"]["rollout"]["failed"] = 0
    forged["summary"]["applied"] = OLD  # altered after signing
    assert refusal(forged, keyring) == "bad_signature"
    older = sign(build_summary("fra1", 4, 90.0, facts(), None), keys["fra1"])
    held = {"fra1": (5, digest(good["summary"]), good["sig"])}
    assert refusal(older, keyring, held) == "replay"
    same_seq = sign(build_summary("fra1", 5, 101.0, facts(), None), keys["fra1"])
    assert refusal(same_seq, keyring, held) == "replay"
    other = sign(build_summary("fra1", 6, 100.0, facts(), None), keys["sjc1"])
    assert refusal(other, keyring) == "wrong_site_key"
    stranger = generate_signing_key(tmp_path / "x.key")
    assert refusal(sign(build_summary("fra1", 6, 1.0, facts(), None), stranger),
                   keyring) == "unknown_key"
    assert refusal(sign(build_summary("lon1", 1, 1.0, facts(), None), stranger),
                   keyring) == "unknown_site"
    bad_sig = dict(good, sig=base64.b64encode(b"x" * 64).decode())
    assert refusal(bad_sig, keyring) == "bad_signature"
    assert refusal({"summary": {"site": "fra1"}, "key": "0" * 16, "sig": ""},
                   keyring) == "malformed"
    huge = copy.deepcopy(good)
    huge["summary"]["padding"] = "x" * 10_000
    assert refusal(huge, keyring) == "too_large"


def summary(site: str, applied: str | None, state: str, since: float, at: float,
            failed: int = 0) -> dict:
    rollout = ({"revision": applied, "state": state, "since": since, "done": 1,
                "failed": failed, "in_flight": 0} if applied else None)
    return build_summary(site, 1, at, SiteFacts(applied, {SHA: "applied"} if applied else {},
                                                rollout, True, 1, 1), None)


FED = Federation.model_validate({"rollout": {"waves": [["ams1"], ["fra1", "sjc1"]], "soak": 60,
                                             "on_failure": "halt_all"},
                                 "summary_ttl": 30, "on_stale": "wait"})


def test_a_wave_waits_for_the_canary_done_and_soaked() -> None:
    now = 10_000.0
    assert gate(FED, "ams1", SHA, {}, now).allowed  # the canary goes first
    running = {"ams1": summary("ams1", SHA, "running", now - 5, now - 1)}
    st = gate(FED, "fra1", SHA, running, now)
    assert (st.allowed, st.waits_for, st.reason) == (False, ["ams1"], "ams1: running")
    soaking = {"ams1": summary("ams1", SHA, "done", now - 20, now - 1)}
    assert "soaking 40 s more" in gate(FED, "fra1", SHA, soaking, now).reason
    done = {"ams1": summary("ams1", SHA, "done", now - 61, now - 1)}
    assert gate(FED, "sjc1", SHA, done, now).allowed
    stale = {"ams1": summary("ams1", SHA, "done", now - 61, now - 31)}
    st = gate(FED, "fra1", SHA, stale, now)
    assert not st.allowed and "stale" in st.reason
    failed = {"ams1": summary("ams1", SHA, "failed", now - 61, now - 1)}
    st = gate(FED, "fra1", SHA, failed, now)
    assert (st.allowed, st.state) == (False, "blocked") and "halt_all" in st.reason
    assert state_of(failed["ams1"], SHA) == "failed"


def test_halt_site_lets_the_others_go_and_proceed_ends_the_wait_for_a_silent_site() -> None:
    now = 10_000.0
    fed = Federation.model_validate({"rollout": {"order": ["ams1", "fra1", "sjc1"],
                                                 "max_parallel": 1, "soak": 0,
                                                 "on_failure": "halt_site"},
                                     "summary_ttl": 30, "on_stale": "proceed",
                                     "stale_timeout": 300})
    failed = {"ams1": summary("ams1", SHA, "failed", now - 10, now - 1),
              "fra1": summary("fra1", SHA, "done", now - 10, now - 1)}
    assert gate(fed, "sjc1", SHA, failed, now).allowed
    silent = {"ams1": summary("ams1", SHA, "done", now - 500, now - 400),
              "fra1": summary("fra1", SHA, "done", now - 10, now - 1)}
    assert gate(fed, "sjc1", SHA, silent, now).allowed
    recent_silence = {**silent, "ams1": summary("ams1", SHA, "done", now - 500, now - 100)}
    assert not gate(fed, "sjc1", SHA, recent_silence, now).allowed
