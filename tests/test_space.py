"""Search spaces as data: op counts, keys, architectures, analytic size against published numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA

from fbnet.space import (
    CANDIDATE_NAMES,
    PREDEFINED,
    Arch,
    ArchError,
    OpKeyError,
    SpaceError,
    get_space,
    list_spaces,
    parse_key,
)

SPACES = ["fbnet-224", "fbnet-cifar", "fbnet-96-w0.35", "fbnet-160"]


@pytest.mark.parametrize("name", SPACES)
def test_op_counts(name):
    s = get_space(name)
    searchable = [o for o in s.ops if not o.is_fixed]
    assert len(s.unique_layer_shapes) == 12
    assert len(searchable) == 12 * 9 == 108
    assert sum(o.is_identity for o in searchable) == 6
    assert [o.block for o in s.ops if o.is_fixed] == ["stem", "head", "pool", "fc"]
    assert len(s.ops) == 112
    # every searchable layer maps each of its 9 candidates to an op of the list
    used = {i for layers in s.op_layers.values() for i in layers}
    assert used == set(range(22))
    assert all(len(s.op_layers[o.key]) >= 1 for o in searchable)


def test_layer_shapes_follow_fbnet_tables():
    imagenet = get_space("fbnet-224")
    cifar = get_space("fbnet-cifar")
    assert [ls.h for ls in imagenet.layers] == [112, 112, 56, 56, 56, 56, 28, 28, 28, 28, 14, 14, 14, 14, 14,
                                                14, 14, 14, 7, 7, 7, 7]
    assert [ls.h for ls in cifar.layers] == [32] * 6 + [16] * 4 + [8] * 8 + [4] * 4
    assert [(ls.cin, ls.cout, ls.stride) for ls in cifar.layers][:2] == [(16, 16, 1), (16, 24, 1)]
    assert [ls.stride for ls in imagenet.layers if ls.cin != ls.cout] == [2, 2, 2, 1, 2, 1]
    assert imagenet.stem.key == "stem-3x224x224-16-s2"
    assert imagenet.head.key == "head-352x7x7-1984-s1"
    assert imagenet.pool.key == "pool-1984x7x7"
    assert imagenet.fc.key == "fc-1984-1000"
    assert [o.key for o in cifar.fixed_ops] == ["stem-3x32x32-16-s1", "head-352x4x4-1504-s1",
                                               "pool-1504x4x4", "fc-1504-10"]


def test_keys_round_trip_and_match_hwnasbench():
    for name in SPACES:
        for op in get_space(name).ops:
            assert parse_key(op.key) == op
    s = get_space("fbnet-224")
    assert s.layer_op(1, "k3_e6").key == "k3_e6-16x112x112-24-s2"
    assert s.layer_op(1, "skip").key == "skip-16x112x112-24-s2"
    for bad in ["", "k3_e6-16x112-24-s2", "k9_e6-16x112x112-24-s2", "pool-12", "fc-1-x"]:
        with pytest.raises(OpKeyError):
            parse_key(bad)


def test_versions_are_content_hashes():
    a, b = get_space("fbnet-224"), get_space("fbnet-cifar")
    assert a.version != b.version
    assert a.version == get_space("fbnet-224").version
    assert len({get_space(n).version for n in SPACES}) == len(SPACES)


def test_derived_space_by_resolution_and_width():
    s = get_space("fbnet-96-w0.35")
    assert s.resolution == 96 and s.stem.key == "stem-3x96x96-8-s2"
    stage_starts = [ls for ls in s.layers if ls.index in (0, 1, 5, 9, 13, 17, 21)]
    assert [ls.cout for ls in stage_starts] == [8, 8, 16, 24, 40, 64, 120]  # make_divisible(c * 0.35, 8)
    assert all(ls.cin % 8 == 0 and ls.cout % 8 == 0 for ls in s.layers)
    for bad in ["fbnet-7", "fbnet-96-w0", "fbnet-96-w0.350", "resnet", "fbnet-224-w9"]:
        with pytest.raises(SpaceError):
            get_space(bad)
    assert set(list_spaces()) == {"fbnet-224", "fbnet-cifar"}


def test_arch_text_round_trip():
    b = Arch.parse("FBNet-B")
    assert Arch.parse(b.to_text()) == b
    assert Arch.parse(b.to_text("indices")) == b
    assert b.to_text("indices") == ",".join(map(str, PREDEFINED["FBNet-B"]))
    text = ",".join(CANDIDATE_NAMES[i % 9] for i in range(22))
    assert Arch.parse(text).to_text() == text
    assert Arch.parse(" fbnet-c ") == Arch.from_indices(PREDEFINED["FBNet-C"])
    for bad in ["k3_e1", ",".join(["k3_e1"] * 21), ",".join(["k3_e7"] * 22), ",".join(["9"] * 22), "FBNet-Z"]:
        with pytest.raises(ArchError):
            Arch.parse(bad)


def test_predefined_match_shared_data():
    data = json.loads((DATA / "fbnet_archs.json").read_text())
    for name, idx in data["archs"].items():
        assert list(PREDEFINED[name]) == idx


def test_fbnet_sizes_against_published_numbers():
    """Paper-form blocks (first 1x1 always present), head 1984 on fbnet-224.

    Published: FBNet-B 4.77 M params (mobile-vision, released form), 295 MFLOPs (paper);
    FBNet-C 5.53 M / 375-383 MFLOPs; FBNet-A 4.27 M / 249 MFLOPs with a 1504 head.
    """
    s = get_space("fbnet-224")
    b = Arch.parse("FBNet-B")
    assert abs(s.arch_params(b) / 4.77e6 - 1) < 0.05
    assert abs(s.arch_mflops(b) / 295 - 1) < 0.02
    c = Arch.parse("FBNet-C")
    assert abs(s.arch_params(c) / 5.53e6 - 1) < 0.05
    assert abs(s.arch_mflops(c) / 383 - 1) < 0.02
    # FBNet-A is published with a 1504 head: our 1984 head adds (1984-1504)*(352+2+1000+1) params.
    a = Arch.parse("FBNet-A")
    assert abs((s.arch_params(a) - 480 * 1355) / 4.27e6 - 1) < 0.05


def test_arch_ops_skip_identity():
    s = get_space("fbnet-cifar")
    a = Arch.parse("FBNet-A")  # layers 0, 3, 4 are identity skips
    keys = [o.key for o in s.arch_ops(a)]
    assert len(keys) == 4 + 22 - 3
    assert keys[0] == s.stem.key and keys[-3:] == [s.head.key, s.pool.key, s.fc.key]


def test_space_module_is_torch_free():
    code = "import sys, fbnet.space, search.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", "import sys, fbnet.space; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", code


def _cli(*args):
    exe = Path(sys.executable).parent / "fbnet-search"
    return subprocess.run([str(exe), *args], capture_output=True, text=True)


def test_cli_ops_json():
    r = _cli("ops", "--space", "fbnet-cifar", "--format", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    s = get_space("fbnet-cifar")
    assert out["space"] == "fbnet-cifar" and out["version"] == s.version
    assert len(out["ops"]) == 112
    first = out["ops"][0]
    assert set(first) == {"key", "block", "kernel", "expansion", "groups", "cin", "h", "w", "cout", "stride", "layers"}
    assert first["layers"] == [0]
    assert out["ops"][-1]["layers"] == []


def test_cli_arch_json_and_errors():
    r = _cli("arch", "FBNet-B", "--space", "fbnet-224", "--format", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    s = get_space("fbnet-224")
    b = Arch.parse("FBNet-B")
    assert out["arch"] == list(b.blocks)
    assert out["params"] == s.arch_params(b)
    assert out["mflops"] == pytest.approx(s.arch_mflops(b), abs=1e-3)
    assert out["ops"] == [o.key for o in s.arch_ops(b)]
    bad = _cli("arch", "k3_e1,k3_e1", "--space", "fbnet-224")
    assert bad.returncode == 2 and "22" in bad.stderr and "Traceback" not in bad.stderr
    bad = _cli("ops", "--space", "nope")
    assert bad.returncode == 2 and "unknown space" in bad.stderr


def test_space_is_declared_once():
    """Stage table -> layer count; every primitive (candidates and fixed ops) is one BlockSpec;
    FBNet-A/B/C are readable per-stage name lists that agree with the published indices."""
    from fbnet.space import FIXED, NUM_LAYERS, PREDEFINED, PREDEFINED_NAMES, PRIMITIVE_SPECS, STAGES

    assert NUM_LAYERS == sum(n for _, n in STAGES) == len(get_space("fbnet-224").layers)
    assert set(PRIMITIVE_SPECS) == {*CANDIDATE_NAMES, *(b.name for b in FIXED)}
    published = json.loads((DATA / "fbnet_archs.json").read_text())["archs"]
    for name, rows in PREDEFINED_NAMES.items():
        assert [len(r) for r in rows] == [n for _, n in STAGES]
        assert list(PREDEFINED[name]) == published[name]


def test_op_fields_are_declared_once():
    """fbnet.ops.OP_FIELDS is the one list of an op's structured fields: Op.fields() returns exactly
    those, and the wire model of every space/table/compare entry is built from them (same names, same
    order, optional where the type allows None), so the two can no longer drift apart."""
    from fbnet.ops import OP_FIELDS
    from fbnet.wire import CompareEntry, OpFields, SpaceOp, TableEntry

    assert list(OpFields.model_fields) == list(OP_FIELDS)
    for model in (SpaceOp, TableEntry, CompareEntry):
        assert list(model.model_fields)[:len(OP_FIELDS)] == list(OP_FIELDS)
    required = {n for n, f in OpFields.model_fields.items() if f.is_required()}
    assert required == {"key", "block", "cin", "h", "w", "cout", "stride"}
    for name in SPACES:
        for op in get_space(name).ops:
            assert list(op.fields()) == list(OP_FIELDS)
            assert OpFields(**op.fields()).model_dump() == op.fields()  # every field validates, none dropped
