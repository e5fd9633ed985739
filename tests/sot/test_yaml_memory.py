"""Parsing a SoT file leaves nothing of the parse behind: a peer compiles commit after commit
for months, and the fuzz harness found every number of every compiled file still held (by
the shared YAML constructor's memo of the nodes it built) after its revision was gone."""

from __future__ import annotations

import gc

import yaml

from appliance.sot.yamlsrc import load_documents


def _yaml_nodes_alive() -> int:
    gc.collect()
    return sum(isinstance(o, yaml.Node) for o in gc.get_objects())


def test_parsing_numbers_keeps_no_yaml_node() -> None:
    text = "hosts:\n" + "".join(f"  - {{id: h{i}, vlan: {i}, weight: {i}.5, pxe: true}}\n"
                                for i in range(300))
    load_documents(text)  # whatever a first parse sets up once
    before = _yaml_nodes_alive()
    for _ in range(3):
        docs = load_documents(text)
        assert docs[0].data["hosts"][299] == {"id": "h299", "vlan": 299, "weight": 299.5,
                                              "pxe": True}
    del docs
    assert _yaml_nodes_alive() == before
