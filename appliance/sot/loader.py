"""Turn a Tree into a typed SoT model, collecting every schema problem with file:line.

Loading never stops at the first error: each document is validated on its own and a broken
one is left out of the model (and reported), so cross-reference checks still run on the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .models import ASSET_TYPES, Boot, Federation, Host, OperatingSystem, Site, Workflow
from .problems import Problems
from .tree import Tree
from .yamlsrc import Document, YamlError, load_documents

M = TypeVar("M", bound=BaseModel)

YAML_SUFFIXES = (".yml", ".yaml")


@dataclass(frozen=True)
class Located:
    """Where a document came from, to turn a field path into a line number."""

    file: str
    doc: Document

    def line(self, *path: Any) -> int:
        return self.doc.line_of(tuple(path))


@dataclass(frozen=True)
class HostEntry:
    host: Host
    site: str
    cluster: str
    at: Located


@dataclass(frozen=True)
class Asset:
    """A template under assets/<type>/; `key` is `<type>/<name>` as templates include it."""

    type: str
    name: str
    path: str
    text: str


@dataclass
class Sot:
    """The whole model of one revision. Mappings are keyed by id (hosts by name)."""

    sites: dict[str, Site] = field(default_factory=dict)
    hosts: dict[str, HostEntry] = field(default_factory=dict)
    os: dict[str, OperatingSystem] = field(default_factory=dict)
    boots: dict[str, Boot] = field(default_factory=dict)
    workflows: dict[str, Workflow] = field(default_factory=dict)
    assets: dict[str, Asset] = field(default_factory=dict)
    federation: Federation | None = None  # federation.yml: the cross-site rollout order
    at: dict[tuple[str, str], Located] = field(default_factory=dict)
    # Documents that failed their schema, by (kind, id) and host documents per cluster,
    # valid or not: checks that follow use them so one error is not reported again as others.
    broken: set[tuple[str, str]] = field(default_factory=set)
    host_documents: dict[tuple[str, str], int] = field(default_factory=dict)
    # Asset paths with template syntax errors (all reported by the syntax pass, not again by
    # every host that renders them).
    syntax_broken: set[str] = field(default_factory=set)

    def clusters(self) -> dict[tuple[str, str], list[HostEntry]]:
        """Hosts grouped by (site, cluster), in file order."""
        out: dict[tuple[str, str], list[HostEntry]] = {}
        for entry in self.hosts.values():
            out.setdefault((entry.site, entry.cluster), []).append(entry)
        return out


def _describe(kind: str, data: Any) -> str:
    if isinstance(data, dict):
        ident = data.get("name") if kind == "host" else data.get("id")
        if isinstance(ident, str | int):
            return f"{kind} {ident!r}"
    return kind


def _path_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The fields allowed where an unknown key was found, for a helpful message."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def explain(err: ErrorDetails, model: type[BaseModel]) -> tuple[str, str]:
    """A pydantic error -> (code, sentence a person can act on)."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # Union branches add their type names to the path; drop them.
    loc = tuple(p for p in loc if not (isinstance(p, str) and p[:1].islower() and "[" in p))
    where = _path_text(loc)
    kind = err["type"]
    msg = err["msg"]
    if kind == "missing":
        if loc and loc[-1] == "sha256":
            return "missing-sha256", (
                f"{where} is missing: every downloaded artifact needs its sha256 so peers can "
                "verify what they serve (`sha256sum FILE`)"
            )
        return "missing-field", f"{where} is required"
    if kind == "extra_forbidden":
        allowed = _field_names(model, loc)
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return "unknown-field", f"unknown field {where!r}{hint}"
    if kind == "value_error":
        return "invalid-value", f"{where}: {msg.removeprefix('Value error, ')}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return "invalid-value", f"{where} must be {expected}, not {err.get('input')!r}"
    if kind in {"ip_v4_address", "ip_v4_network"}:
        what = "an IPv4 address" if kind == "ip_v4_address" else "an IPv4 network like 10.0.0.0/24"
        return "invalid-value", f"{where}: {err.get('input')!r} is not {what}"
    if kind == "too_short" and "List" in msg:
        return "invalid-value", f"{where} must not be empty"
    text = msg[0].lower() + msg[1:] if msg else kind
    return "invalid-value", f"{where}: {text} (got {err.get('input')!r})"


