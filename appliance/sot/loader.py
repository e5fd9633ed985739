"""Turn a Tree into a typed SoT model, collecting every schema problem with file:line.

Loading never stops at the first error: each document is validated on its own and a broken
one is left out of the model (and reported), so cross-reference checks still run on the rest.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .models import ASSET_TYPES, Boot, Federation, Host, OperatingSystem, Site, Workflow
from .problems import Problem, Problems
from .slot_pickle import pickled_by_fields
from .tree import Tree, blob_id
from .yamlsrc import Document, Source, YamlError, load_documents, split_documents

M = TypeVar("M", bound=BaseModel)

YAML_SUFFIXES = (".yml", ".yaml")


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Located:
    """Where a document came from, to turn a field path into a line number."""

    file: str
    doc: Document

    def line(self, *path: Any) -> int:
        return self.doc.line_of(tuple(path))


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class HostEntry:
    host: Host
    site: str
    cluster: str
    at: Located
    key: str = ""  # a digest of the host's document: its renders are cached under it


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
    # What each YAML file yielded by itself, by path: the next revision reuses a unit whose
    # file did not change instead of parsing and validating it again.
    units: dict[str, FileUnit] = field(default_factory=dict)

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


_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
_MAX_FIELDS_SETS = 4096


def _share_fields_sets(model: M) -> M:
    """Every pydantic model keeps the set of its fields that were given: a set object per
    model, a quarter of a compiled revision's memory (~19 MiB of 72 at 10,000 hosts). The
    models are frozen, so nothing changes that set after validation (a copy gets its own
    copy): models given the same fields share one set, and a stored revision keeps them
    shared (pickle writes a shared object once)."""
    stack: list[BaseModel] = [model]
    while stack:
        m = stack.pop()
        names = m.__pydantic_fields_set__
        shared = _FIELDS_SETS.get(frozenset(names))
        if shared is None and len(_FIELDS_SETS) < _MAX_FIELDS_SETS:
            shared = _FIELDS_SETS[frozenset(names)] = names
        if shared is not None and shared is not names:
            object.__setattr__(m, "__pydantic_fields_set__", shared)
        for value in m.__dict__.values():
            if isinstance(value, BaseModel):
                stack.append(value)
            elif isinstance(value, list | tuple):
                stack.extend(v for v in value if isinstance(v, BaseModel))
    return model


def _validate(model: type[M], file: str, doc: Document, problems: Problems, kind: str,
              broken: set[tuple[str, str]] | None = None) -> M | None:
    if not isinstance(doc.data, dict):
        problems.add(file, doc.line, "not-a-mapping",
                     f"a {kind} document must be a YAML mapping, not {type(doc.data).__name__}")
        return None
    try:
        return _share_fields_sets(model.model_validate(doc.data))
    except ValidationError as exc:
        ident = doc.data.get("name" if kind == "host" else "id")
        if broken is not None and isinstance(ident, str):
            broken.add((kind, ident))
        label = _describe(kind, doc.data)
        for err in exc.errors(include_url=False):
            code, sentence = explain(err, model)
            problems.add(file, doc.line_of(tuple(err["loc"])), code, f"{label}: {sentence}")
        return None


@dataclass(frozen=True)
class FileUnit:
    """What one YAML file yields by itself: its documents, each validated against its kind's
    model (None where that failed), the problems found doing so, and the ids of documents
    that failed. A pure function of the file's path and bytes, so a revision reuses its
    parent's unit for every file whose bytes did not change."""

    digest: str  # the file's git blob id (appliance/sot/tree.py: blob_id)
    docs: tuple[Document, ...]
    models: tuple[BaseModel | None, ...]
    problems: tuple[Problem, ...]
    broken: frozenset[tuple[str, str]]
    # Per document, a digest of its data: what a host's renders are cached under.
    keys: tuple[str, ...] = ()
    readable: bool = True  # False: not YAML or not UTF-8 (the problem says which)

    def replay(self, problems: Problems, sot: Sot) -> None:
        for p in self.problems:
            problems.add(p.file, p.line, p.code, p.message)
        sot.broken.update(self.broken)


