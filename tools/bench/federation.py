"""Benchmark of the federation: 100 sites simulated in this process with the real summary,
signing, verification and exchange/relay code (appliance.federation); only the transport is
in-process (a JSON round trip per exchange instead of HTTP) and the store a dict instead of
each site's Raft log.

Figures, each next to its reference from the same run, as a ratio:
- summary size of a site of 10,000 hosts, against the 4 KB limit;
- Ed25519 signatures and verifications per second, against HMAC-SHA256 of the same bytes
  (what a shared-secret scheme would cost; it could not prove who said it);
- heal: the sites are split in two halves that cannot reach each other; every site changes
  its state during the split; the time from the heal until every site holds every other
  site's new summary, against the 10 s goal;
- relay: every site reaches only the hub site 0 (all other links cut); every site changes
  its state; the time until every site knows every other's new state, all of it relayed
  through the hub, against the same goal.

    .venv/bin/python tools/bench/federation.py            # 100 sites
    .venv/bin/python tools/bench/federation.py --sites 20 # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.federation.exchange import Directory, FederationNode, TransportError
from appliance.federation.keys import generate_signing_key
from appliance.federation.summary import SiteFacts, build_summary, canonical, sign
from appliance.federation.verify import Accepted, Keyring, verify

GOAL_SECONDS = 10.0
LIMIT_BYTES = 4096
LAST_NODES: list[FederationNode] = []


class MemoryStore:
    """What a site's Raft state keeps: the newest accepted summary of each site."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}

    def latest(self) -> Mapping[str, dict]:
        return self.records

    async def put(self, accepted: Accepted, via: str) -> None:
        held = self.records.get(accepted.site)
        if held is None or held["seq"] < accepted.seq:
            self.records[accepted.site] = {"site": accepted.site, "seq": accepted.seq,
                                           "digest": accepted.digest,
                                           "envelope": accepted.envelope, "via": via}


class InProcessTransport:
    """An exchange is a JSON round trip to the other site's node, if the link is up."""

    def __init__(self) -> None:
        self.nodes: dict[str, FederationNode] = {}
        self.reachable: Callable[[str, str], bool] = lambda a, b: True
        self.exchanges = 0

    async def exchange(self, site: str, endpoints: list[str], request: dict) -> dict:
        if not self.reachable(request["from"], site):
            await asyncio.sleep(0.01)  # a refused connection costs a little
            raise TransportError(f"{site}: link cut")
        self.exchanges += 1
        answer = await self.nodes[site].answer(json.loads(json.dumps(request)), request["from"])
        return json.loads(json.dumps(answer))


def facts_of(applied: str, generation: int) -> SiteFacts:
    """A site of 10,000 hosts as its summary tells it: counts only, no host names."""
    revisions = {hashlib.sha1(f"{applied}{i}".encode()).hexdigest(): "superseded"
                 for i in range(7)}
    revisions[applied] = "applied"
    return SiteFacts(applied, revisions, {"revision": applied, "state": "running",
                                          "since": 1.7e9 + generation, "done": 9_000 + generation,
                                          "failed": 3, "in_flight": 997}, True, 5, 5)


def crypto_rates(key, data: bytes, seconds: float = 1.5) -> dict[str, float]:
    signature = key.sign(data)
    public = key.key.public_key()
    secret = b"k" * 32
    out = {}
    for name, fn in (("sign", lambda: key.sign(data)),
                     ("verify", lambda: public.verify(signature, data)),
                     ("hmac", lambda: hmac.new(secret, data, hashlib.sha256).digest())):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(100):
                fn()
            n += 100
        out[name] = n / (time.perf_counter() - start)
    return out


def applied(record: dict | None) -> str | None:
    return record["envelope"]["summary"]["applied"] if record else None


