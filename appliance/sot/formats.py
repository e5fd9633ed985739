"""Is a rendered file valid for its kind? Checked for every host at validation time.

A template that renders is not enough: a cloud-config without its header is silently ignored
by cloud-init, an Ignition config without a spec version is refused at first boot, a kickstart
with an unknown command stops Anaconda at a console nobody watches. Catch them before a push
reaches a machine. Each check returns its problems as (output line, message), using the
format's own validator where one exists: `ignition-validate` (Debian package `ignition`),
cloud-init's JSON schema (package `cloud-init`), pykickstart.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import yaml

try:
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

Check = Callable[[str, str, str], "list[tuple[int, str]] | tuple[int, str] | None"]

_IGNITION_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(-experimental)?$")
_IGNITION_KEYS = {
    2: {"ignition", "storage", "systemd", "networkd", "passwd"},
    3: {"ignition", "storage", "systemd", "passwd", "kernelArguments"},
}
_PRESEED_TYPES = {"string", "boolean", "select", "multiselect", "note", "text", "password",
                  "error", "title"}


def _yaml_error(exc: yaml.YAMLError) -> tuple[int, str]:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return (mark.line + 1 if mark else 1), f"is not valid YAML: {problem}"


# cloud-init's own schema, as the Debian package `cloud-init` installs it (tools/install.sh).
CLOUD_CONFIG_SCHEMAS = (
    "/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json",
    "/usr/share/cloud-init/schema-cloud-config-v1.json",
)
# Families whose cloud-config is read by coreos-cloudinit, a different program with its own
# dialect (`coreos:` units, etcd2, fleet): cloud-init's schema does not describe it.
COREOS_CLOUDINIT_FAMILIES = {"coreos", "container-linux"}


@lru_cache(maxsize=1)
def _cloud_config_validator() -> Any:
    """cloud-init's JSON schema compiled once; None when it is not installed."""
    path = next((p for p in CLOUD_CONFIG_SCHEMAS if os.path.exists(p)), None)
    if path is None:
        return None
    import jsonschema

    with open(path, encoding="utf-8") as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _schema_error_line(text: str, path: tuple[Any, ...]) -> int:
    from .yamlsrc import YamlError, load_documents

    try:
        docs = load_documents(text)
    except YamlError:
        return 1
    return docs[0].line_of(path) if docs else 1


def check_cloud_config(text: str, os_family: str, os_major: str) -> list[tuple[int, str]]:
    first = text.split("\n", 1)[0].rstrip()
    if first != "#cloud-config":
        return [(1, "does not start with the line '#cloud-config'; cloud-init ignores user "
                    "data without it")]
    try:
        data = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        return [_yaml_error(exc)]
    if not isinstance(data, dict):
        return [(1, "is not a YAML mapping of cloud-config keys")]
    if os_family.lower() in COREOS_CLOUDINIT_FAMILIES:
        return []
    validator = _cloud_config_validator()
    if validator is None:
        return []
    out = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path)))[:20]:
        path = tuple(err.absolute_path)
        where = ".".join(str(p) for p in path) or "(top level)"
        out.append((_schema_error_line(text, path),
                    f"fails cloud-init's schema at {where}: {err.message}"))
    return out


_FUZE_KEYS = {"networkd", "systemd", "passwd", "storage", "etcd", "flannel", "locksmith",
              "update", "docker", "ignition", "variant", "version", "kernel_arguments"}


def _butane_hint(text: str) -> str | None:
    """Container Linux Config (fuze) / Butane YAML is not Ignition: it needs conversion."""
    try:
        data = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError:
        return None
    if isinstance(data, dict) and data and set(map(str, data)) <= _FUZE_KEYS:
        if "variant" in data:
            return ("is Butane YAML, not Ignition JSON: convert it with `butane` and serve "
                    "the JSON it prints")
        return ("is a Container Linux Config (fuze) YAML, not Ignition JSON: convert it with "
                "`ct` (or rewrite it as Butane and convert with `butane`)")
    return None


# Stable Ignition spec versions. One newer than the installed ignition-validate knows is
# checked as that release's experimental spec, the closest schema it has.
IGNITION_SPECS = ("3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0")
_VALIDATE_OUTPUT = re.compile(
    r"^(?P<level>error|warning) at (?:(?P<path>\$\S*), )?line (?P<line>\d+) col (?P<col>\d+): "
    r"(?P<msg>.*)$")