def _documents(data: bytes, path: str, problems: Problems) -> list[Document] | None:
    """The file's documents, or None when it is not readable YAML (already reported)."""
    try:
        return load_documents(data)
    except YamlError as exc:
        problems.add(path, exc.line, "yaml", exc.message)
    except UnicodeDecodeError:
        problems.add(path, 1, "encoding", "the file is not UTF-8 text")
    return None


def _parse_unit(data: bytes, digest: str, path: str, kind: str, model: type[BaseModel],
                first_only: bool = False, previous: FileUnit | None = None) -> FileUnit:
    """`previous`: the file's unit in the parent revision. Its hosts whose data did not
    change and were valid keep their model (valid data gives the same model, no problem)."""
    if kind == "host" and previous is not None and previous.keys:
        unit = _reparse_changed_documents(data, digest, path, model, previous)
        if unit is not None:
            return unit
    problems = Problems()
    broken: set[tuple[str, str]] = set()
    docs = _documents(data, path, problems)
    keys = tuple(_data_key(d.data) for d in docs or []) if kind == "host" else ()
    valid = {k: m for k, m in zip(previous.keys, previous.models, strict=False)
             if m is not None} if previous is not None and keys else {}
    models = [valid.get(keys[i]) if valid and keys[i] in valid
              else _validate(model, path, doc, problems, kind, broken)
              for i, doc in enumerate((docs or [])[:1 if first_only else None])]
    for doc in docs or ():
        doc.data = None  # in the models now: the raw data would double a host's memory
    return FileUnit(digest, tuple(docs or ()), tuple(models), tuple(problems.items),
                    frozenset(broken), keys, docs is not None)


def _data_key(data: Any) -> str:
    return hashlib.sha1(pickle.dumps(data, 5)).hexdigest()


def _reparse_changed_documents(data: bytes, digest: str, path: str, model: type[BaseModel],
                               previous: FileUnit) -> FileUnit | None:
    """A changed cluster file whose documents all validate, parsed document by document:
    those whose bytes the parent's file has too keep the parent's model and key, only the
    others are parsed (a push that edits one host of a 200-host file parses that host).
    None whenever the result might differ from a whole parse (see split_documents, and any
    problem at all): the caller then parses the whole file as usual."""
    source = previous.docs[0].source if previous.docs else None
    old_text = source.text if source is not None else None
    old_pieces = split_documents(old_text) if isinstance(old_text, bytes) else None
    pieces = split_documents(data)
    if old_pieces is None or pieces is None or len(old_pieces) != len(previous.docs):
        return None
    reusable: dict[bytes, tuple[int, str, BaseModel]] = {}
    ends = [line for line, _ in old_pieces[1:]] + [len(old_text) + 1]  # type: ignore[arg-type]
    for i, ((first, piece), doc, key, host) in enumerate(
            zip(old_pieces, previous.docs, previous.keys, previous.models, strict=True)):
        if doc.index != i or not first < doc.line <= ends[i]:
            return None  # not one document per piece in the parent: no mapping to trust
        if host is not None:
            reusable[piece] = (doc.line - first, key, host)
    valid = {k: m for k, m in zip(previous.keys, previous.models, strict=True) if m is not None}
    whole = Source(data)
    docs, keys, models = [], [], []
    for i, (first, piece) in enumerate(pieces):
        hit = reusable.get(piece)
        if hit is None:
            try:
                parsed = load_documents(piece)
            except (YamlError, UnicodeDecodeError):
                return None
            if len(parsed) != 1 or parsed[0].index != 0 or not isinstance(parsed[0].data, dict):
                return None
            key = _data_key(parsed[0].data)
            host = valid.get(key) or _validate(model, path, parsed[0], Problems(), "host")
            if host is None:
                return None
            hit = (parsed[0].line, key, host)
        docs.append(Document(None, first + hit[0], whole, i))
        keys.append(hit[1])
        models.append(hit[2])
    return FileUnit(digest, tuple(docs), tuple(models), (), frozenset(), tuple(keys), True)


