"""Content addresses for renders: what a change touches, so only that is rendered again.

Everything one host is served at every stage is a pure function of a few inputs: its own
document, its site and cluster, its workflow, the boot and OS definitions each stage uses,
and the templates those render (with every template they include or import, transitively).
The key of a host is a digest of those inputs' bytes, so a revision reuses its parent's
render results for every host whose key did not change: a push that edits one template
re-renders the hosts that use it, one that edits ten hosts re-renders those ten.

Definitions are addressed by the bytes of the file that holds them (a file with several
OS definitions invalidates all of them when one changes: coarse, never wrong), hosts by
their document's data. A template that names what it includes with an expression (not a
literal) depends on every asset.
"""

from __future__ import annotations

import functools
import hashlib

from jinja2 import TemplateSyntaxError, meta

from .loader import HostEntry, Sot
from .render import make_environment

_PARSER = make_environment(Sot())  # parsing only: the same syntax as every revision's

# Bumped whenever rendering, checking or what a render result holds changes meaning.
RENDER_KEY_VERSION = "1"


def _sha(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()


@functools.lru_cache(maxsize=1024)
def _references(text: str) -> tuple[str | None, ...]:
    """What a template includes or imports (None: a name computed at render time). Keyed
    by the text: an unchanged template is not parsed again by the next revision."""
    try:
        return tuple(meta.find_referenced_templates(_PARSER.parse(text)))
    except TemplateSyntaxError:
        return ()


class RenderKeys:
    """Keys of one revision's host renders; every part is computed once per revision."""

    def __init__(self, sot: Sot) -> None:
        self.sot = sot
        self.env = _PARSER
        # Which templates fail to parse decides which render errors are reported.
        self._global = _sha(RENDER_KEY_VERSION, *sorted(sot.syntax_broken))
        self._closures: dict[str, str] = {}
        self._workflows: dict[str, str] = {}
        self._sites: dict[str, str] = {}

    def _defined(self, kind: str, ident: str) -> str:
        located = self.sot.at.get((kind, ident))
        if located is None:
            return "-"
        unit = self.sot.units.get(located.file)
        return _sha(located.file, unit.digest if unit else "-", ident)

    def _asset(self, key: str) -> str:
        asset = self.sot.assets.get(key)
        return _sha(key, asset.path, asset.text) if asset is not None else _sha(key, "-")

    def closure(self, key: str) -> str:
        """The template `key` and everything it includes or imports, transitively."""
        cached = self._closures.get(key)
        if cached is not None:
            return cached
        seen: set[str] = set()
        stack, everything = [key], False
        while stack and not everything:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            asset = self.sot.assets.get(name)
            if asset is None:
                continue
            for ref in _references(asset.text):
                if ref is None:
                    everything = True
                    break
                stack.append(self.env.join_path(ref, name))
        parts = sorted(self.sot.assets) if everything else sorted(seen)
        digest = self._closures[key] = _sha(*(self._asset(k) for k in parts))
        return digest

    def _workflow(self, wid: str) -> str:
        cached = self._workflows.get(wid)
        if cached is not None:
            return cached
        sot = self.sot
        parts = [self._defined("workflow", wid)]
        workflow = sot.workflows.get(wid)
        for stage in workflow.stages if workflow is not None else ():
            boot = sot.boots.get(stage.boot) if stage.boot else None
            if boot is None:
                parts.append(f"stage:{stage.boot}")
                continue
            parts += [self._defined("boot", boot.id), self._defined("os", boot.operating_system)]
            if boot.ipxe:
                parts.append(self.closure(f"ipxe/{boot.ipxe}"))
            if boot.unattended is not None:
                parts.append(self.closure(f"{boot.unattended.type}/{boot.unattended.use}"))
        digest = self._workflows[wid] = _sha(*parts)
        return digest

    def host(self, entry: HostEntry) -> str:
        site = self._sites.get(entry.site)
        if site is None:
            site = self._sites[entry.site] = self._defined("site", entry.site)
        return _sha(self._global, entry.key, entry.site, entry.cluster, site,
                    self._workflow(entry.host.workflow))
