"""The compact pickling of the revision's slotted dataclasses gives back equal objects,
and refuses a class it could not rebuild faithfully."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import pytest

from appliance.sot.slot_pickle import pickled_by_fields
from appliance.sot.validate import HostFingerprint, HostRenders, StageFingerprint
from appliance.sot.yamlsrc import Document


def test_round_trip_keeps_every_field_and_shared_references() -> None:
    stage = StageFingerprint(ipxe="a" * 64, config="b" * 64)
    renders = HostRenders(HostFingerprint("d" * 64, (stage, stage)), 2,
                          (("boot/x.yml", 3, "undefined 'y'"),))
    doc = Document(data={"k": [1, 2]}, line=7, index=2)
    back_renders, back_doc = pickle.loads(pickle.dumps((renders, doc), protocol=5))
    assert back_renders == renders and back_doc.data == doc.data
    assert (back_doc.line, back_doc.index, back_doc.source) == (7, 2, None)
    stages = back_renders.fingerprint.stages
    assert stages[0] is stages[1]  # the pickle memo still shares what was shared


def test_a_single_field_class_round_trips() -> None:
    @pickled_by_fields
    @dataclass(frozen=True, slots=True)
    class One:
        value: int

    globals()["One"] = One  # pickle finds classes by module and name
    One.__qualname__ = "One"
    assert pickle.loads(pickle.dumps(One(5))) == One(5)


def test_a_field_outside_init_is_refused() -> None:
    with pytest.raises(TypeError, match="__init__ argument"):
        @pickled_by_fields
        @dataclass
        class Derived:
            value: int
            cached: int = field(default=0, init=False)
