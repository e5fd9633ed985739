"""Render what a host receives at each stage: its iPXE script and its unattended config.

Rendering is a pure function of (revision, host, stage, phone-home token): the same inputs
give the same bytes on every peer, so results can be cached by SHA. Templates run in Jinja2's
immutable sandbox with StrictUndefined: a SoT author cannot reach Python internals, and a typo
in a variable name is an error at validation time instead of an empty string on a machine.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .loader import HostEntry, Sot
from .models import ASSET_TYPES, Artifact, Boot, Interface, OperatingSystem, Stage, Workflow

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
    def join_path(self, template: str, parent: str) -> str:
        """`{% include "snippets/x" %}` resolves inside the including template's asset type."""
        head = template.split("/", 1)[0]
        if head in ASSET_TYPES:
            return template
        return f"{parent.split('/', 1)[0]}/{template}"


def make_environment(sot: Sot) -> ImmutableSandboxedEnvironment:
    env = _Environment(
        loader=_AssetLoader(sot),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=-1,
    )
    env.filters["cmdline_quote"] = _quote_cmdline_value
    return env


@dataclass(frozen=True)
class Urls:
    """Every URL a host uses, all under the site's boot URL (any peer answers them)."""

    base: str
    host: str
    stage: int
    token: str

    @property
    def ipxe(self) -> str:
        return f"{self.base}/boot/{self.host}/{self.stage}/script.ipxe"

    @property
    def config(self) -> str:
        return f"{self.base}/boot/{self.host}/{self.stage}/config"

    @property
    def phone_home(self) -> str:
        return f"{self.base}/phone-home/{self.host}/{self.stage}/{self.token}"

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


def interface_view(sot: Sot, entry: HostEntry, iface: Interface) -> dict[str, Any]:
    """The interface as templates see it: Vaquero replaced the subnet id with the subnet."""
    site = sot.sites[entry.site]
    subnet = site.subnet(iface.subnet)
    view: dict[str, Any] = {
        "type": iface.type, "mac": iface.mac, "ipv4": str(iface.ipv4),
        "hostname": iface.hostname or entry.host.name, "subnet": subnet,
    }
    if subnet is not None:
        net = IPv4Interface(f"{iface.ipv4}/{subnet.cidr.prefixlen}")
        view.update(prefix=subnet.cidr.prefixlen, netmask=str(net.netmask),
                    cidr=net.with_prefixlen, gateway=str(subnet.gateway or ""),
                    dns=[str(d) for d in subnet.dns], domain=subnet.domain or "")
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


def local_disk_script(host: str, note: str) -> str:
    """Boot the installed disk: `exit` hands control back to the firmware's next boot device,
    which works on BIOS and UEFI alike (sanboot needs the right drive number)."""
    return f"#!ipxe\n# {host}: {note}: boot from the local disk\nexit\n"