def _validate(model: type[M], file: str, doc: Document, problems: Problems, kind: str,
              sot: Sot | None = None) -> M | None:
    if not isinstance(doc.data, dict):
        problems.add(file, doc.line, "not-a-mapping",
                     f"a {kind} document must be a YAML mapping, not {type(doc.data).__name__}")
        return None
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        ident = doc.data.get("name" if kind == "host" else "id")
        if sot is not None and isinstance(ident, str):
            sot.broken.add((kind, ident))
        label = _describe(kind, doc.data)
        for err in exc.errors(include_url=False):
            code, sentence = explain(err, model)
            problems.add(file, doc.line_of(tuple(err["loc"])), code, f"{label}: {sentence}")
        return None


def _documents(tree: Tree, path: str, problems: Problems) -> list[Document] | None:
    """The file's documents, or None when it is not readable YAML (already reported)."""
    try:
        return load_documents(tree.read(path))
    except YamlError as exc:
        problems.add(path, exc.line, "yaml", exc.message)
    except UnicodeDecodeError:
        problems.add(path, 1, "encoding", "the file is not UTF-8 text")
    return None


def load_sot(tree: Tree) -> tuple[Sot, Problems]:
    """Read every SoT file of `tree`; returns the model of what is valid and all problems."""
    sot = Sot()
    problems = Problems()
    env_files: dict[str, str] = {}
    cluster_files: list[tuple[str, str, str]] = []

    for path in tree.files():
        parts = path.split("/")
        top = parts[0]
        if _ignored(parts):
            continue
        if top == "sites" and len(parts) == 3 and path.endswith(YAML_SUFFIXES):
            site_dir, stem = parts[1], parts[2].rsplit(".", 1)[0]
            if stem == "env":
                env_files[site_dir] = path
            else:  # Vaquero's convention: cluster-<name>.yml holds cluster <name>
                cluster_files.append((site_dir, stem.removeprefix("cluster-"), path))
        elif path in FEDERATION_FILES:
            _load_federation(tree, path, sot, problems)
        elif top in _OBJECT_KINDS and len(parts) == 2 and path.endswith(YAML_SUFFIXES):
            _load_objects(tree, path, top, sot, problems)
        elif top == "assets" and len(parts) >= 3:
            if parts[1] not in ASSET_TYPES:
                problems.add(path, 0, "unknown-asset-type",
                             f"assets/{parts[1]}/ is not an asset type; use one of "
                             f"{', '.join(ASSET_TYPES)}")
                continue
            try:
                text = tree.read(path).decode()
            except UnicodeDecodeError:
                problems.add(path, 1, "encoding", "the asset is not UTF-8 text")
                continue
            name = "/".join(parts[2:])
            key = f"{parts[1]}/{name}"
            sot.assets[key] = Asset(parts[1], name, path, text)
        else:
            problems.warn(path, 0, "unknown-file", _unknown_file(parts))

    for site_dir, path in sorted(env_files.items()):
        _load_site(tree, site_dir, path, sot, problems)
    for site_dir, _, path in cluster_files:
        if site_dir not in env_files:
            problems.add(path, 0, "missing-env",
                         f"sites/{site_dir}/ has cluster files but no env.yml describing the site")
    for site_dir, cluster, path in cluster_files:
        site_id = next((s.id for s in sot.sites.values() if sot.at[("site", s.id)].file
                        == env_files.get(site_dir)), None)
        # A site that failed its schema still has its hosts checked: one broken env.yml must
        # not hide the problems of every host behind it. They stay out of the model.
        _load_hosts(tree, path, site_id or site_dir, cluster, sot, problems,
                    keep=site_id is not None)
    if not env_files:
        problems.add("sites", 0, "no-sites", "no site found: a SoT needs sites/<site>/env.yml "
                     "and at least one cluster file")
    return sot, problems


# Files a SoT may hold beside its data: documentation, CI and editor settings.
_DOC_PREFIXES = ("readme", "license", "licence", "copying", "changelog", "notice", "contributing",
                 "import-todo", "codeowners")


def _ignored(parts: list[str]) -> bool:
    if any(p.startswith(".") for p in parts):
        return True  # .git, .github, .drone.yml, .gitignore: not the format's business
    return len(parts) == 1 and parts[0].lower().startswith(_DOC_PREFIXES)


