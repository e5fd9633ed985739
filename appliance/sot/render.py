"""Render what a host receives at each stage: its iPXE script and its unattended config.

Rendering is a pure function of (revision, host, stage, phone-home token): the same inputs
give the same bytes on every peer, so results can be cached by SHA. Templates run in Jinja2's
immutable sandbox with StrictUndefined: a SoT author cannot reach Python internals, and a typo
in a variable name is an error at validation time instead of an empty string on a machine.
"""

from __future__ import annotations

import dataclasses
import json
import marshal
import re
import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jinja2 import BaseLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError, nodes
from jinja2.bccache import Bucket, BytecodeCache
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .loader import HostEntry, Sot
from .models import (
    ASSET_TYPES,
    Artifact,
    Boot,
    Interface,
    OperatingSystem,
    Site,
    Stage,
    Subnet,
    Workflow,
)
from .render_budget import (
    DEFAULT_BUDGET,
    LOOP_GUARD,
    SIZE_GUARD,
    BudgetExceeded,
    RenderBudget,
    bound_filters,
    bounded_join,
    budgeted_iter,
    check_binop,
    check_call_args,
    guard_template,
    sized,
    template_budget,
)

PLACEHOLDER_TOKEN = "TOKEN"  # used where no peer secret exists (validate, plan, render offline)


