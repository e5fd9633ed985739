"""Imported templates render what the original Go templates rendered for the same host.

Each case is a Go template, the data the original gave it, and the text Go's text/template
produces for it, written by hand from Go's rules (trim markers eat all adjacent whitespace,
`range $i, $e` binds the index, `with` and `if` skip empty values, `index` of a missing map
key is the zero value, `else if` chains, `$` is the root). The translation is rendered by
Jinja2 in the same sandbox settings the project uses.
"""

from __future__ import annotations

from typing import Any

import pytest
from jinja2 import DictLoader, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.importer.gotemplate import GoTemplateError, parse
from appliance.importer.translate import Translator

SUBNET = {"id": "vagrant1", "gateway": "10.10.10.1", "dns": ["8.8.8.8", "8.8.4.4"],
          "ntp": ["10.10.10.1"], "vlan": 7, "cidr": {"netmask": "255.255.255.0"}}
IFACES = [
    {"mac": "00:00:00:00:00:21", "ipv4": "10.10.10.21", "identifier": "eth0",
     "subnet": SUBNET},
    {"mac": "00:00:00:00:00:31", "ipv4": "10.10.10.31", "identifier": "eth1",
     "subnet": SUBNET},
]
CONTEXT: dict[str, Any] = {
    "site": {"metadata": {"name": "detroit", "nodes": [{"name": "etcd1", "ip": "10.0.0.1"},
                                                       {"name": "etcd2", "ip": "10.0.0.2"}],
                          "keys": ["k1", "k2"], "empty": []}},
    "host": {"name": "etcd1", "metadata": {"role": "kube-master", "mstr": "etcd1", "blank": ""}},
    "interface": IFACES[0],
    "interfaces": IFACES,
    "boot": {"metadata": {"root_pass": "$1$x"}},
    "os": {"release_name": "stable", "major_version": "1053"},
    "urls": {"base": "http://10.10.10.5", "config": "http://10.10.10.5/boot/etcd1/1/config",
             "phone_home": "http://10.10.10.5/phone-home/etcd1/1/TOKEN"},
}

CASES = [
    ("fields and the md alias", "{{ .host.md.role }}/{{ .env.metadata.name }}/{{ .host.name }}",
     "kube-master/detroit/etcd1"),
    ("trim markers eat newlines and spaces on their side",
     "a\n  {{- .host.name -}}  \n b {{ .host.name }} c", "aetcd1b etcd1 c"),
    ("range with index and element, comma-joined",
     "{{ range $i, $n := .env.md.nodes }}{{ if $i }},{{ end }}{{ $n.name }}=http://{{ $n.ip }}"
     ":2380{{ end }}", "etcd1=http://10.0.0.1:2380,etcd2=http://10.0.0.2:2380"),
    ("range sets the dot", "{{ range .env.md.keys }}- {{ . }}\n{{ end }}", "- k1\n- k2\n"),
    ("range else on an empty list", "[{{ range .env.md.empty }}x{{ else }}none{{ end }}]",
     "[none]"),
    ("with index of the interfaces, subnet resolved",
     "{{ with index .host.interfaces 1 }}{{ .ipv4 }} {{ .identifier }} {{ .subnet.netmask }}"
     "{{ end }}", "10.10.10.31 eth1 255.255.255.0"),
    ("with skips an empty value", "{{ with .host.md.blank }}x{{ else }}empty{{ end }}", "empty"),
    ("if / else if / else", '{{ if eq .host.md.role "node" }}N{{ else if eq .host.md.role '
     '"kube-master" }}M{{ else }}X{{ end }}', "M"),
    ("index of a missing map key is false in a condition",
     '{{ if index .host.metadata "ssh_authorized_keys" }}keys{{ else }}nokeys{{ end }}',
     "nokeys"),
    ("index chain through the host", '{{ index .host "interfaces" 0 "mac" }}',
     "00:00:00:00:00:21"),
    ("Checkpoint, agentURL, configURL",
     "curl {{ Checkpoint }} {{ .env.agentURL }}/files {{ .boot.configURL }}",
     "curl http://10.10.10.5/phone-home/etcd1/1/TOKEN http://10.10.10.5/files "
     "http://10.10.10.5/boot/etcd1/1/config"),
    ("a variable and $ inside range",
     "{{ $n := .host.name }}{{ range .env.md.keys }}{{ $n }}:{{ . }}:{{ $.host.md.role }} "
     "{{ end }}", "etcd1:k1:kube-master etcd1:k2:kube-master "),
    ("and / not / parenthesised pipelines",
     '{{ if and (eq .host.md.role "kube-master") (not .host.md.blank) }}yes{{ end }}', "yes"),
    ("interface subnet fields", "gw={{ .interface.subnet.gateway }} dns="
     "{{ index .interface.subnet.dns 0 }} vlan={{ .interface.subnet.vlan }}",
     "gw=10.10.10.1 dns=8.8.8.8 vlan=7"),
    ("text holding Jinja's delimiters and a comment",
     "echo ${#arr} {% raw %}{{/* a note */}}!", "echo ${#arr} {% raw %}!"),
    ("boot.os fields (os artifact URLs)",
     "{{ .env.agentURL }}/files/{{ .boot.os.release_name }}/{{ .boot.os.major_version }}/k",
     "http://10.10.10.5/files/stable/1053/k"),
]