def _unknown_file(parts: list[str]) -> str:
    top = parts[0]
    known = "sites/, os/, boot/, workflows/, assets/"
    if len(parts) == 1:
        return f"{top} is not part of the SoT format (it reads {known}); Vaquero ignores it"
    if top not in ("sites", "assets", *_OBJECT_KINDS):
        return (f"{top}/ is not a folder of the SoT format (it reads {known}); "
                f"{'/'.join(parts)} is ignored")
    if top == "sites":
        return ("sites/<site>/ holds env.yml and cluster files (*.yml) only; "
                f"{'/'.join(parts)} is ignored")
    if top == "assets":
        return f"assets/ holds templates in assets/<type>/; {'/'.join(parts)} is ignored"
    return f"{top}/ holds *.yml or *.yaml files directly; {'/'.join(parts)} is ignored"


_OBJECT_KINDS: dict[str, tuple[str, type[BaseModel], Callable[[Sot], dict]]] = {
    "os": ("os", OperatingSystem, lambda s: s.os),
    "boot": ("boot", Boot, lambda s: s.boots),
    "workflows": ("workflow", Workflow, lambda s: s.workflows),
}


def _load_objects(tree: Tree, path: str, folder: str, sot: Sot, problems: Problems) -> None:
    kind, model, table = _OBJECT_KINDS[folder]
    for doc in _documents(tree, path, problems) or []:
        obj = _validate(model, path, doc, problems, kind, sot)
        if obj is None:
            continue
        ident = obj.id  # type: ignore[attr-defined]
        key = (kind, ident)
        if key in sot.at:
            first = sot.at[key]
            problems.add(path, doc.line, "duplicate-id",
                         f"{kind} id {ident!r} is defined twice; the first is at "
                         f"{first.file}:{first.doc.line}")
            continue
        table(sot)[ident] = obj
        sot.at[key] = Located(path, doc)


FEDERATION_FILES = ("federation.yml", "federation.yaml")


def _load_federation(tree: Tree, path: str, sot: Sot, problems: Problems) -> None:
    docs = _documents(tree, path, problems)
    if not docs:
        return
    if len(docs) > 1 or sot.federation is not None:
        problems.add(path, docs[-1].line, "extra-document",
                     "the federation is described once, in one document of federation.yml")
        return
    federation = _validate(Federation, path, docs[0], problems, "federation")
    if federation is not None:
        sot.federation = federation
        sot.at[("federation", "federation")] = Located(path, docs[0])


def _load_site(tree: Tree, site_dir: str, path: str, sot: Sot, problems: Problems) -> None:
    docs = _documents(tree, path, problems)
    if docs is None:
        return
    if not docs:
        problems.add(path, 1, "empty", "env.yml is empty: it must describe the site")
        return
    if len(docs) > 1:
        problems.add(path, docs[1].line, "extra-document", "env.yml must hold one document")
    site = _validate(Site, path, docs[0], problems, "site", sot)
    if site is None:
        return
    if site.id != site_dir:
        problems.add(path, docs[0].line_of(("id",)), "site-dir-mismatch",
                     f"site id {site.id!r} must match its folder name sites/{site_dir}/")
    key = ("site", site.id)
    if key in sot.at:
        problems.add(path, docs[0].line_of(("id",)), "duplicate-id",
                     f"site id {site.id!r} is also defined in {sot.at[key].file}")
        return
    sot.sites[site.id] = site
    sot.at[key] = Located(path, docs[0])


def _load_hosts(tree: Tree, path: str, site: str, cluster: str, sot: Sot,
                problems: Problems, keep: bool = True) -> None:
    docs = _documents(tree, path, problems)
    if docs is None:
        return
    if not docs:
        problems.add(path, 1, "empty", f"cluster file {path} holds no hosts")
    key = (site, cluster)
    sot.host_documents[key] = sot.host_documents.get(key, 0) + len(docs)
    for doc in docs:
        host = _validate(Host, path, doc, problems, "host", sot)
        if host is None or not keep:
            continue
        if host.name in sot.hosts:
            first = sot.hosts[host.name].at
            problems.add(path, doc.line_of(("name",)), "duplicate-host",
                         f"host name {host.name!r} is already used at {first.file}:"
                         f"{first.line('name')}; host names are unique across all sites")
            continue
        sot.hosts[host.name] = HostEntry(host, site, cluster, Located(path, doc))
