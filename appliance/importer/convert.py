"""Convert an original Vaquero SoT (Go, 2016-2017) into this project's format.

What maps one to one is written; what needs a person (artifact checksums, fuze YAML to
convert, ssh or container BMCs, `min_standing`'s different meaning, keys neither model has,
data the original accepted but that is wrong) becomes a Todo with the original's file:line.
BMC passwords never reach the new SoT: they go to a secrets stub outside it, and the SoT
names them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..sot.tree import DirectoryTree
from ..sot.yamlsrc import Document, YamlError, load_documents
from .gotemplate import GoTemplateError, parse
from .todo import Todo
from .translate import Translator

ASSET_TYPES = ("cloud-config", "ignition", "kickstart", "preseed", "untyped", "ipxe")
_ENV_KEYS = {"id", "name", "subnets", "agents", "metadata", "policy", "release_tag", "agent"}
_SUBNET_KEYS = {"id", "cidr", "dns", "ntp", "gateway", "domain", "domain_name", "vlan",
                "dhcp_options", "metadata"}
_HOST_KEYS = {"name", "interfaces", "metadata", "workflow", "never_provision"}
_IFACE_KEYS = {"type", "mac", "subnet", "bmc", "identifier", "ignore_dhcp", "ipv4", "ipv6",
               "hostname"}
_OS_KEYS = {"id", "name", "major_version", "minor_version", "os_family", "release_name", "boot",
            "cmdline"}
_BOOT_KEYS = {"id", "name", "operating_system", "unattended", "metadata", "validate",
              "before_shutdown"}
_WORKFLOW_KEYS = {"id", "workflow", "deps", "name"}
_CURL_SELF = re.compile(r"curl\b[^|;&]*?http://\{\{\s*\.interface\.ipv4\s*\}\}:(\d+)"
                        r"(/[^\s\"'|;&]*)?")
_NC_SELF = re.compile(r"\bnc(?=[^|;&]*\s-\w*z)\s[^|;&]*?\{\{\s*\.interface\.ipv4\s*\}\}"
                      r"\s+(\d+)\b")  # `nc -z` of the host: a tcp connect
_DEPS_KEYS = {"max_concurrent", "min_standing", "block_deps", "validate_on", "max_fail"}
_CURL_METHOD = re.compile(r"(?:\s-X\s*|\s--request[\s=])([A-Za-z]+)")
_CURL_DATA = re.compile(r"\s(?:-d|--data(?:-\w+)?)[\s=]")
_SHELL = re.compile(r"[|;&<>`$]")
# commands whose only effect is inside their own container (a log line, a listing)
_INERT = {"echo", "/bin/echo", "ls", "/bin/ls", "true", "/bin/true", ":"}


@dataclass
class Answers:
    """A person's decisions: checksums, files written over the import, decided TODO ids."""

    sha256: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    decided: set[str] = field(default_factory=set)
    patch: list[dict[str, str]] = field(default_factory=list)  # {file, old, new} edits

    @classmethod
    def load(cls, path: Path) -> Answers:
        data = yaml.safe_load(path.read_text()) or {}
        return cls({str(k): str(v) for k, v in (data.get("sha256") or {}).items()},
                   {str(k): str(v) for k, v in (data.get("files") or {}).items()},
                   {str(x) for x in data.get("decided") or []},
                   [{k: str(v) for k, v in e.items()} for e in data.get("patch") or []])


@dataclass
class Result:
    files: dict[str, str]  # path in DST -> text
    secrets: dict[str, dict[str, str]]  # credentials name -> {user, password}
    todos: list[Todo]
    notes: list[Todo] = field(default_factory=list)  # left out with nothing to decide