async def converge(nodes: dict[str, FederationNode], want: Mapping[str, str | None],
                   timeout: float) -> float | None:
    """The time (monotonic) when every node holds, for every site, a summary saying it
    applied what `want` says; None at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(all(applied(node.store.latest().get(s)) == sha for s, sha in want.items())
               for node in nodes.values()):
            return time.monotonic()
        await asyncio.sleep(0.05)
    return None


async def scenario(n: int, keys: dict, cut: Callable[[str, str], bool],
                   label: str) -> tuple[float | None, int, float]:
    """Every site changes its state while `cut` links are down; time to converge once all
    links are up (heal) or, for the relay case, with the cut still in place."""
    sites = list(keys)
    keyring = Keyring.from_declared((s, [k.public_text()]) for s, k in keys.items())
    # the defaults of federation.yml: exchanges every 5 s, summary_ttl 120 s (heartbeat 30 s)
    directory = Directory(keyring, {s: [f"inproc://{s}"] for s in sites}, interval=5.0,
                          heartbeat=30.0)
    transport = InProcessTransport()
    state = {s: facts_of(hashlib.sha1(b"v1").hexdigest(), 0) for s in sites}

    def facts_for(site: str):
        async def facts() -> SiteFacts:
            return state[site]
        return facts

    nodes = {s: FederationNode(s, MemoryStore(), transport, lambda: directory,
                               signing_key=keys[s], facts=facts_for(s)) for s in sites}
    transport.nodes = nodes
    LAST_NODES[:] = list(nodes.values())
    tasks = [asyncio.create_task(node.run()) for node in nodes.values()]
    try:
        t0 = time.monotonic()
        if await converge(nodes, {s: state[s].applied for s in sites}, 120) is None:
            raise SystemExit(f"{label}: the sites never learned of each other")
        print(f"  ({label}: {n} sites knew each other after {time.monotonic() - t0:.1f} s)",
              file=sys.stderr, flush=True)
        transport.reachable = lambda a, b: not cut(a, b)
        await asyncio.sleep(1.0)
        start = time.monotonic()
        for i, s in enumerate(sites):  # every site applies a new revision during the cut
            state[s] = facts_of(hashlib.sha1(f"v2-{s}".encode()).hexdigest(), i + 1)
        before = transport.exchanges
        if label == "heal":
            await asyncio.sleep(1.0)  # the cut holds a while: everyone retries in vain
            transport.reachable = lambda a, b: True
            start = time.monotonic()
        cpu0 = time.process_time()
        done = await converge(nodes, {s: state[s].applied for s in sites}, 60)
        seconds = None if done is None else done - start
        return seconds, transport.exchanges - before, time.process_time() - cpu0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = {f"site{i:03d}": generate_signing_key(Path(tmp) / f"{i}.key")
                for i in range(args.sites)}
    first = next(iter(keys))
    envelope = sign(build_summary(first, 123456, time.time(), facts_of("f" * 40, 9), "e" * 64),
                    keys[first])
    data = canonical(envelope["summary"])
    size = len(canonical(envelope))
    assert verify(envelope, Keyring.from_declared([(first, [keys[first].public_text()])]), {})
    rates = crypto_rates(keys[first], data)
    print(f"sites: {args.sites}; one process, in-process transport, real signing and relay")
    print(f"{'figure':44} {'value':>12} {'reference':>12} {'ratio':>7}")

    def row(name: str, value: float, ref: float, fmt: str, ratio: float) -> None:
        print(f"{name:44} {value:>12{fmt}} {ref:>12{fmt}} {ratio:>7.2f}")

    row("summary bytes (10,000-host site) / 4 KB limit", len(data), LIMIT_BYTES, ".0f",
        LIMIT_BYTES / len(data))
    row("envelope bytes (summary+signature+key id)", size, LIMIT_BYTES, ".0f",
        LIMIT_BYTES / size)
    row("Ed25519 sign/s / HMAC-SHA256/s", rates["sign"], rates["hmac"], ".0f",
        rates["sign"] / rates["hmac"])
    row("Ed25519 verify/s / HMAC-SHA256/s", rates["verify"], rates["hmac"], ".0f",
        rates["verify"] / rates["hmac"])
    sites = list(keys)
    half = set(sites[: len(sites) // 2])
    hub = sites[0]
    for label, cut in (("heal", lambda a, b: (a in half) != (b in half)),
                       ("relay", lambda a, b: hub not in (a, b))):
        seconds, exchanges, cpu = await scenario(args.sites, keys, cut, label)
        if seconds is None:
            print(f"{label}: NOT converged within 60 s")
            continue
        what = ("heal: all sites know all new states, s" if label == "heal" else
                "relay via one hub: all know all new states, s")
        row(f"{what} / 10 s goal", seconds, GOAL_SECONDS, ".2f", GOAL_SECONDS / seconds)
        print(f"{'':44} ({exchanges} exchanges, {cpu:.1f} s CPU)")
    refused = sum(sum(n.counters.rejected.values()) for n in LAST_NODES)
    outdated = sum(n.counters.outdated for n in LAST_NODES)
    print(f"refusals among honest sites: {refused} (must be 0); outdated relays dropped: "
          f"{outdated}")


if __name__ == "__main__":
    asyncio.run(main())
