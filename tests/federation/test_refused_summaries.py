"""A real peer refuses what it must not believe: a forged summary, a replayed one (an older
sequence), one signed with another site's key, and one of a site the SoT does not declare.
Each refusal is a journal event and a metric; nothing of them is stored. The peer is a real
`vaq-peer serve` process on loopback with a fixed SoT declaring three sites' keys; the test
signs summaries with those sites' real private keys, as their leaders would."""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

from fed_sot import FedSite, write_fed_sot

from appliance.federation.keys import generate_signing_key
from appliance.federation.summary import SiteFacts, build_summary, sign
from tools.rigs.peer_proc import ADMIN, call, free_tcp_ports, single_peer

AUTH = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
SHA = "c" * 40


def exchange(base: str, envelopes: list[dict], sender: str | None = None) -> dict:
    body = {"summaries": envelopes, "have": {}}
    if sender:
        body["from"] = sender
    status, text = call(f"{base}/v1/federation/exchange", "POST", json.dumps(body).encode(),
                        {"Content-Type": "application/json"})  # no token: signatures only
    assert status == 200, (status, text)
    return json.loads(text)


def summary_of(site: str, seq: int) -> dict:
    facts = SiteFacts(SHA, {SHA: "applied"}, {"revision": SHA, "state": "done",
                                              "since": time.time() - 100, "done": 1,
                                              "failed": 0, "in_flight": 0}, True, 3, 3)
    return build_summary(site, seq, time.time(), facts, None)


def metric(base: str, name: str) -> float:
    text = call(f"{base}/metrics")[1]
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_forged_replayed_wrong_key_and_undeclared_summaries_are_refused(tmp_path: Path) -> None:
    keys = {s: generate_signing_key(tmp_path / f"{s}.key") for s in ("lab", "ams1", "sjc1")}
    artifact = tmp_path / "artifact"
    artifact.write_bytes(b"never fetched")
    sot = tmp_path / "sot"
    nowhere = f"http://127.0.0.1:{free_tcp_ports(1)[0]}"  # nothing listens there
    write_fed_sot(sot, [FedSite("lab", "127.0.0", ["127.0.0.1"], [keys["lab"].public_text()],
                                gateway=254),
                        # their peers are out of reach: this test is on loopback only
                        FedSite("ams1", "198.18.1", ["198.18.1.2"],
                                [keys["ams1"].public_text()], endpoints=[nowhere]),
                        FedSite("sjc1", "198.18.3", ["198.18.3.2"],
                                [keys["sjc1"].public_text()], endpoints=[nowhere])],
                  federation="rollout: {waves: [[ams1], [lab, sjc1]], soak: 0}\n",
                  artifact=artifact)
    with single_peer(tmp_path, f"sot: {{path: {sot}}}\n"
                               f"federation: {{key_file: {tmp_path / 'lab.key'}}}") as peer:
        base = peer.base
        deadline = time.monotonic() + 60
        while call(f"{base}/healthz")[0] != 200:
            assert peer.proc.poll() is None and time.monotonic() < deadline, \
                peer.log.read_text()[-3000:]
            time.sleep(0.2)

        good = sign(summary_of("ams1", 5), keys["ams1"])
        assert exchange(base, [good], "ams1")["accepted"] == 1
        forged = copy.deepcopy(sign(summary_of("ams1", 6), keys["ams1"]))
        forged["summary"]["rollout"]["failed"] = 7  # altered after signing
        replayed = sign(summary_of("ams1", 4), keys["ams1"])  # authentic, but older
        wrong_key = sign(summary_of("ams1", 9), keys["sjc1"])
        stranger = generate_signing_key(tmp_path / "lon1.key")
        undeclared = sign(summary_of("lon1", 1), stranger)
        answer = exchange(base, [forged, replayed, wrong_key, undeclared])
        assert answer["accepted"] == 0, answer
        assert answer["summaries"] == [], "a caller with no valid summary learns nothing"
        assert sorted(r["reason"] for r in answer["refused"]) == [
            "bad_signature", "replay", "unknown_site", "wrong_site_key"], answer

        for reason in ("bad_signature", "replay", "unknown_site", "wrong_site_key"):
            assert metric(base, "vaquero_federation_summaries_refused_total"
                                f'{{reason="{reason}"}}') == 1.0, reason

        def journal() -> list[dict]:
            text = call(f"{base}/v1/events?limit=1000", headers=AUTH)[1]
            return [e for e in json.loads(text)["events"] if e["kind"] == "federation.refused"]

        while len(journal()) < 4:
            assert time.monotonic() < deadline + 30, journal()
            time.sleep(0.2)
        assert sorted(e["data"]["reason"] for e in journal()) == [
            "bad_signature", "replay", "unknown_site", "wrong_site_key"]

        def view() -> dict[str, dict]:
            text = call(f"{base}/v1/federation", headers=AUTH)[1]
            return {s["site"]: s for s in json.loads(text)["sites"]}

        while not view()["lab"]["seq"]:  # its own, published once it leads its group
            assert time.monotonic() < deadline + 30, view()
            time.sleep(0.2)
        sites = view()
        assert sites["ams1"]["seq"] == 5  # only the good one
        assert sites["ams1"]["summary"]["rollout"]["failed"] == 0
        assert "lon1" not in sites
        assert sites["sjc1"]["seq"] is None  # nothing stored under sjc1 either
        assert sites["lab"]["local"]
        # the same good summary again is a duplicate, not a refusal
        assert exchange(base, [good], "ams1")["duplicates"] == 1
        # an exchange needs no token; everything else still does
        assert call(f"{base}/v1/federation")[0] == 401
        assert call(f"{base}/v1/federation/override/{SHA}", "POST", b"{}")[0] == 401

        # an admin lets this site go without waiting for ams1: replicated and journaled
        status, text = call(f"{base}/v1/federation/override/{SHA}", "POST",
                            json.dumps({"reason": "ams1 is in maintenance"}).encode(), AUTH)
        assert status == 200, text
        events = json.loads(call(f"{base}/v1/events?limit=1000", headers=AUTH)[1])["events"]
        override = [e for e in events if e["kind"] == "federation.override"]
        assert [(e["revision"], e["message"], e["data"]["by"]) for e in override] == [
            (SHA, "ams1 is in maintenance", "ops")]