class _UnitReader:
    """Reads files into units, reusing those of a parent revision whose bytes match."""

    def __init__(self, tree: Tree, parent: Mapping[str, FileUnit], sot: Sot,
                 problems: Problems) -> None:
        self.tree, self.parent, self.sot, self.problems = tree, parent, sot, problems
        self.reused = 0

    def unit(self, path: str, kind: str, model: type[BaseModel],
             first_only: bool = False) -> FileUnit:
        unit = self.parent.get(path)
        if unit is not None and unit.digest == self.tree.content_id(path):
            self.reused += 1  # the same bytes: not even read
        else:
            data = self.tree.read(path)  # what is parsed is what is identified
            unit = _parse_unit(data, blob_id(data), path, kind, model, first_only, unit)
        self.sot.units[path] = unit
        unit.replay(self.problems, self.sot)
        return unit


def load_sot(tree: Tree, parent: Sot | None = None) -> tuple[Sot, Problems]:
    """Read every SoT file of `tree`; returns the model of what is valid and all problems.
    With `parent` (the previous revision), files whose bytes did not change are not parsed
    or validated again: the result is the same as without, only faster."""
    sot = Sot()
    problems = Problems()
    reader = _UnitReader(tree, parent.units if parent is not None else {}, sot, problems)
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
            _load_federation(reader, path)
        elif top in _OBJECT_KINDS and len(parts) == 2 and path.endswith(YAML_SUFFIXES):
            _load_objects(reader, path, top)
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
        _load_site(reader, site_dir, path)
    for site_dir, _, path in cluster_files:
        if site_dir not in env_files:
            problems.add(path, 0, "missing-env",
                         f"sites/{site_dir}/ has cluster files but no env.yml describing the site")
    for site_dir, cluster, path in cluster_files:
        site_id = next((s.id for s in sot.sites.values() if sot.at[("site", s.id)].file
                        == env_files.get(site_dir)), None)
        # A site that failed its schema still has its hosts checked: one broken env.yml must
        # not hide the problems of every host behind it. They stay out of the model.
        _load_hosts(reader, path, site_id or site_dir, cluster, keep=site_id is not None)
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


def _load_objects(reader: _UnitReader, path: str, folder: str) -> None:
    kind, model, table = _OBJECT_KINDS[folder]
    sot, problems = reader.sot, reader.problems
    unit = reader.unit(path, kind, model)
    for doc, obj in zip(unit.docs, unit.models, strict=True):
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


def _load_federation(reader: _UnitReader, path: str) -> None:
    sot, problems = reader.sot, reader.problems
    docs = _documents(reader.tree.read(path), path, problems)
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


def _load_site(reader: _UnitReader, site_dir: str, path: str) -> None:
    sot, problems = reader.sot, reader.problems
    unit = reader.unit(path, "site", Site, first_only=True)
    docs = unit.docs
    if not unit.readable:
        return
    if not docs:
        problems.add(path, 1, "empty", "env.yml is empty: it must describe the site")
        return
    if len(docs) > 1:
        problems.add(path, docs[1].line, "extra-document", "env.yml must hold one document")
    site = unit.models[0]
    if not isinstance(site, Site):
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


def _load_hosts(reader: _UnitReader, path: str, site: str, cluster: str,
                keep: bool = True) -> None:
    sot, problems = reader.sot, reader.problems
    unit = reader.unit(path, "host", Host)
    docs = unit.docs
    if not unit.readable:
        return
    if not docs:
        problems.add(path, 1, "empty", f"cluster file {path} holds no hosts")
    key = (site, cluster)
    sot.host_documents[key] = sot.host_documents.get(key, 0) + len(docs)
    for doc, host, doc_key in zip(docs, unit.models, unit.keys, strict=True):
        if not isinstance(host, Host) or not keep:
            continue
        if host.name in sot.hosts:
            first = sot.hosts[host.name].at
            problems.add(path, doc.line_of(("name",)), "duplicate-host",
                         f"host name {host.name!r} is already used at {first.file}:"
                         f"{first.line('name')}; host names are unique across all sites")
            continue
        sot.hosts[host.name] = HostEntry(host, site, cluster, Located(path, doc), doc_key)