class RenderError(Exception):
    """A template failed for one host; `file`/`line` point into the SoT."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.message = message


class _AssetLoader(BaseLoader):
    def __init__(self, sot: Sot) -> None:
        self.sot = sot

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Any]:
        asset = self.sot.assets.get(template)
        if asset is None:
            raise TemplateNotFound(template)
        return asset.text, asset.path, lambda: True


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with its attribute verdicts cached.

    Loops, calls and the operators that allocate (`*`, `**`, `%`) are held to the render's
    budget (`render_budget`): the sandbox alone bounds neither time nor memory.

    Jinja decides whether `obj.attr` is safe from isinstance checks on `obj` and the name
    `attr` only (internal attributes of functions, frames, generators...; methods that
    mutate known containers), so the verdict is a function of (type(obj), attr). Deciding it
    again on every access was a third of the render time of a large SoT.
    """

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._verdicts: dict[tuple[type, str], bool] = {}
        self.globals.pop("lipsum", None)  # lorem ipsum of any size: no use in a SoT
        self.globals[LOOP_GUARD] = budgeted_iter
        self.globals[SIZE_GUARD] = sized

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return guard_template(super()._parse(source, name, filename))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any,
             **kwargs: Any) -> Any:
        check_call_args(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        key = (type(obj), attr)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = super().is_safe_attribute(obj, attr, value)
        return verdict

    def join_path(self, template: str, parent: str) -> str:
        """`{% include "snippets/x" %}` resolves inside the including template's asset type."""
        head = template.split("/", 1)[0]
        if head in ASSET_TYPES:
            return template
        return f"{parent.split('/', 1)[0]}/{template}"


class CompiledTemplates(BytecodeCache):
    """Templates compiled to Python code, by name and source digest, for every revision's
    environment: a push that changes one template compiles that one (compiling the 20
    templates of a generated SoT costs ~0.1 s, more than the renders of a ten-host change).

    Renders run in a forked worker (render_worker), whose compiles die with it: the worker
    hands what it compiled back (`fresh`, as marshal bytes: code does not pickle) and the
    parent `adopt`s it, so the next worker, forked from the parent, starts with it."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._codes: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._fresh: dict[tuple[str, str], Any] | None = None  # kept in a worker only

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self._codes.get((bucket.key, bucket.checksum))
        if code is not None:
            bucket.code = code

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._store((bucket.key, bucket.checksum), bucket.code)
        if self._fresh is not None:
            self._fresh[(bucket.key, bucket.checksum)] = bucket.code

    def _store(self, key: tuple[str, str], code: Any) -> None:
        self._codes[key] = code
        self._codes.move_to_end(key)
        while len(self._codes) > self.size:
            self._codes.popitem(last=False)

    def collect(self) -> None:
        """In a worker: keep what is compiled from now on, for `fresh`."""
        self._fresh = {}

    def fresh(self) -> dict[tuple[str, str], bytes]:
        """What was compiled since `collect`, to hand to the parent process."""
        return {key: marshal.dumps(code) for key, code in (self._fresh or {}).items()}

    def adopt(self, compiled: dict[tuple[str, str], bytes]) -> None:
        for key, data in compiled.items():
            self._store(key, marshal.loads(data))


COMPILED = CompiledTemplates()


def make_environment(sot: Sot) -> ImmutableSandboxedEnvironment:
    env = _Environment(
        bytecode_cache=COMPILED,
        loader=_AssetLoader(sot),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=-1,
    )
    env.filters["cmdline_quote"] = _quote_cmdline_value
    env.filters["tojson"] = _tojson
    env.filters["urlencode"] = _urlencode
    bound_filters(env.filters)
    return env


_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_QUOTE = [chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256)]
_QUOTE_PATH = [*_QUOTE]
_QUOTE_PATH[ord("/")] = "/"


def _quote(value: Any, for_qs: bool) -> str:
    data = value if isinstance(value, bytes) else str(value).encode()
    text = "".join(map((_QUOTE if for_qs else _QUOTE_PATH).__getitem__, data))
    return text.replace("%20", "+") if for_qs else text


def _urlencode(value: Any) -> str:
    """Jinja's urlencode, same output, by table: its per-byte Python calls were a tenth of
    the render time of templates that embed files as data: URLs (Ignition)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return _quote(value, for_qs=False)
    items = value.items() if isinstance(value, dict) else value
    return "&".join(f"{_quote(k, True)}={_quote(v, True)}" for k, v in items)


def _tojson(value: Any, indent: int | None = None) -> str:
    """JSON for config files. Jinja's own tojson escapes <, >, & and ' for HTML pages, which
    is noise in an Ignition or cloud-config file, and costs twice as much."""
    return json.dumps(value, sort_keys=True, indent=indent, default=str)


@dataclass(frozen=True)
class Urls:
    """Every URL a host uses, all under the site's boot URL (any peer answers them).
    `fallbacks` are the site's other peers' base URLs: a script or config that fetches or
    reports can try them in turn when the peer it booted from dies (see `peers`)."""

    base: str
    host: str
    stage: int
    tokens: dict[int, str] | str  # phone-home tokens: this stage's and the next's only
    fallbacks: tuple[str, ...] = ()

    @property
    def peers(self) -> tuple[str, ...]:
        """Every base URL to try, this peer's first."""
        return (self.base, *self.fallbacks)

    @property
    def token(self) -> str:
        return self._token(self.stage)

    def _token(self, stage: int) -> str:
        if isinstance(self.tokens, str):  # no host (a script for any machine)
            return self.tokens
        token = self.tokens.get(int(stage))
        if token is None:
            raise ValueError(f"urls.phone_home_at({stage}): stage {self.stage} may report only "
                             f"itself and stage {self.stage + 1} (tokens are per stage)")
        return token

    @property
    def ipxe(self) -> str:
        return f"{self.base}/boot/{self.host}/{self.stage}/script.ipxe"

    @property
    def config(self) -> str:
        return f"{self.base}/boot/{self.host}/{self.stage}/config"

    @property
    def loaded(self) -> str:
        """Fetched by a generated script once the stage's kernel and initrds are loaded."""
        return f"{self.base}/boot/{self.host}/{self.stage}/loaded"

    @property
    def phone_home(self) -> str:
        return f"{self.base}/phone-home/{self.host}/{self.stage}/{self.token}"

    def phone_home_at(self, stage: int) -> str:
        """The phone-home URL of another stage: an installer writes the next (local) stage's
        URL into the system it installs, which reports from its first boot."""
        return f"{self.base}/phone-home/{self.host}/{int(stage)}/{self._token(stage)}"

    def artifact(self, artifact: Artifact) -> str:
        return f"{self.base}/artifacts/{artifact.sha256}/{artifact.filename}"

    @property
    def boot_ipxe(self) -> str:
        return f"{self.base}/boot.ipxe"


@dataclass(frozen=True)
class StageView:
    index: int  # 1-based, as people count and as URLs carry it
    count: int
    name: str
    boot: str | None
    timeout: int
    last: bool


def _subnet_view(subnet: Subnet) -> dict[str, Any]:
    return {"prefix": subnet.cidr.prefixlen, "netmask": str(subnet.cidr.netmask),
            "gateway": str(subnet.gateway or ""), "dns": [str(d) for d in subnet.dns],
            "domain": subnet.domain or ""}


def interface_view(sot: Sot, entry: HostEntry, iface: Interface,
                   subnet_views: dict[tuple[str, str], dict[str, Any]] | None = None
                   ) -> dict[str, Any]:
    """The interface as templates see it: Vaquero replaced the subnet id with the subnet."""
    site = sot.sites[entry.site]
    subnet = site.subnet(iface.subnet)
    ipv4 = str(iface.ipv4)
    view: dict[str, Any] = {
        "type": iface.type, "mac": iface.mac, "ipv4": ipv4,
        "hostname": iface.hostname or entry.host.name, "subnet": subnet,
        "identifier": iface.identifier or "",
    }
    if subnet is not None:
        cache = subnet_views if subnet_views is not None else {}
        key = (entry.site, subnet.id)
        if key not in cache:
            cache[key] = _subnet_view(subnet)
        view.update(cache[key])
        view["cidr"] = f"{ipv4}/{view['prefix']}"
    return view


@dataclass(frozen=True)
class StagePlan:
    """Everything resolved for one host at one stage (ids already checked by validation).
    `boot` and `os` are None for a local-disk stage."""

    workflow: Workflow
    stage: Stage
    index: int
    boot: Boot | None
    os: OperatingSystem | None


def stage_plan(sot: Sot, entry: HostEntry, index: int) -> StagePlan:
    workflow = sot.workflows[entry.host.workflow]
    if not 1 <= index <= len(workflow.stages):
        count = len(workflow.stages)
        raise IndexError(f"workflow {workflow.id!r} has {count} stage(s), not a stage {index}")
    stage = workflow.stages[index - 1]
    if stage.boot is None:
        return StagePlan(workflow, stage, index, None, None)
    boot = sot.boots[stage.boot]
    return StagePlan(workflow, stage, index, boot, sot.os[boot.operating_system])


# The generated stage script: one attempt block shared by every peer, entered with
# ${vq-base} set to that peer's URL and ${vq-next} to the label to go to when a fetch or the
# boot fails. A dead peer (killed mid-kernel, say) costs one attempt, not the machine. When
# every peer failed, the machine reboots into PXE (DHCP may then pick a live peer) instead
# of falling through to a disk that may hold nothing bootable. iPXE builds without the
# `reboot` or `sleep` command (both optional in iPXE's config) wait with `prompt` and start
# over from the first peer instead.
IPXE_BASE = "${vq-base}"
IPXE_RETRY_DELAY = 10  # seconds before a machine whose whole chain failed tries again


def ipxe_try_peers(bases: tuple[str, ...], attempt: str) -> str:
    """iPXE lines that run `attempt` (which uses ${vq-base} and ends each fetch and its boot
    with `|| goto ${vq-next}`) against each base URL in turn, then reboot into PXE."""
    out = []
    for i, base in enumerate(bases):
        following = f"vq-peer-{i + 1}" if i + 1 < len(bases) else "vq-failed"
        out.append(f":vq-peer-{i}\nset vq-base {base}\nset vq-next {following}\n"
                   "goto vq-attempt\n")
    out.append(f":vq-attempt\n{attempt}")
    out.append(f":vq-failed\necho Vaquero: the chain failed through {len(bases)} peer(s); "
               f"rebooting into PXE in {IPXE_RETRY_DELAY} s\n"
               f"sleep {IPXE_RETRY_DELAY} || prompt --timeout {IPXE_RETRY_DELAY * 1000} "
               "Press any key to retry now ||\nreboot ||\ngoto vq-peer-0\n")
    return "".join(out)


def site_fallback_urls(site: Site, base: str) -> tuple[str, ...]:
    """The other peers' base URLs of a site whose peers each serve the chain themselves
    (none when the site names one boot URL: a VIP or a DNS name already spans them)."""
    if site.netboot.boot_url:
        return ()
    port = urlsplit(base).port or site.netboot.http_port
    suffix = "" if port == 80 else f":{port}"
    urls = [f"http://{p.address}{suffix}" for p in site.peers]
    return tuple(u for u in dict.fromkeys(urls) if u != base)


def local_disk_script(host: str, note: str) -> str:
    """Boot the installed disk: `exit` hands control back to the firmware's next boot device,
    which works on BIOS and UEFI alike (sanboot needs the right drive number)."""
    return f"#!ipxe\n# {host}: {note}: boot from the local disk\nexit\n"


class _LazyInterfaces:
    """`interfaces`: every interface of the host as templates see one (subnet resolved),
    built only when a template asks (most use `interface` alone)."""

    def __init__(self, renderer: Renderer, entry: HostEntry) -> None:
        self._renderer, self._entry = renderer, entry
        self._views: list[dict[str, Any]] | None = None

    def _all(self) -> list[dict[str, Any]]:
        if self._views is None:
            r = self._renderer
            self._views = [interface_view(r.sot, self._entry, i, r._subnet_views)
                           for i in self._entry.host.interfaces]
        return self._views

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._all()[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class Renderer:
    """Renders hosts of one revision; holds the compiled templates for reuse across hosts."""

    def __init__(self, sot: Sot, revision: str,
                 boot_urls: dict[str, str] | None = None,
                 budget: RenderBudget = DEFAULT_BUDGET) -> None:
        """`boot_urls` overrides a site's base URL: a peer renders with its own address, so a
        machine that booted from it keeps talking to it (and to no dead peer). `budget`
        bounds each template render (time, output size)."""
        self.sot = sot
        self.budget = budget
        self.revision = {"sha": revision, "short": revision[:12]}
        self.env = make_environment(sot)
        self._cmdline_plans: dict[str, list[tuple[str, str | Any, int]]] = {}
        self._subnet_views: dict[tuple[str, str], dict[str, Any]] = {}
        self._interfaces: dict[str, dict[str, Any]] = {}
        self._boot_urls = {sid: site.boot_url() for sid, site in sot.sites.items()}
        self._boot_urls.update(boot_urls or {})
        self._fallback_urls = {sid: site_fallback_urls(site, self._boot_urls[sid])
                               for sid, site in sot.sites.items()}
        self._ipxe_parts: dict[str, tuple[str, str]] = {}  # per OS id
        # Templates that ran past their budget once fail at once for every other host: a
        # runaway template costs one budget per revision, not one per host.
        self._over_budget: dict[str, RenderError] = {}

    def context(self, entry: HostEntry, plan: StagePlan, token: dict[int, str] | str
                ) -> dict[str, Any]:
        site = self.sot.sites[entry.site]
        host = entry.host
        view = self._interfaces.get(host.name)
        if view is None:
            iface = host.boot_interface() or host.interfaces[0]
            view = interface_view(self.sot, entry, iface, self._subnet_views)
            self._interfaces[host.name] = view
        urls = Urls(self._boot_urls[entry.site], host.name, plan.index, token,
                    self._fallback_urls[entry.site])
        return {
            "site": site, "env": site, "host": host, "cluster": entry.cluster,
            "interface": view, "interfaces": _LazyInterfaces(self, entry),
            "boot": plan.boot, "os": plan.os, "workflow": plan.workflow,
            "stage": StageView(plan.index, len(plan.workflow.stages), plan.stage.label,
                               plan.boot.id if plan.boot else None, plan.stage.timeout,
                               plan.index == len(plan.workflow.stages)),
            "revision": self.revision, "urls": urls,
        }

    def render_stage(self, entry: HostEntry, index: int,
                     token: dict[int, str] | str = PLACEHOLDER_TOKEN
                     ) -> tuple[str, tuple[str, str] | None]:
        """The stage's iPXE script, and (type, text) of its unattended config or None.
        `token`: the phone-home tokens by stage (this one and the next), or one string used
        for both (validation, offline renders)."""
        if isinstance(token, str):
            token = {index: token, index + 1: token}
        plan = stage_plan(self.sot, entry, index)
        if plan.boot is None:
            count = len(plan.workflow.stages)
            return local_disk_script(entry.host.name,
                                     f"stage {plan.index}/{count} {plan.stage.label}"), None
        ctx = self.context(entry, plan, token)
        if plan.boot.ipxe:
            ipxe = self._render_template(f"ipxe/{plan.boot.ipxe}", ctx)
        else:
            ipxe = self._generated_ipxe(plan, ctx)
        if plan.boot.unattended is None:
            return ipxe, None
        key = f"{plan.boot.unattended.type}/{plan.boot.unattended.use}"
        return ipxe, (plan.boot.unattended.type, self._render_template(key, ctx))

    def render_config(self, entry: HostEntry, index: int, token: str = PLACEHOLDER_TOKEN
                      ) -> tuple[str, str] | None:
        """(type, text) of the unattended config for the stage, or None when it has none."""
        return self.render_stage(entry, index, token)[1]

    def render_ipxe(self, entry: HostEntry, index: int, token: str = PLACEHOLDER_TOKEN) -> str:
        """The iPXE script that boots the stage: a custom template, or the generated one."""
        return self.render_stage(entry, index, token)[0]

    def _render_template(self, key: str, ctx: dict[str, Any]) -> str:
        try:
            template = self.env.get_template(key)
        except TemplateNotFound as exc:
            asset = self.sot.assets.get(key)
            raise RenderError(asset.path if asset else f"assets/{key}", 0,
                              f"template {exc.name!r} does not exist") from None
        except TemplateSyntaxError as exc:
            raise RenderError(exc.filename or f"assets/{key}", exc.lineno or 0,
                              f"template syntax error: {exc.message}") from None
        known = self._over_budget.get(key)
        if known is not None:
            raise RenderError(known.file, known.line, known.message)
        try:
            with template_budget(self.budget):
                return bounded_join(template.generate(ctx))
        except BudgetExceeded as exc:
            error = _as_render_error(exc, f"assets/{key}")
            self._over_budget[key] = error
            raise error from None
        except Exception as exc:  # any template runtime failure belongs to the SoT author
            raise _as_render_error(exc, f"assets/{key}") from None

    def _generated_ipxe(self, plan: StagePlan, ctx: dict[str, Any]) -> str:
        """Kernel, initrds and the command line's URLs come from ${vq-base}, which the
        script sets to each of the site's peers in turn (`ipxe_try_peers`)."""
        urls: Urls = ctx["urls"]
        os_ = plan.os
        assert os_ is not None and plan.boot is not None
        parts = self._ipxe_parts.get(os_.id)
        if parts is None:
            any_peer = Urls(IPXE_BASE, "", 0, "")
            # UEFI kernels loaded by iPXE find their initramfs only through initrd=<name>.
            initrd_args = " ".join(f"initrd={a.filename}" for a in os_.boot.initrd)
            kernel = (f"kernel --name {os_.boot.kernel.filename} "
                      f"{any_peer.artifact(os_.boot.kernel)}")
            initrds = "".join(f"initrd --name {a.filename} {any_peer.artifact(a)} "
                              "|| goto ${vq-next}\n" for a in os_.boot.initrd)
            parts = self._ipxe_parts[os_.id] = (f"{kernel} {initrd_args}".rstrip(), initrds)
        # ${vq-base} is whichever peer this attempt uses; `urls.peers` lists it, then all
        peer_urls = dataclasses.replace(urls, base=IPXE_BASE, fallbacks=urls.peers)
        kernel_line = " ".join([parts[0], *self._cmdline(plan, {**ctx, "urls": peer_urls})])
        # Tell the peers it has everything, so the leader can tell a machine on its way from
        # one that went silent after its script (a failed mark changes nothing).
        mark = f"imgfetch --name vq-loaded {peer_urls.loaded} && imgfree vq-loaded ||\n"
        attempt = (f"imgfree\n{kernel_line} || goto ${{vq-next}}\n{parts[1]}{mark}"
                   "boot || goto ${vq-next}\n")
        return (f"#!ipxe\n# {ctx['host'].name}: stage {plan.index}/{len(plan.workflow.stages)} "
                f"{plan.stage.label}, boot {plan.boot.id}, revision {self.revision['short']}\n"
                + ipxe_try_peers(urls.peers, attempt))

    def _cmdline(self, plan: StagePlan, ctx: dict[str, Any]) -> list[str]:
        """Vaquero's rules: '' -> bare key; value -> key=value; list -> the key once per item.
        The static parts are worked out once per OS; only templated values render per host."""
        assert plan.os is not None
        items = self._cmdline_plans.get(plan.os.id)
        if items is None:
            items = self._cmdline_plans[plan.os.id] = self._plan_cmdline(plan.os)
        os_file = self.sot.at[("os", plan.os.id)].file
        out: list[str] = []
        for key, value, line in items:
            if isinstance(value, str):
                out.append(value)
                continue
            try:
                with template_budget(self.budget):
                    text = bounded_join(value.generate(ctx))
            except Exception as exc:
                raise RenderError(os_file, line, f"cmdline: {_exception_text(exc)}") from None
            out.append(f"{key}={_quote_cmdline_value(text)}")
        return out

    def _plan_cmdline(self, os_: OperatingSystem) -> list[tuple[str, str | Any, int]]:
        at = self.sot.at[("os", os_.id)]
        items: list[tuple[str, str | Any, int]] = []
        for i, entry in enumerate(os_.cmdline):
            (key, value), = entry.items()
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, dict | list):
                    continue  # Vaquero ignores nested structures in a list
                if v is None or v == "":
                    items.append((key, key, 0))
                    continue
                text = str(v).lower() if isinstance(v, bool) else str(v)
                if "{" not in text:
                    items.append((key, f"{key}={_quote_cmdline_value(text)}", 0))
                    continue
                line = at.line("cmdline", i)
                try:
                    items.append((key, self.env.from_string(text), line))
                except TemplateSyntaxError as exc:
                    raise RenderError(at.file, line,
                                      f"cmdline template error: {exc.message}") from None
        return items


_SPACE = re.compile(r"\s")


def _quote_cmdline_value(value: str) -> str:
    return f'"{value}"' if _SPACE.search(value) else value


def _exception_text(exc: BaseException) -> str:
    if isinstance(exc, TemplateNotFound):
        return f"includes {exc.name!r}, which does not exist under assets/"
    if isinstance(exc, TemplateSyntaxError):
        return f"template syntax error: {exc.message}"
    text = str(exc) or type(exc).__name__
    missing = re.match(r"^'(\w+) object' has no attribute '([^']+)'$", text)
    if missing:
        return f"undefined variable: {missing.group(2)!r} does not exist here"
    if "is undefined" in text or "has no attribute" in text:
        return f"undefined variable: {text}"
    if "StrictUndefined" in text:
        return "a variable used here is undefined (check the names used on this line)"
    return text


def _as_render_error(exc: BaseException, default_file: str) -> RenderError:
    """Find the template frame in the traceback: Jinja maps it to the template's file:line."""
    file, line = default_file, 0
    tb = exc.__traceback__ if exc.__traceback__ is not None else sys.exc_info()[2]
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.startswith("assets/"):
            file, line = name, tb.tb_lineno
        tb = tb.tb_next
    return RenderError(file, line, _exception_text(exc))
