"""`vaq-peer` commands that talk to a running peer's REST API.

Any peer answers: reads come from that peer's replica (they work on a peer cut off from the
majority), writes are replicated through Raft from whichever peer receives them.

Where: --peer URL, else $VAQ_PEER, else http://127.0.0.1 (port 80: a peer's boot HTTP port,
which serves the API unless `api.port` is set). Token: --token-file FILE, else
$VAQ_TOKEN_FILE (a file holding the token), else $VAQ_TOKEN (the token itself); a `read`
token may read; writes need an `admin` token. The token is never printed.

Exit codes:
  0  success (doctor: every check passed or warned; status: the peer has a quorum)
  1  failed: not found (404), refused by the state machine (409), server error (5xx),
     doctor found a FAIL, `leader` knows no leader
  2  usage: bad arguments, unreadable token file, ambiguous revision prefix, a request
     the API calls malformed (400)
  3  the peer is unreachable (the message names the URL and the reason)
  4  the token is missing, not valid (401) or may not do this (403)
  5  this peer cannot reach a quorum: writes are refused there (reads still work);
     try another peer. `status` says so too, after printing the status
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .client import ApiError, PeerClient, peer_url, read_token
from .exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_QUORUM,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)

Command = Callable[[PeerClient, argparse.Namespace], int]
FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
STREAM_READ_TIMEOUT = 40.0  # the server sends a keep-alive line at least every 15 s


# ---- formatting ---------------------------------------------------------------------------

def ago(at: float | None, now: float | None = None) -> str:
    """'3 s ago', '5 min ago', '2 h ago', '4 d ago'; '-' for no time."""
    if at is None:
        return "-"
    delta = (time.time() if now is None else now) - at
    suffix = "ago" if delta >= 0 else "from now"
    return f"{duration(abs(delta))} {suffix}"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def when(at: float | None) -> str:
    """Absolute local time and how long ago: both matter when reading a history."""
    if at is None:
        return "-"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))} ({ago(at)})"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; None shows as '-'."""
    cells = [[str(h) for h in headers]]
    cells += [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def yes(value: Any) -> str:
    return "yes" if value else "no"


def short(sha: str | None) -> str | None:
    return sha[:12] if sha else None


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


# ---- commands -----------------------------------------------------------------------------

def _status_waiting(client: PeerClient, wait: float | None) -> dict[str, Any]:
    """The status; with --wait, a peer that does not answer yet (starting), or has no quorum
    yet (electing), is asked again until it has or the time is up: what a script needs
    after `vaq-peer serve &`."""
    deadline = time.monotonic() + (wait or 0)
    while True:
        try:
            st = client.get("/v1/status")
            if st.get("raft", {}).get("has_quorum") or time.monotonic() >= deadline:
                return st
        except ApiError as exc:
            if exc.exit_code != EXIT_UNREACHABLE or time.monotonic() >= deadline:
                raise
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def cmd_status(client: PeerClient, args: argparse.Namespace) -> int:
    st = _status_waiting(client, args.wait)
    if args.json:
        print_json(st)
        return EXIT_OK
    raft = st.get("raft", {})
    role = "leader" if raft.get("is_leader") else "follower"
    if not raft.get("has_quorum"):
        role += " (NO QUORUM: writes refused here, reads work)"
    rows = [
        ("peer", f"{st.get('peer')}  site {st.get('site')}  version {st.get('version')}"),
        ("url", client.url),
        ("raft", f"{raft.get('self')}  {role}  term {raft.get('term')}"),
        ("leader", raft.get("leader") or "none known"),
        ("quorum", f"{yes(raft.get('has_quorum'))}  ({len(raft.get('connected', [])) + 1} of "
                   f"{len(raft.get('members', []))} members reachable, self included)"),
        ("log", f"commit index {raft.get('commit_index')}, applied {raft.get('last_applied')}"),
        ("revision", _revision_line(st)),
        ("uptime", duration(st.get("uptime_s") or 0)),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    if not raft.get("has_quorum"):
        print(f"vaq-peer status: {st.get('peer')} has no quorum (exit {EXIT_NO_QUORUM})",
              file=sys.stderr)
        return EXIT_NO_QUORUM
    return EXIT_OK


def _revision_line(st: dict[str, Any]) -> str:
    applied, served = st.get("applied_revision"), st.get("served_revision")
    mode = (st.get("boot") or {}).get("mode")
    if applied:
        return applied if served in (None, applied) else f"{applied} (serving {served})"
    if served and mode == "sot":
        return f"{served} (a fixed `sot:` revision, served; no pipeline)"
    return "none applied yet (boot requests get 503)"


def cmd_peers(client: PeerClient, args: argparse.Namespace) -> int:
    data = client.get("/v1/peers")
    if args.json:
        print_json(data)
        return EXIT_OK
    rows = [(p.get("address") + (" *" if p.get("self") else ""), p.get("name"),
             yes(p.get("member")), yes(p.get("connected")), yes(p.get("leader")),
             p.get("api_url")) for p in data.get("peers", [])]
    print(table(["ADDRESS", "NAME", "MEMBER", "CONNECTED", "LEADER", "API"], rows))
    print("(* the peer that answered)")
    return EXIT_OK


def cmd_leader(client: PeerClient, args: argparse.Namespace) -> int:
    data = client.get("/v1/leader")
    if args.json:
        print_json(data)
    elif data.get("leader"):
        me = "this peer" if data.get("is_leader") else f"asked {data.get('self')}, a follower"
        print(f"{data['leader']}  term {data.get('term')}  ({me}; quorum "
              f"{yes(data.get('has_quorum'))})")
    else:
        print(f"no leader known to {data.get('self')} (term {data.get('term')}, quorum "
              f"{yes(data.get('has_quorum'))})")
    return EXIT_OK if data.get("leader") else EXIT_FAILED


def _approvals(rev: dict) -> str:
    return f"{len(rev.get('approvals') or [])}/{rev.get('approvals_required', '?')}"


def cmd_revisions(client: PeerClient, args: argparse.Namespace) -> int:
    data = client.get("/v1/revisions", state=args.state)
    if args.json:
        print_json(data)
        return EXIT_OK
    revs = data.get("revisions", [])
    applied = data.get("applied")
    rows = [((short(r.get("sha")) or "?") + (" *" if r.get("sha") == applied else ""),
             r.get("state"), r.get("source"), ago(r.get("observed_at")), ago(r.get("updated_at")),
             _approvals(r)) for r in revs]
    print(table(["REVISION", "STATE", "SOURCE", "OBSERVED", "UPDATED", "APPROVALS"], rows))
    what = f"in state {args.state}" if args.state else "known"
    print(f"{len(revs)} revision(s) {what}; applied: {short(applied) or 'none'}"
          + (" (*)" if any(r.get("sha") == applied for r in revs) else ""))
    return EXIT_OK


def resolve_revision(client: PeerClient, rev: str) -> str:
    """A full SHA as given; a prefix must match exactly one revision the peer knows."""
    rev = rev.strip().lower()
    if FULL_SHA.match(rev):
        return rev
    if not re.fullmatch(r"[0-9a-f]{4,64}", rev):
        raise ApiError(f"{rev!r} is not a revision: give a commit SHA or a unique prefix of at "
                       "least 4 hex digits", EXIT_USAGE)
    matches = [r["sha"] for r in client.get("/v1/revisions").get("revisions", [])
               if r.get("sha", "").startswith(rev)]
    if not matches:
        raise ApiError(f"no revision known to {client.url} starts with {rev} "
                       "(see `vaq-peer revisions`)", EXIT_FAILED)
    if len(matches) > 1:
        listed = ", ".join(short(m) or "" for m in matches[:5])
        raise ApiError(f"{rev} is ambiguous: {len(matches)} revisions match ({listed}...); "
                       "give more digits", EXIT_USAGE)
    return matches[0]


def _summary_lines(summary: Any, indent: str = "    ") -> list[str]:
    if not isinstance(summary, dict):
        return [f"{indent}{summary}"]
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, separators=(", ", ": "))
            if len(value) > 100:
                value = value[:97] + "..."
        lines.append(f"{indent}{key}: {value}")
    return lines


def cmd_show(client: PeerClient, args: argparse.Namespace) -> int:
    sha = resolve_revision(client, args.rev)
    rev = client.get(f"/v1/revisions/{sha}")
    if args.json:
        print_json(rev)
        return EXIT_OK
    print(f"revision  {rev.get('sha')}")
    print(f"state     {rev.get('state')}  (updated {when(rev.get('updated_at'))})")
    print(f"source    {rev.get('source') or '-'}")
    print(f"observed  {when(rev.get('observed_at'))}")
    print("\nhistory:")
    rows = [(when(h.get("at")), h.get("state"), h.get("by"), h.get("reason"))
            for h in rev.get("history", [])]
    print("  " + table(["WHEN", "STATE", "BY", "REASON"], rows).replace("\n", "\n  "))
    approvals = rev.get("approvals") or []
    print(f"\napprovals: {_approvals(rev)}")
    for a in approvals:
        note = f": {a['note']}" if a.get("note") else ""
        print(f"  {a.get('by')}  {when(a.get('at'))}{note}")
    for state, summary in (rev.get("summaries") or {}).items():
        label = {"validated": "validation report", "planned": "plan"}.get(state, state)
        print(f"\n{label} ({state}):")
        print("\n".join(_summary_lines(summary)))
    return EXIT_OK


def cmd_approve(client: PeerClient, args: argparse.Namespace) -> int:
    sha = resolve_revision(client, args.rev)
    result = client.post(f"/v1/revisions/{sha}/approve",
                         {"note": args.note} if args.note else {})
    if args.json:
        print_json(result)
    else:
        print(f"approved {short(sha)}: {result.get('approvals')} approval(s), revision is now "
              f"{result.get('state')}")
    return EXIT_OK


def cmd_rearm(client: PeerClient, args: argparse.Namespace) -> int:
    """Rolling back: the superseded revision is planned again against the applied one."""
    sha = resolve_revision(client, args.rev)
    result = client.post(f"/v1/revisions/{sha}/rearm",
                         {"note": args.note} if args.note else {})
    if args.json:
        print_json(result)
    else:
        print(f"re-armed {short(sha)}: it is planned again against the applied revision; "
              f"review it with `vaq-peer show {short(sha)}`, then `vaq-peer approve`")
    return EXIT_OK


def cmd_power(client: PeerClient, args: argparse.Namespace) -> int:
    """Status from any peer; an action from the leader (followed when this peer is not it)."""
    path = f"/v1/hosts/{args.host}/power"
    if args.action == "status":
        result = client.get(path)
    else:
        try:
            result = client.post(path, {"action": args.action})
        except ApiError as exc:
            leader = exc.body.get("leader") if exc.body.get("error") == "not_leader" else None
            url = next((p.get("api_url") for p in client.get("/v1/peers").get("peers", [])
                        if p.get("address") == leader and p.get("api_url")), None)
            if url is None:
                raise
            result = client.at(url).post(path, {"action": args.action})
    if args.json:
        print_json(result)
    elif args.action == "status":
        print(f"{args.host}: {result.get('state')}")
    else:
        print(f"{args.host}: {args.action} done (intent {result.get('intent')})")
    return EXIT_OK


def cmd_note(client: PeerClient, args: argparse.Namespace) -> int:
    result = client.post("/v1/events", {"message": args.message, "host": args.host})
    if args.json:
        print_json(result)
    else:
        print(f"recorded as event {result.get('seq')}")
    return EXIT_OK


def cmd_hosts(client: PeerClient, args: argparse.Namespace) -> int:
    data = client.get("/v1/hosts")
    if args.json:
        print_json(data)
        return EXIT_OK
    hosts = sorted(data.get("hosts", []), key=lambda h: h.get("name", ""))
    rows = [(h.get("name"), h.get("stage"), h.get("state"), _done(h), short(h.get("revision")),
             ago(h.get("updated_at")), (h.get("message") or h.get("last_event") or "")[:70])
            for h in hosts]
    print(table(["HOST", "STAGE", "STATE", "DONE", "REVISION", "UPDATED", "MESSAGE"], rows))
    print(f"{len(hosts)} host(s) with a recorded workflow state")
    if any(h.get("pending_replication") for h in hosts):
        print("(+N here: stages this peer saw done, not yet recorded by the group; it serves "
              "from them and replicates them when it reaches a quorum)")
    return EXIT_OK


def _done(h: dict[str, Any]) -> str:
    text = f"{h.get('done', '-')}/{h.get('stages', '-')}"
    if h.get("pending_replication"):
        text += f" (+{h['done_here'] - (h.get('done') or 0)} here)"
    return text


def cmd_host_events(client: PeerClient, args: argparse.Namespace) -> int:
    data = client.get(f"/v1/hosts/{args.name}/events", after=args.after, limit=args.limit)
    if args.json:
        print_json(data)
        return EXIT_OK
    events = data.get("events", [])
    print(f"host {args.name}: {data.get('total', 0)} event(s) in this peer's history")
    for event in events:
        print(event_line(event))
    if events and len(events) >= args.limit:
        print(f"(more: --after {events[-1].get('seq')})")
    return EXIT_OK


def cmd_host(client: PeerClient, args: argparse.Namespace) -> int:
    if args.events:
        return cmd_host_events(client, args)
    data = client.get(f"/v1/hosts/{args.name}")
    if args.json:
        print_json(data)
        return EXIT_OK
    print(f"host {data.get('name')}")
    record = data.get("record")
    print("\nworkflow state (replicated):")
    if record is None:
        print("  none recorded yet")
    else:
        for key, value in record.items():
            timestamp = key.endswith("_at") or key == "deadline"
            print(f"  {key}: {when(value) if timestamp else value}")
    print("\nin the applied revision:")
    print("\n".join(_summary_lines(data.get("sot"), "  ")) if data.get("sot")
          else "  not in the applied revision")
    return EXIT_OK


def event_line(event: dict) -> str:
    if event.get("kind") == "gap":
        return f"!! {event.get('message')}"
    parts = [str(event.get("seq", "")).rjust(6), ago(event.get("at")).ljust(12),
             str(event.get("kind", "")).ljust(20)]
    if event.get("host"):
        parts.append(f"host={event['host']}")
    if event.get("revision"):
        parts.append(f"rev={short(event['revision'])}")
    if event.get("message"):
        parts.append(str(event["message"]))
    if event.get("data"):
        parts.append(json.dumps(event["data"], separators=(",", ":")))
    return "  ".join(parts).rstrip()


def cmd_events(client: PeerClient, args: argparse.Namespace) -> int:
    if args.follow:
        return _follow(client, args)
    if args.for_seconds is not None:
        raise ApiError("--for needs --follow", EXIT_USAGE)
    data = client.get("/v1/events", after=args.after, limit=args.limit)
    if args.json:
        print_json(data)
        return EXIT_OK
    after = args.after or 0
    if data.get("first_seq", 0) > after + 1 and after:
        print(f"!! events {after + 1}..{data['first_seq'] - 1} have left the journal")
    for event in data.get("events", []):
        print(event_line(event))
    events = data.get("events", [])
    more = events and events[-1].get("seq", 0) < data.get("last_seq", 0)
    if more:
        print(f"(more: --after {events[-1]['seq']})")
    elif not events:
        print(f"no events after {after} (last is {data.get('last_seq')})")
    return EXIT_OK


def _follow(client: PeerClient, args: argparse.Namespace) -> int:
    query: dict[str, Any] = {"after": args.after}
    if args.for_seconds is not None:
        if args.for_seconds <= 0:
            raise ApiError("--for must be positive", EXIT_USAGE)
        query["for"] = max(1, math.ceil(args.for_seconds))
    deadline = time.monotonic() + (args.for_seconds if args.for_seconds else 3600 * 24 * 365)
    try:
        # The server ends the stream after `for` seconds (at most 3600): follow on from the
        # last event seen until our own deadline.
        while time.monotonic() < deadline:
            for event in client.stream("/v1/events/stream", query, STREAM_READ_TIMEOUT):
                print(json.dumps(event) if args.json else event_line(event), flush=True)
                if isinstance(event.get("seq"), int):
                    query["after"] = event["seq"]
            if args.for_seconds is not None:
                break
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def cmd_console(client: PeerClient, args: argparse.Namespace) -> int:
    """The host's serial console as the leaders recorded it over SOL, gathered from every
    peer by the one asked; --follow: as it comes."""
    path = f"/v1/hosts/{args.host}/console"
    data = client.get(path, tail=args.tail)
    if args.json and not args.follow:
        print_json(data)
        return EXIT_OK
    sys.stdout.write(data.get("text", ""))
    sys.stdout.flush()
    deadline = time.monotonic() + (args.for_seconds or 3600 * 24 * 365)
    try:
        while args.follow and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            data = client.get(path, offset=data.get("next_offset", 0))
            sys.stdout.write(data.get("text", ""))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_doctor(client: PeerClient, args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    return run_doctor(client, args)


# ---- registration -------------------------------------------------------------------------

def _run(func: Command) -> Callable[[argparse.Namespace], int]:
    """Build the client from the common options; turn API failures into exit codes."""
    def run(args: argparse.Namespace) -> int:
        try:
            client = PeerClient(peer_url(args.peer), read_token(args.token_file), args.timeout,
                                site=args.site or getattr(args, "site_for_all", None))
            return func(client, args)
        except ApiError as exc:
            print(f"vaq-peer {getattr(args, 'command', '')}: {exc.message}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    return run


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--peer", metavar="URL",
                        help="the peer's API (default: $VAQ_PEER, else http://127.0.0.1)")
    common.add_argument("--token-file", metavar="FILE",
                        help="file holding the API token (default: $VAQ_TOKEN_FILE; or "
                        "$VAQ_TOKEN holding the token itself)")
    common.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="per request (default 10)")
    common.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    common.add_argument("--site", metavar="SITE", help="ask about another site: the peer "
                        "forwards the request to a peer of SITE with your token")
    return common


EPILOG = __doc__[__doc__.index("Exit codes:"):]


def _add_host_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """hosts, host (with its history), console."""
    add("hosts", cmd_hosts, "hosts and where each is in its workflow")
    p = add("host", cmd_host, "one host: workflow state and what the applied revision says; "
            "--events: its whole history")
    p.add_argument("name")
    p.add_argument("--events", action="store_true", help="every event of this host, across "
                   "revisions (kept on each peer beyond the journal's ring)")
    p.add_argument("--after", type=int, default=0, metavar="N", help="with --events: after "
                   "sequence number N")
    p.add_argument("--limit", type=int, default=1000, metavar="N",
                   help="with --events: at most N (max 1000)")
    p = add("console", cmd_console, "a host's serial console (IPMI serial-over-LAN), recorded "
            "by the leader while the host is in a stage; from any peer")
    p.add_argument("host")
    p.add_argument("--tail", type=int, default=65536, metavar="BYTES",
                   help="the last BYTES of it (default 65536)")
    p.add_argument("--follow", "-f", action="store_true", help="then print what comes, until "
                   "Ctrl-C (or --for)")
    p.add_argument("--for", dest="for_seconds", type=float, metavar="SECONDS",
                   help="with --follow: stop after this long")


def add_peer_commands(
    subparsers: argparse._SubParsersAction,
) -> Callable[[str, Command, str], argparse.ArgumentParser]:
    """Register the commands on `vaq-peer`'s subparsers; returns the `add` that gives the
    rollout and federation commands (their own modules, which use this one's helpers) the
    same common options."""
    common = _common()

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_text, description=help_text,
                                  parents=[common], epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=_run(func))
        return p

    p = add("status", cmd_status, "a running peer: Raft role, term, leader, quorum, revision "
            "(exit 5 without a quorum)")
    p.add_argument("--wait", type=float, metavar="SECONDS",
                   help="ask again for this long while the peer does not answer or has no "
                   "quorum yet")
    add("peers", cmd_peers, "the peer group as the asked peer sees it")
    add("leader", cmd_leader, "the Raft leader (exit 1 if none is known)")
    p = add("revisions", cmd_revisions, "revisions and their lifecycle state")
    p.add_argument("--state", help="only revisions in this state (e.g. awaiting_approval)")
    p = add("show", cmd_show, "one revision: history, approvals, report and plan summaries")
    p.add_argument("rev", metavar="REV", help="commit SHA or a unique prefix")
    p = add("approve", cmd_approve, "approve a revision awaiting approval (admin token)")
    p.add_argument("rev", metavar="REV", help="commit SHA or a unique prefix")
    p.add_argument("--note", help="recorded with the approval")
    p = add("power", cmd_power, "a host's power through its BMC: status (read token), or an "
            "action on the leader (admin token)")
    p.add_argument("host")
    p.add_argument("action", choices=["status", "on", "off", "soft_off", "cycle", "pxe",
                                      "pxe_persistent", "pxe_boot"])
    p = add("rearm", cmd_rearm, "roll back: re-arm a superseded revision for a new plan and "
            "approval (admin token)")
    p.add_argument("rev", metavar="REV", help="commit SHA or a unique prefix")
    p.add_argument("--note", help="why (recorded in the revision's history)")
    p = add("note", cmd_note, "record an operator note in the event journal (admin token)")
    p.add_argument("message")
    p.add_argument("--host", help="the host the note is about")
    _add_host_commands(add)
    p = add("events", cmd_events, "the event journal; --follow for live events")
    p.add_argument("--after", type=int, metavar="N", help="events after sequence number N")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (max 1000)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="print events as they happen until Ctrl-C (or --for)")
    p.add_argument("--for", dest="for_seconds", type=float, metavar="SECONDS",
                   help="with --follow: stop after this long")
    p = add("doctor", cmd_doctor, "check this peer, the token, every peer, leader agreement, "
            "clock skew and readiness: PASS/WARN/FAIL lines, exit 1 on any FAIL")
    p.add_argument("--boot-network", metavar="IFACE",
                   help="also send a real DHCPDISCOVER on IFACE (root) and report every other "
                   "DHCP server that answers")
    p.add_argument("--boot-network-wait", type=float, default=5.0, metavar="SECONDS",
                   help="how long to listen for answers (default 5, at most 30)")
    return add

