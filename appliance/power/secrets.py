"""BMC credentials: the peer's secrets file, never the SoT.

The SoT names credentials (`bmc.credentials: ipmi-rack1`); each peer maps those names to a
user and password in a local YAML file:

    ipmi-rack1: {user: admin, password: "..."}
    redfish-ilo: {user: ops, password_file: ilo.pass}   # relative to this file

Errors carry file:line like every other config error, and never echo a value: a typo in a
password must not end up in a log.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.errors import StartupError

from ..sot.loader import explain
from ..sot.yamlsrc import YamlError, load_documents
from .base import BmcCredentials

log = structlog.get_logger("vaquero.power")


class SecretsError(StartupError):
    """A secrets file that cannot be used, or a credentials name it lacks."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: Annotated[str, Field(min_length=1)]
    password: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> _Entry:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of `password` or `password_file`")
        return self


@dataclass(frozen=True)
class BmcSecrets:
    path: Path
    entries: dict[str, BmcCredentials]

    def lookup(self, name: str) -> BmcCredentials:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise SecretsError(f"{self.path}: no BMC credentials named {name!r} "
                               f"(names defined: {known})") from None

    def __repr__(self) -> str:
        return f"BmcSecrets(path={str(self.path)!r}, names={sorted(self.entries)!r})"


def _read_password_file(path: Path, where: str) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SecretsError(f"{where}: cannot read password_file {path}: {exc.strerror}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise SecretsError(f"{where}: password_file {path} is empty")
    return password


def _warn_if_readable(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secrets_file_permissive", path=str(path), mode=oct(mode & 0o777),
                    hint=f"chmod 600 {path}")


def load_bmc_secrets(path: str | Path) -> BmcSecrets:
    """Read and validate the whole file at start, so a peer with a broken secrets file
    fails loudly before the first power action rather than in the middle of a rollout."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SecretsError(f"{path}: cannot read the BMC secrets file: {exc.strerror}") from None
    _warn_if_readable(path)
    try:
        docs = load_documents(text)
    except YamlError as exc:
        raise SecretsError(f"{path}:{exc.line}: {exc.message}") from None
    if not docs or (len(docs) == 1 and docs[0].data is None):
        return BmcSecrets(path, {})
    if len(docs) != 1 or not isinstance(docs[0].data, dict):
        raise SecretsError(f"{path}:1: the BMC secrets file must be one YAML mapping of "
                           "name -> {user, password | password_file}")
    doc = docs[0]
    problems: list[str] = []
    entries: dict[str, BmcCredentials] = {}
    for name, data in doc.data.items():
        line = doc.line_of((name,))
        if not isinstance(name, str) or not name:
            problems.append(f"{path}:{line}: credentials names must be non-empty strings")
            continue
        if not isinstance(data, dict):
            problems.append(f"{path}:{line}: {name} must be a mapping with `user` and "
                            "`password` or `password_file`")
            continue
        try:
            entry = _Entry.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                err = {**err, "loc": (name, *err["loc"]), "input": "***"}
                _, sentence = explain(err, _Entry)
                if err["type"] == "string_type":  # a bare YAML number or boolean
                    sentence = (f"{'.'.join(map(str, err['loc']))} must be a string: "
                                "put it in quotes")
                problems.append(f"{path}:{doc.line_of(tuple(err['loc']))}: {sentence}")
            continue
        if entry.password_file is not None:
            pw_path = path.parent / entry.password_file
            where = f"{path}:{doc.line_of((name, 'password_file'))}"
            try:
                password = _read_password_file(pw_path, where)
            except SecretsError as exc:
                problems.append(str(exc))
                continue
            _warn_if_readable(pw_path)
        else:
            password = entry.password or ""
        entries[name] = BmcCredentials(entry.user, password)
    if problems:
        raise SecretsError("\n".join(problems))
    return BmcSecrets(path, entries)