class Renderer:
    """Renders hosts of one revision; holds the compiled templates for reuse across hosts."""

    def __init__(self, sot: Sot, revision: str) -> None:
        self.sot = sot
        self.revision = {"sha": revision, "short": revision[:12]}
        self.env = make_environment(sot)
        self._cmdline_templates: dict[tuple[str, int], Any] = {}

    def context(self, entry: HostEntry, plan: StagePlan, token: str) -> dict[str, Any]:
        site = self.sot.sites[entry.site]
        host = entry.host
        iface = host.boot_interface() or host.interfaces[0]
        urls = Urls(site.boot_url(), host.name, plan.index, token)
        return {
            "site": site, "env": site, "host": host, "cluster": entry.cluster,
            "interface": interface_view(self.sot, entry, iface),
            "boot": plan.boot, "os": plan.os, "workflow": plan.workflow,
            "stage": StageView(plan.index, len(plan.workflow.stages), plan.stage.label,
                               plan.boot.id if plan.boot else None, plan.stage.timeout,
                               plan.index == len(plan.workflow.stages)),
            "revision": self.revision, "urls": urls,
        }

    def render_config(self, entry: HostEntry, index: int, token: str = PLACEHOLDER_TOKEN
                      ) -> tuple[str, str] | None:
        """(type, text) of the unattended config for the stage, or None when it has none."""
        plan = stage_plan(self.sot, entry, index)
        if plan.boot is None or plan.boot.unattended is None:
            return None
        key = f"{plan.boot.unattended.type}/{plan.boot.unattended.use}"
        text = self._render_template(key, self.context(entry, plan, token))
        return plan.boot.unattended.type, text

    def render_ipxe(self, entry: HostEntry, index: int, token: str = PLACEHOLDER_TOKEN) -> str:
        """The iPXE script that boots the stage: a custom template, or the generated one."""
        plan = stage_plan(self.sot, entry, index)
        if plan.boot is None:
            count = len(plan.workflow.stages)
            return local_disk_script(entry.host.name,
                                     f"stage {plan.index}/{count} {plan.stage.label}")
        ctx = self.context(entry, plan, token)
        if plan.boot.ipxe:
            return self._render_template(f"ipxe/{plan.boot.ipxe}", ctx)
        return self._generated_ipxe(plan, ctx)

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
        try:
            return template.render(ctx)
        except Exception as exc:  # any template runtime failure belongs to the SoT author
            raise _as_render_error(exc, f"assets/{key}") from None

    def _generated_ipxe(self, plan: StagePlan, ctx: dict[str, Any]) -> str:
        urls: Urls = ctx["urls"]
        os_ = plan.os
        assert os_ is not None and plan.boot is not None
        args = self._cmdline(plan, ctx)
        # UEFI kernels loaded by iPXE find their initramfs only through initrd=<name>.
        initrd_args = [f"initrd={a.filename}" for a in os_.boot.initrd]
        lines = [
            "#!ipxe",
            f"# {ctx['host'].name}: stage {plan.index}/{len(plan.workflow.stages)} "
            f"{plan.stage.label}, boot {plan.boot.id}, revision {self.revision['short']}",
            f"kernel --name {os_.boot.kernel.filename} {urls.artifact(os_.boot.kernel)} "
            + " ".join([*initrd_args, *args]),
        ]
        lines += [f"initrd --name {a.filename} {urls.artifact(a)}" for a in os_.boot.initrd]
        lines.append("boot")
        return "\n".join(line.rstrip() for line in lines) + "\n"

    def _cmdline(self, plan: StagePlan, ctx: dict[str, Any]) -> list[str]:
        """Vaquero's rules: '' -> bare key; value -> key=value; list -> the key once per item."""
        assert plan.os is not None
        out: list[str] = []
        os_file = self.sot.at[("os", plan.os.id)].file
        for i, entry in enumerate(plan.os.cmdline):
            (key, value), = entry.items()
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, dict | list):
                    continue  # Vaquero ignores nested structures in a list
                if v is None or v == "":
                    out.append(key)
                    continue
                text = str(v).lower() if isinstance(v, bool) else str(v)
                if "{" in text:
                    text = self._render_cmdline_value(plan.os, i, text, ctx, os_file)
                out.append(f"{key}={_quote_cmdline_value(text)}")
        return out

    def _render_cmdline_value(self, os_: OperatingSystem, i: int, text: str,
                              ctx: dict[str, Any], os_file: str) -> str:
        key = (os_.id, hash(text))
        template = self._cmdline_templates.get(key)
        line = self.sot.at[("os", os_.id)].line("cmdline", i)
        if template is None:
            try:
                template = self.env.from_string(text)
            except TemplateSyntaxError as exc:
                raise RenderError(os_file, line, f"cmdline template error: {exc.message}") from None
            self._cmdline_templates[key] = template
        try:
            return template.render(ctx)
        except Exception as exc:
            raise RenderError(os_file, line, f"cmdline: {_exception_text(exc)}") from None


def _quote_cmdline_value(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value


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