class Converter:
    def __init__(self, src: Path, sha256_dir: Path | None = None,
                 answers: Answers | None = None) -> None:
        self.src = src
        self.tree = DirectoryTree(src)
        self.sha256_dir = sha256_dir
        self.answers = answers or Answers()
        self.files: dict[str, str] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.todos: list[Todo] = []
        self.notes: list[Todo] = []
        self.agent_url = "http://agent.invalid"
        self.os_docs: dict[str, dict[str, Any]] = {}
        self.boot_health: dict[str, dict[str, Any]] = {}
        self.boot_hooks: dict[str, list[dict[str, Any]]] = {}
        self.subnets_by_env: dict[str, tuple[str, dict[str, tuple[int, dict]], set[str]]] = {}
        self.used_subnets: dict[str, set[str]] = {}

    def todo(self, source: str, kind: str, target: str, message: str) -> None:
        self.todos.append(Todo(source, kind, target, message))

    # --- reading ------------------------------------------------------------------------

    def _docs(self, path: str) -> list[Document]:
        try:
            return [d for d in load_documents(self.tree.read(path)) if d.data is not None]
        except YamlError as exc:
            self.todo(f"{path}:{exc.line}", "data", path, f"not readable YAML: {exc.message}")
            return []

    def _unknown(self, path: str, doc: Document, data: dict, known: set[str],
                 where: tuple = (), what: str = "") -> None:
        for key in data:
            if key not in known:
                line = doc.line_of((*where, key))
                self.todo(f"{path}:{line}", "unknown-key", path,
                          f"{what or 'this document'} has key {key!r}, which neither the "
                          "original's data model nor this one knows; it was left out")

    # --- the whole tree -----------------------------------------------------------------

    def run(self) -> Result:
        paths = sorted(self.tree.files())
        for path in paths:
            if path.startswith("sites/") and path.endswith("/env.yml"):
                self._env(path)
        for path in paths:
            parts = path.split("/")
            if any(p.startswith(".") for p in parts) or (len(parts) == 1 and
                                                         path.lower().startswith("readme")):
                continue
            if parts[0] == "sites" and len(parts) == 3 and parts[2] != "env.yml":
                self._cluster(path, parts[1], parts[2])
            elif parts[0] == "os" and len(parts) == 2:
                self._os(path)
        for path in paths:
            parts = path.split("/")
            if parts[0] == "boot" and len(parts) == 2:
                self._boot(path)
            elif parts[0] == "workflows" and len(parts) == 2:
                self._workflow(path)
            elif parts[0] == "assets" and len(parts) >= 3:
                self._asset(path, parts)
            elif parts[0] not in ("sites", "os") and not any(p.startswith(".") for p in parts) \
                    and not (len(parts) == 1 and path.lower().startswith("readme")):
                self.todo(f"{path}:1", "unknown-file", path, "not part of the original's SoT "
                          "format either; not imported")
        self._check_printed_subnet_fields()
        for path, text in self.answers.files.items():
            self.files[path] = text
        for edit in self.answers.patch:
            text = self.files.get(edit["file"], "")
            if edit["old"] not in text:
                self.todo("", "answers", edit["file"], f"the answers' patch target "
                          f"{edit['old']!r} is not in the import")
                continue
            self.files[edit["file"]] = text.replace(edit["old"], edit["new"], 1)
        return Result(self.files, self.secrets, self.todos, self.notes)

    def _check_printed_subnet_fields(self) -> None:
        """Go printed a subnet's unset vlan as its default and an unset gateway as empty;
        Jinja prints `None`. Where a template prints one, every subnet a host uses needs it."""
        printed = {f for f in ("vlan", "gateway") if any(
            f"subnet.{f}" in text for path, text in self.files.items()
            if path.startswith("assets/"))}
        if not printed:
            return
        for path, (site, subnets, used) in sorted(self.subnets_by_env.items()):
            for sid, (line, subnet) in sorted(subnets.items()):
                for f in sorted(printed):
                    if sid in used and subnet.get(f) in (None, ""):
                        self.todo(f"{path}:{line}", "data", f"sites/{site}/env.yml",
                                  f"templates print subnet.{f}, and subnet {sid!r} sets none: "
                                  "the original printed its default (vlan 1, gateway empty), "
                                  f"this import would print `None`: set `{f}` on the subnet")

    # --- env ----------------------------------------------------------------------------

    # long: env.yml's keys in the original's order, each converted or noted where it is met.
    def _env(self, path: str) -> None:
        docs = self._docs(path)
        if not docs:
            return
        doc = docs[0]
        data: dict = doc.data
        self._unknown(path, doc, data, _ENV_KEYS, what="env")
        site_dir = path.split("/")[1]
        out: dict[str, Any] = {"id": site_dir}
        if data.get("id") != site_dir:
            self.todo(f"{path}:{doc.line_of(('id',))}", "data", path,
                      f"env id {data.get('id')!r} differs from its folder {site_dir!r}; the "
                      "import uses the folder name")
        if data.get("name"):
            out["name"] = str(data["name"])
        subnets = []
        known: dict[str, tuple[int, dict]] = {}
        self.subnets_by_env[path] = (site_dir, known, self.used_subnets.setdefault(site_dir,
                                                                                  set()))
        for i, sn in enumerate(data.get("subnets") or []):
            known[str(sn.get("id"))] = (doc.line_of(("subnets", i)), sn)
            self._unknown(path, doc, sn, _SUBNET_KEYS, ("subnets", i), f"subnet {sn.get('id')!r}")
            new = {k: sn[k] for k in ("id", "cidr", "gateway", "dns", "ntp", "vlan",
                                      "dhcp_options", "metadata") if sn.get(k) not in (None, [])}
            domain = sn.get("domain") or sn.get("domain_name")
            if domain:
                new["domain"] = domain
            subnets.append(new)
        out["subnets"] = subnets
        agents = data.get("agents") or []
        if agents:
            agent = agents[0]
            server = agent.get("asset_server") or {}
            scheme = server.get("scheme", "http")
            addr = server.get("addr", "127.0.0.1")
            port = server.get("port")
            self.agent_url = f"{scheme}://{addr}" + (f":{port}" if port else "")
            if agent.get("dhcp_mode") in ("server", "proxy"):
                out["netboot"] = {"dhcp_mode": agent["dhcp_mode"]}
            self.todo(f"{path}:{doc.line_of(('agents',))}", "peers", path,
                      f"the original's agent {agent.get('name')!r} served {self.agent_url}; "
                      "name this site's peers (1, 3 or 5 appliances: `peers:` with name and "
                      "address) and `netboot.boot_url`. Artifact URLs below point at the old "
                      "agent's files: check the peers can fetch them")
        policy = data.get("policy") or {}
        if policy:
            for key in policy:
                line = doc.line_of(("policy", key))
                if key == "force_provision" and isinstance(policy[key], bool):
                    out["policy"] = {"force_provision": policy[key]}
                elif key == "force_provision":
                    self.todo(f"{path}:{line}", "policy", path,
                              f"policy.force_provision is {policy[key]!r}, not true or false; "
                              "left out (hosts are reinstalled only when what they install "
                              "changes)")
                else:
                    self.todo(f"{path}:{line}", "unknown-key", path,
                              f"policy.{key} is not known; left out")
        if data.get("metadata"):
            out["metadata"] = data["metadata"]
        self.files[f"sites/{site_dir}/env.yml"] = _dump(out)

    # --- hosts --------------------------------------------------------------------------

    def _cluster(self, path: str, site: str, filename: str) -> None:
        stem = filename.rsplit(".", 1)[0].removeprefix("cluster-")
        target = f"sites/{site}/cluster-{stem}.yml"
        hosts = []
        for doc in self._docs(path):
            data = doc.data
            if not isinstance(data, dict):
                continue
            if "config" in data and "name" not in data:
                self.todo(f"{path}:{doc.line}", "advanced-sot", target, "a `config` section "
                          "(advanced SoT: configuration from another repository) is not "
                          "imported; import that repository and merge it here")
                continue
            hosts.append(self._host(path, doc, data, site, target))
        self.files[target] = "".join(("---\n" if i else "") + _dump(h)
                                     for i, h in enumerate(hosts))

    def _host(self, path: str, doc: Document, data: dict, site: str, target: str) -> dict:
        name = str(data.get("name"))
        self._unknown(path, doc, data, _HOST_KEYS, what=f"host {name!r}")
        host: dict[str, Any] = {"name": name, "workflow": data.get("workflow")}
        if data.get("never_provision") in (True, "true", "yes"):
            host["never_provision"] = True
        interfaces = []
        identifiers: dict[str, int] = {}
        for i, iface in enumerate(data.get("interfaces") or []):
            self._unknown(path, doc, iface, _IFACE_KEYS, ("interfaces", i),
                          f"host {name!r} interface {i}")
            self.used_subnets.setdefault(site, set()).add(str(iface.get("subnet")))
            ident = iface.get("identifier")
            if ident is not None and ident in identifiers:
                self.todo(f"{path}:{doc.line_of(('interfaces', i, 'identifier'))}", "data",
                          target, f"host {name!r}: interfaces {identifiers[ident]} and {i} are "
                          f"both {ident!r}; an identifier names one interface")
            elif ident is not None:
                identifiers[ident] = i
            new: dict[str, Any] = {k: iface[k] for k in ("type", "mac", "subnet", "ipv4",
                                                          "hostname", "identifier", "ignore_dhcp")
                                   if iface.get(k) is not None}
            if "mac" in new:
                new["mac"] = _mac(new["mac"])
            if "ipv6" in iface:
                self.todo(f"{path}:{doc.line_of(('interfaces', i, 'ipv6'))}", "unknown-key",
                          target, f"host {name!r}: ipv6 addresses are not served here; left out")
            bmc = iface.get("bmc")
            if isinstance(bmc, dict):
                mapped = self._bmc(path, doc, (i,), bmc, name, site, target,
                                   iface.get("type") == "bmc")
                if mapped is not None:
                    new["bmc"] = mapped
                elif new.get("type") == "bmc":
                    new["type"] = "physical"
                    new["ignore_dhcp"] = True
            interfaces.append(new)
        host["interfaces"] = interfaces
        if data.get("metadata"):
            host["metadata"] = data["metadata"]
        return host

    def _bmc(self, path: str, doc: Document, at: tuple, bmc: dict, host: str, site: str,
             target: str, on_bmc_interface: bool) -> dict | None:
        line = doc.line_of(("interfaces", *at, "bmc"))
        kind = str(bmc.get("type", "")).lower()
        if kind == "ipmi" and on_bmc_interface:
            name = f"{site}-{host}-ipmi"
            self.secrets[name] = {"user": str(bmc.get("username", "")),
                                  "password": str(bmc.get("password", ""))}
            self.todo(f"{path}:{line}", "secrets", target,
                      f"host {host!r}: the IPMI user and password were in the original SoT in "
                      f"clear text; they are in the secrets stub now as {name!r}: install it "
                      "as each peer's bmc.secrets_file, and change the password (it was in "
                      "git)")
            if bmc.get("soft_reboot"):
                self.todo(f"{path}:{line}", "bmc", target, f"host {host!r}: soft_reboot is not "
                          "supported; the BMC is power-cycled")
            return {"type": "ipmi", "credentials": name}
        if kind == "ssh":
            self.todo(f"{path}:{line}", "bmc", target,
                      f"host {host!r}: an ssh \"BMC\" (reboot over ssh as {bmc.get('username')!r} "
                      "with a key) cannot power a machine that is off or hung; it is not "
                      "imported. Give the host a real BMC (ipmi or redfish) or leave it "
                      "without one (installs then start when someone reboots it)")
            return None
        if kind == "custom":
            self.todo(f"{path}:{line}", "bmc", target,
                      f"host {host!r}: a custom container BMC cannot be run here; give the host "
                      "an ipmi or redfish BMC (its address, and credentials by name)")
            return None
        self.todo(f"{path}:{line}", "bmc", target, f"host {host!r}: BMC type {kind!r} on "
                  f"{'a bmc' if on_bmc_interface else 'a physical'} interface is not imported")
        return None

    # --- os -----------------------------------------------------------------------------

    def _os(self, path: str) -> None:
        docs = self._docs(path)
        out_docs = []
        for doc in docs:
            data = doc.data
            self._unknown(path, doc, data, _OS_KEYS, what=f"os {data.get('id')!r}")
            os_: dict[str, Any] = {k: str(data[k]) for k in
                                   ("id", "name", "os_family", "major_version", "minor_version",
                                    "release_name") if data.get(k) is not None}
            self.os_docs[os_["id"]] = os_
            boot = data.get("boot") or {}
            kernel = self._artifact(path, doc, ("boot", "kernel"), boot.get("kernel"), os_)
            initrds = [self._artifact(path, doc, ("boot", "initrd", i), url, os_)
                       for i, url in enumerate(boot.get("initrd") or [])]
            os_["boot"] = {"kernel": kernel, "initrd": initrds}
            cmdline = []
            for i, entry in enumerate(data.get("cmdline") or []):
                if not isinstance(entry, dict):
                    continue
                for key, value in entry.items():
                    if key == "initrd":
                        continue  # generated: every initrd is named on the command line
                    cmdline.append({key: self._cmdline_value(path, doc.line_of(("cmdline", i)),
                                                             value)})
            if cmdline:
                os_["cmdline"] = cmdline
            out_docs.append(os_)
        self.files[path] = "---\n".join(_dump(d) for d in out_docs)

    def _cmdline_value(self, path: str, line: int, value: Any) -> Any:
        if value is None or value == "":
            return ""
        if isinstance(value, list):
            return [self._cmdline_value(path, line, v) for v in value if not isinstance(v, dict)]
        text = str(value)
        if "{{" not in text:
            return text
        return self._translate_inline(path, line, text)

    def _translate_inline(self, path: str, line: int, text: str) -> str:
        try:
            parsed = parse(text)
        except GoTemplateError as exc:
            self.todo(f"{path}:{line}", "template", path, f"does not parse as a Go template: "
                      f"{exc.message}")
            return text
        translator = Translator()
        result = translator.translate(parsed)
        for issue in translator.issues:
            self.todo(f"{path}:{line}", issue.kind, path, issue.message)
        return result.text

    def _artifact(self, path: str, doc: Document, at: tuple, url: Any, os_: dict) -> dict:
        line = doc.line_of(at)
        text = str(url or "")
        if "{{" in text:
            jinja = self._translate_inline(path, line, text)
            env = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
            try:
                text = env.from_string(jinja).render(urls={"base": self.agent_url}, os=os_)
            except (TemplateError, TypeError, ValueError) as exc:  # a field the import lacks
                self.todo(f"{path}:{line}", "template", path,
                          f"artifact URL {url!r} cannot be worked out: {exc}")
        artifact: dict[str, Any] = {"url": text}
        filename = text.rstrip("/").rsplit("/", 1)[-1]
        digest = self.answers.sha256.get(filename) or self._sha256_of(filename)
        if digest:
            artifact["sha256"] = digest
        else:
            self.todo(f"{path}:{line}", "sha256", path,
                      f"{filename} ({text}) needs its sha256: peers verify every artifact they "
                      "serve. Run `sha256sum` on the file, or import with --sha256-from DIR")
        return artifact

    def _sha256_of(self, filename: str) -> str | None:
        if self.sha256_dir is None:
            return None
        candidate = self.sha256_dir / filename
        if not candidate.is_file():
            return None
        h = hashlib.sha256()
        with candidate.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    # --- boot and workflows -------------------------------------------------------------

    def _boot(self, path: str) -> None:
        out_docs = []
        for doc in self._docs(path):
            data = doc.data
            self._unknown(path, doc, data, _BOOT_KEYS, what=f"boot {data.get('id')!r}")
            boot: dict[str, Any] = {k: data[k] for k in ("id", "name", "operating_system",
                                                          "unattended", "metadata")
                                    if data.get(k) is not None}
            health = self._health_probe(data.get("validate"))
            if health is not None:
                self.boot_health[str(data.get("id"))] = health
                if health["type"] == "http":
                    self.todo(f"{path}:{doc.line_of(('validate',))}", "containers", path,
                              f"boot {data.get('id')!r}: `validate` curls the host on port "
                              f"{health['port']}; imported as the health check of the stages "
                              f"that boot it (an http probe of {health['path']} expecting "
                              "200). What the container checked in the body (grep) is not "
                              "checked: review it")
            if data.get("validate") and health is None:
                self.todo(f"{path}:{doc.line_of(('validate',))}", "containers", path,
                          f"boot {data.get('id')!r}: `validate` runs containers; the closest "
                          "equivalent is a stage health check (`health` of the stage: an http "
                          "GET or a tcp connect to the host's address); only a single curl "
                          "or `nc -z` of the host maps to one. Containers are not run: left "
                          "out")
            if data.get("before_shutdown"):
                self._before_shutdown(path, doc, str(data.get("id")))
            if boot.get("unattended", {}).get("type") == "ignition":
                use = boot["unattended"].get("use")
                if not str(use).endswith((".ign", ".json")) and \
                        f"assets/ignition/{use}" not in self.answers.files:
                    self.todo(f"{path}:{doc.line_of(('unattended', 'use'))}", "fuze", path,
                              f"boot {data.get('id')!r} serves assets/ignition/{use}, a "
                              "Container Linux Config (fuze) YAML the original converted at "
                              "serve time; Ignition reads JSON: convert it (`ct`, or rewrite "
                              "as Butane and run `butane`) and keep the template's fields")
            out_docs.append(boot)
        self.files[path] = "---\n".join(_dump(d) for d in out_docs)

    @classmethod
    def _health_probe(cls, steps: Any) -> dict[str, Any] | None:
        """A `validate` container that only curls the host's own address maps to an http
        probe of the rollout; anything else has no equivalent."""
        if not isinstance(steps, list) or len(steps) != 1 or not isinstance(steps[0], dict):
            return None
        command = steps[0].get("command") or " ".join(map(str, steps[0].get("commands") or []))
        return cls._probe(str(command), int(steps[0].get("timeout") or 300))

    @staticmethod
    def _probe(command: str, timeout: int) -> dict[str, Any] | None:
        """A curl (http) or `nc -z` (tcp) of the host's own address, as a check."""
        m = _CURL_SELF.search(str(command))
        if m is not None:
            return {"type": "http", "port": int(m.group(1)), "path": m.group(2) or "/",
                    "timeout": timeout}
        m = _NC_SELF.search(str(command))
        if m is not None:
            return {"type": "tcp", "port": int(m.group(1)), "timeout": timeout}
        return None

    def _before_shutdown(self, path: str, doc: Document, boot: str) -> None:
        """The original ran these containers before rebooting a host out of the boot; here
        a stage's `before_shutdown` hooks are requests the leader makes to the host then.
        A curl or `nc -z` of the host's own address maps to one; a step with no effect
        outside its container, or an IPMI chassis status (the leader asks the BMC for it
        before every power action), is left out with a note; anything else needs a person."""
        steps = doc.data.get("before_shutdown")
        if not isinstance(steps, list):
            steps = [steps]
        hooks = []
        for i, step in enumerate(steps):
            where = f"{path}:{doc.line_of(('before_shutdown', i))}"
            step = step if isinstance(step, dict) else {}
            words = [str(step.get("command") or ""), *map(str, _listed(step.get("commands")))]
            command = " ".join(w for w in words if w)
            args = " ".join(map(str, _listed(step.get("args"))))
            hook = self._probe(f"{command} {args}", min(int(step.get("timeout") or 60), 3600))
            if hook is not None:
                if hook["type"] == "http":
                    m = _CURL_METHOD.search(f" {command}")
                    hook["method"] = (m.group(1).upper() if m else
                                      "POST" if _CURL_DATA.search(f" {command}") else "GET")
                hooks.append({"name": f"{boot}-{i + 1}"[:63], **hook})
                continue
            runs = [w.split()[0] for w in words if w.strip()]
            if runs and all(r in _INERT for r in runs) and not _SHELL.search(command):
                self.notes.append(Todo(where, "inert", path, f"boot {boot!r}: before_shutdown "
                                       f"step {i + 1} runs `{(command + ' ' + args).strip()}` "
                                       "in a container: no effect outside it; left out"))
            elif re.search(r"\bchassis\s+status\b", f"{command} {args}") and not re.search(
                    r"\bpower\b", f"{command} {args}"):
                self.notes.append(Todo(where, "covered", path, f"boot {boot!r}: "
                                       f"before_shutdown step {i + 1} asks the BMC for the "
                                       "chassis status; the leader asks every BMC for it "
                                       "before each power action; left out"))
                if re.search(r"(^|\s)-P\s", args):
                    self.todo(where, "secrets", path, f"boot {boot!r}: before_shutdown step "
                              f"{i + 1} has an IPMI password on its command line, in git in "
                              "clear text; it is not imported (the leader uses the host's own "
                              "BMC credentials by name): change that password")
            else:
                self.todo(where, "containers", path, f"boot {boot!r}: before_shutdown step "
                          f"{i + 1} runs a container; only a curl or `nc -z` of the host's "
                          "address maps to a `before_shutdown` hook of the stages booting it "
                          "(an http request or tcp connect the leader makes to the host "
                          "before powering it out of the stage). Containers are not run: "
                          "left out")
        if hooks:
            self.boot_hooks[boot] = hooks

    def _workflow(self, path: str) -> None:
        out_docs = []
        for doc in self._docs(path):
            data = doc.data
            self._unknown(path, doc, data, _WORKFLOW_KEYS, what=f"workflow {data.get('id')!r}")
            stages = []
            seen: dict[Any, int] = {}  # a step may name no boot: None counts too
            for step in data.get("workflow") or []:
                boot = step.get("boot") if isinstance(step, dict) else step
                stage: dict[str, Any] = {"boot": boot}
                seen[boot] = seen.get(boot, 0) + 1
                if seen[boot] > 1:
                    stage["name"] = f"{boot}-{seen[boot]}"
                stages.append(stage)
            wf: dict[str, Any] = {"id": data.get("id"), "stages": stages}
            deps = data.get("deps") or {}
            self._unknown(path, doc, deps, _DEPS_KEYS, ("deps",), "workflow deps")
            rollout: dict[str, Any] = {}
            if int(deps.get("max_concurrent") or 0) > 0:
                rollout["max_concurrent"] = int(deps["max_concurrent"])
            if deps.get("max_fail"):
                rollout["max_fail"] = int(deps["max_fail"])
            if deps.get("min_standing"):
                self.todo(f"{path}:{doc.line_of(('deps', 'min_standing'))}", "min-standing",
                          path, f"min_standing: {deps['min_standing']} meant \"hosts of this "
                          "workflow reprovisioned before dependent workflows start\"; here "
                          "rollout.min_standing is \"hosts that must stay up during a "
                          "rollout\", and dependents wait for the whole workflow. Not "
                          "imported: set rollout.min_standing if you want the new meaning")
            if deps.get("validate_on"):
                names = ", ".join(map(str, deps["validate_on"])) if isinstance(
                    deps["validate_on"], list) else str(deps["validate_on"])
                self.todo(f"{path}:{doc.line_of(('deps', 'validate_on'))}", "validate-on",
                          path, f"validate_on: [{names}] reran this workflow's `validate` "
                          "containers on its hosts whenever those workflows were "
                          "reprovisioned. Here a health check runs only while its own host is "
                          "provisioned (after that host's stage), never again on a host that "
                          "is done, so nothing re-checks these hosts when another workflow "
                          "rolls out; `depends_on` would order this workflow after those, "
                          "which is not the same. Not imported: check these hosts after those "
                          "rollouts (`vaq-peer rollout --follow`, then your own probe)")
            for stage in stages:
                if stage["boot"] in self.boot_health:
                    stage["health"] = dict(self.boot_health[stage["boot"]])
                if stage["boot"] in self.boot_hooks:
                    stage["before_shutdown"] = [dict(h) for h in self.boot_hooks[stage["boot"]]]
            if rollout:
                wf["rollout"] = rollout
            if deps.get("block_deps"):
                wf["depends_on"] = list(deps["block_deps"])
            out_docs.append(wf)
        self.files[path] = "---\n".join(_dump(d) for d in out_docs)

    # --- assets -------------------------------------------------------------------------

    def _asset(self, path: str, parts: list[str]) -> None:
        if parts[1] not in ASSET_TYPES:
            self.todo(f"{path}:1", "unknown-file", path, f"asset type {parts[1]!r} is unknown")
            return
        try:
            source = self.tree.read(path).decode()
        except UnicodeDecodeError:
            self.files_binary_todo(path)
            return
        try:
            parsed = parse(source)
        except GoTemplateError as exc:
            self.todo(f"{path}:{exc.line}", "template", path,
                      f"does not parse as a Go template: {exc.message}")
            return
        snippets = f"assets/{parts[1]}/snippets"
        for name, (_line, nodes) in parsed.defines.items():
            translator = Translator()
            result = translator.translate(nodes)
            self.files[f"{snippets}/{name}"] = result.text
            for issue in translator.issues:
                self.todo(f"{path}:{issue.line}", issue.kind, f"{snippets}/{name}",
                          issue.message)
        if len(parts) >= 4 and parts[2] == "snippets":
            return  # a snippet file: what Go uses of it is its defines
        translator = Translator()
        result = translator.translate(parsed)
        self.files[path] = result.text
        for issue in translator.issues:
            self.todo(f"{path}:{issue.line}", issue.kind, path, issue.message)

    def files_binary_todo(self, path: str) -> None:
        self.todo(f"{path}:1", "data", path, "not UTF-8 text; not imported")


def _listed(value: Any) -> list:
    """A YAML list as a list; one scalar as a list of it (never split into characters)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _mac(value: Any) -> str:
    if isinstance(value, int):  # YAML 1.1 sexagesimal: the original's unquoted MAC
        raise ValueError("unquoted MAC read as a number")
    return str(value).lower()


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)