def _render(source: str, snippets: dict[str, str] | None = None) -> str:
    parsed = parse(source)
    templates = dict(snippets or {})
    for name, (_line, nodes) in parsed.defines.items():
        templates[f"snippets/{name}"] = Translator().translate(nodes).text
    translation = Translator().translate(parsed)
    assert not translation.issues, translation.issues
    templates["main"] = translation.text
    env = ImmutableSandboxedEnvironment(loader=DictLoader(templates), undefined=StrictUndefined,
                                        keep_trailing_newline=True, autoescape=False)
    return env.get_template("main").render(CONTEXT)


@pytest.mark.parametrize(("title", "go", "expected"), CASES, ids=[c[0] for c in CASES])
def test_translation_renders_what_go_rendered(title: str, go: str, expected: str) -> None:
    assert _render(go) == expected


def test_define_and_template_with_trim_markers() -> None:
    """As in vagrant-local's cloud-config: `{{- template "etcd2" .}}` after a line break."""
    go = ('coreos:\n  update: x\n\n  {{- template "etcd2" .}}\n\n  fleet: y\n'
          '{{ define "etcd2" }}\n  etcd2:\n  {{ if eq .host.md.role "kube-master" }}\n'
          '    name: {{ .host.md.mstr }}\n  {{ else }}\n    proxy: on\n  {{ end }}\n{{ end }}')
    expected = ("coreos:\n  update: x\n  etcd2:\n  \n    name: etcd1\n  \n\n\n  fleet: y\n")
    assert _render(go) == expected


def test_a_key_the_original_host_lacks_is_a_data_issue() -> None:
    translation = Translator().translate(parse('{{ if index .host "mstr" }}m{{ end }}'))
    assert translation.text == "{% if none %}m{% endif %}"
    assert [i.kind for i in translation.issues] == ["data"]
    assert "has no key 'mstr'" in translation.issues[0].message


@pytest.mark.parametrize(("go", "line", "message"), [
    ("a\n{{ if .x }}\nb", 2, "{{if}} has no {{end}}"),
    ("{{ end }}", 1, "unexpected {{end}}"),
    ("x\n\n{{ .a | }}", 3, "missing value for command"),
    ('{{ template foo }}', 1, "template needs a template name in quotes"),
])
def test_parse_errors_carry_their_line(go: str, line: int, message: str) -> None:
    with pytest.raises(GoTemplateError) as err:
        parse(go)
    assert err.value.line == line
    assert message in err.value.message