def _ignition_validate(text: str) -> tuple[int, list[str]]:
    try:
        proc = subprocess.run([_IGNITION_VALIDATE, "-"], input=text.encode(),
                              capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return 1, ["ignition-validate did not answer within 30 s"]
    lines = (proc.stdout + proc.stderr).decode(errors="replace").splitlines()
    return proc.returncode, [line.strip() for line in lines if line.strip()]


_IGNITION_VALIDATE = shutil.which("ignition-validate") or ""


def check_ignition(text: str, os_family: str, os_major: str) -> list[tuple[int, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = _butane_hint(text)
        if hint:
            return [(1, hint)]
        return [(exc.lineno, f"is not valid JSON: {exc.msg} (column {exc.colno})")]
    if not isinstance(data, dict):
        return [(1, "is not a JSON object")]
    ign = data.get("ignition")
    version = ign.get("version") if isinstance(ign, dict) else None
    if not isinstance(version, str):
        return [(1, "has no ignition.version: Ignition refuses a config without its spec "
                    "version")]
    match = _IGNITION_VERSION.match(version)
    if not match or int(match.group(1)) not in _IGNITION_KEYS:
        return [(1, f"ignition.version {version!r} is not a 2.x.y or 3.x.y spec version")]
    if int(match.group(1)) == 2 or not _IGNITION_VALIDATE:
        # Spec 2 is gone from current Ignition releases: only its top-level keys are known.
        unknown = set(data) - _IGNITION_KEYS[int(match.group(1))]
        if unknown:
            return [(1, f"has keys Ignition {match.group(1)}.x does not know: "
                        f"{', '.join(sorted(unknown))}")]
        return []
    code, lines = _ignition_validate(text)
    note = ""
    if code != 0 and any("unsupported config version" in line for line in lines) \
            and version in IGNITION_SPECS:
        experimental = f"{version}-experimental"
        code, lines = _ignition_validate(text.replace(f'"{version}"', f'"{experimental}"', 1))
        note = f" (spec {version} checked as {experimental}, the newest this validator knows)"
    out = []
    for line in lines:
        m = _VALIDATE_OUTPUT.match(line)
        if m:
            path = f" at {m['path']}" if m["path"] else ""
            out.append((int(m["line"]), f"fails ignition-validate: {m['level']}{path}: "
                                        f"{m['msg']}{note}"))
        elif code != 0:
            out.append((1, f"fails ignition-validate: {line}{note}"))
    if code != 0 and not out:
        out.append((1, f"fails ignition-validate (exit {code}){note}"))
    return out


@lru_cache(maxsize=16)
def _kickstart_version(os_family: str, os_major: str) -> int:
    from pykickstart.version import DEVEL, stringToVersion

    family = os_family.lower()
    names = []
    if family in {"rocky", "rhel", "centos", "almalinux", "alma", "oracle"}:
        names.append(f"RHEL{os_major}")
    elif family == "fedora":
        names.append(f"F{os_major}")
    for name in names:
        try:
            return stringToVersion(name)
        except Exception:  # unknown release: fall back to the newest syntax
            continue
    return DEVEL


class _KickstartChecker:
    """One pykickstart handler per syntax version, reset between hosts.

    Building a handler registers an argparse parser per command (~20 ms); resetting the
    state of the commands a parse touched costs ~1 ms, which is what makes checking the
    kickstart of every host of a large SoT affordable.
    """

    def __init__(self, version: int) -> None:
        from pykickstart.version import makeVersion

        self.handler = makeVersion(version)
        self.commands = {id(c): c for c in self.handler.commands.values() if c is not None}
        self.pristine = {
            key: {k: copy.deepcopy(v) for k, v in c.__dict__.items() if k not in ("op", "handler")}
            for key, c in self.commands.items()
        }

    def check(self, text: str) -> tuple[int, str] | None:
        from pykickstart.errors import KickstartError
        from pykickstart.parser import KickstartParser, Packages

        for key, command in self.commands.items():
            if command.__dict__.get("seen"):
                command.__dict__.update(copy.deepcopy(self.pristine[key]))
        self.handler.scripts = []
        self.handler.packages = Packages()
        parser = KickstartParser(self.handler, followIncludes=False, missingIncludeIsFatal=False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parser.readKickstartFromString(text)
        except KickstartError as exc:
            lineno = getattr(exc, "lineno", None) or 1
            message = (getattr(exc, "message", "") or str(exc)).strip()
            return lineno, f"is not a valid kickstart: {message}"
        except Exception as exc:  # pykickstart raises plain errors for some malformed input
            return 1, f"is not a valid kickstart: {exc}"
        return None


@lru_cache(maxsize=8)
def _kickstart_checker(version: int) -> _KickstartChecker:
    logging.getLogger("pykickstart").setLevel(logging.ERROR)
    return _KickstartChecker(version)


def check_kickstart(text: str, os_family: str, os_major: str) -> tuple[int, str] | None:
    return _kickstart_checker(_kickstart_version(os_family, os_major)).check(text)


def check_preseed(text: str, os_family: str, os_major: str) -> tuple[int, str] | None:
    buffer = io.StringIO(text)
    logical, start = "", 0
    for number, raw in enumerate(buffer, start=1):
        line = raw.rstrip("\n")
        if not logical:
            start = number
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        stripped = logical.strip()
        logical = ""
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 3)
        if len(fields) < 3:
            return start, ("is not a valid preseed: each line is 'owner question type value', "
                           f"got {stripped[:60]!r}")
        if fields[2] not in _PRESEED_TYPES:
            return start, (f"is not a valid preseed: {fields[2]!r} is not a debconf type "
                           f"({', '.join(sorted(_PRESEED_TYPES))})")
    return None


def check_ipxe(text: str, os_family: str, os_major: str) -> tuple[int, str] | None:
    if not text.startswith("#!ipxe"):
        return 1, "does not start with '#!ipxe'; iPXE will not run it as a script"
    return None


CHECKS: dict[str, Check] = {
    "cloud-config": check_cloud_config,
    "ignition": check_ignition,
    "kickstart": check_kickstart,
    "preseed": check_preseed,
    "ipxe": check_ipxe,
}


def check_rendered_all(kind: str, text: str, os_family: str = "", os_major: str = ""
                       ) -> list[tuple[int, str]]:
    """Every problem the kind's validator finds in a rendered file, as (line, message)."""
    check = CHECKS.get(kind)
    if check is None:
        return []
    found = check(text, os_family, os_major)
    if found is None:
        return []
    return found if isinstance(found, list) else [found]


def check_rendered(kind: str, text: str, os_family: str = "", os_major: str = ""
                   ) -> tuple[int, str] | None:
    found = check_rendered_all(kind, text, os_family, os_major)
    return found[0] if found else None
