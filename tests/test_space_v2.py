"""FBNetV2 spaces as data (no torch): reference models against the released counts, the text form of
an architecture, op keys, the op grid, arch.json with a v2 architecture, and v1 left unchanged."""

import hashlib
import json
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fbnet.arch_v2 import REFERENCE_TABLE, REFERENCES, ArchV2, ArchV2Error, LayerChoice
from fbnet.archfile import ArchFile, ArchFileError, read_arch_file, write_arch_file
from fbnet.ops_v2 import V2_CANDIDATE_NAMES, OpV2, OpV2KeyError, divisible_width, mid_width, parse_key_v2
from fbnet.space import OpKeyError, get_space, parse_key
from fbnet.space_v2 import (
    SpaceV2Error,
    arch_summary,
    enumerate_ops,
    get_v2_space,
    grid_summary,
    list_v2_spaces,
    lookup_space,
    op_list,
)

V2_SPACES = ["fbnetv2-224", "fbnetv2-cifar"]
# sha256 of the v1 spaces' served op lists (Space.to_dict) at 7d26044, before the v2 modules existed.
V1_SPACES = ["fbnet-224", "fbnet-cifar", "fbnet-96-w0.35", "fbnet-160"]
V1_HASH = "fe4b7825f4b1bffa488272d7010b6e0289b386bab0bef872fb51e08e8725f5c7"
V1_VERSIONS = {"fbnet-224": "9bf5383913d83794", "fbnet-cifar": "88f669699a86693c",
               "fbnet-96-w0.35": "c6c86d7dd49e7d70", "fbnet-160": "287c55700b1283f4"}
# Grid sizes: unique op configurations (see grid_summary); a change here is a change of the space.
GRID_SIZE = {"fbnetv2-cifar": 20171, "fbnetv2-224": 79359}


def test_v1_spaces_keys_and_versions_unchanged():
    blob = json.dumps([get_space(n).to_dict() for n in V1_SPACES], sort_keys=True, separators=(",", ":")).encode()
    assert hashlib.sha256(blob).hexdigest() == V1_HASH
    assert {n: get_space(n).version for n in V1_SPACES} == V1_VERSIONS


@pytest.mark.parametrize("name", list(REFERENCE_TABLE))
def test_reference_counts_match_the_release(name):
    s = arch_summary("fbnetv2-224", name)
    _, mflops, mparams = REFERENCE_TABLE[name]
    assert s["name"] == name and s["released_mflops"] == mflops
    assert abs(s["mflops"] / mflops - 1) < 0.02 and abs(s["mflops_off_pct"]) < 2
    assert abs(s["params"] / (mparams * 1e6) - 1) < 0.02 and abs(s["params_off_pct"]) < 2
    # what is left is the classifier's pool over a 1x1 map, which mobile-vision counts (head-width MACs)
    assert s["params"] == round(mparams * 1e6)
    assert round(mflops * 1e6) - round(s["mflops"] * 1e6) == ArchV2.parse(name).head
    assert s["layers"] == 25 and s["off_grid_expansions"]  # released expansions are not on our grid


def test_reference_architectures_as_released():
    f1, f4, l2 = REFERENCES["FBNetV2-F1"], REFERENCES["FBNetV2-F4"], REFERENCES["FBNetV2-L2"]
    sp = get_v2_space("fbnetv2-224")
    for a in REFERENCES.values():
        sp.check_arch(a)
    assert (f1.resolution, f1.stem, f1.head, f4.head, l2.resolution) == (128, 8, 1600, 1984, 256)
    real = [op for op in sp.arch_ops(f1) if op.block not in ("conv_k3_hs", "ir_pool_hs", "fc")]
    assert len(real) == 15  # 1-2-2-6-4 blocks, the rest identity skips
    assert len(sp.arch_ops(f4)) - 3 == 18  # 19 blocks, one of them an identity skip
    assert sp.arch_ops(f1)[2].key == "ir_k5-8x64x64-m48-24-s2"  # mid 8 * 5.4566 -> 48, as mobile-vision rounds
    # the first layer of F1 has expansion 1 on 8 channels: no first 1x1
    assert not sp.arch_ops(f1)[1].has_pw and sp.arch_ops(f1)[1].macs == 8 * 25 * 64 * 64 + 8 * 8 * 64 * 64
    assert ArchV2.parse("fbnetv2-l1") == REFERENCES["FBNetV2-L1"]


def test_width_rounding_is_mobile_visions():
    assert [divisible_width(x) for x in (1, 8, 12, 43.65, 114.99, 20)] == [8, 8, 16, 48, 112, 24]
    assert mid_width(24, 4.7912) == 112 and mid_width(8, 1) == 8


def test_arch_summary_of_text_and_errors():
    sp = get_v2_space("fbnetv2-cifar")
    a = sp.random_arch(random.Random(3))
    s = arch_summary(sp, a.to_text())
    assert "name" not in s and s["arch"] == a.to_text() and s["off_grid_expansions"] == []
    assert s["mflops"] == pytest.approx(sp.arch_mflops(a)) and s["params"] == sp.arch_params(a)
    with pytest.raises(ArchV2Error, match="has 25 layers"):
        sp.check_arch(ArchV2(32, 8, (LayerChoice("skip", 8),), 640))
    with pytest.raises(ArchV2Error, match="resolution 224 not in"):
        arch_summary(sp, "FBNetV2-F4")
    with pytest.raises(SpaceV2Error, match="unknown v2 space"):
        get_v2_space("fbnet-224")
    assert list_v2_spaces() == V2_SPACES
    assert lookup_space("fbnetv2-cifar") is sp and lookup_space("fbnet-cifar") == get_space("fbnet-cifar")
    with pytest.raises(SpaceV2Error, match="unknown v2 space 'fbnetv2-96'"):
        lookup_space("fbnetv2-96")


@pytest.mark.parametrize("text, match", [
    ("FBNetV2-F9", "not a v2 architecture"),
    ("res:224,stem:16,ir_k9:16:e1,head:1984", "unknown v2 block"),
    ("res:224,stem:16,skip:16:e2,head:1984", "skip has no expansion"),
    ("res:224,stem:16,ir_k3:16,head:1984", "an expansion is required"),
    ("res:224,stem:16,ir_k3:16:e0,head:1984", "positive number"),
    ("res:224,stem:16,ir_k3:16:einf,head:1984", "is not block:width"),
    ("res:224,res:160,stem:16,ir_k3:16:e1,head:1984", "given twice"),
    ("res:224,stem:16,ir_k3:0:e1,head:1984", "positive integer"),
])
def test_malformed_architectures_are_one_line_errors(text, match):
    with pytest.raises(ArchV2Error, match=match) as e:
        ArchV2.parse(text)
    assert "\n" not in str(e.value)


_floats = st.floats(min_value=1e-3, max_value=64, allow_nan=False, allow_infinity=False)
_layers = st.builds(
    lambda b, w, e: LayerChoice(b, w, None if b == "skip" else e),
    st.sampled_from(V2_CANDIDATE_NAMES), st.integers(1, 4096), _floats,
)


@settings(max_examples=200, deadline=None)
@given(res=st.integers(1, 1024), stem=st.integers(1, 256), layers=st.lists(_layers, min_size=1, max_size=30),
       head=st.integers(1, 4096))
def test_text_round_trip(res, stem, layers, head):
    a = ArchV2(res, stem, tuple(layers), head)
    text = a.to_text()
    assert ArchV2.parse(text) == a
    assert ArchV2.parse(text.replace(",", " , ")) == a  # whitespace is ignored


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(V2_SPACES))
def test_random_archs_round_trip_and_price_from_the_grid(seed, name):
    sp = get_v2_space(name)
    a = sp.random_arch(random.Random(seed))
    assert ArchV2.parse(a.to_text()) == a and sp.arch_problems(a) == [] and sp.off_grid(a) == []
    grid = sp.grid
    for op in sp.arch_ops(a, with_identity=True):
        assert op.key in grid, op.key  # every op a search can choose is in the enumerated grid


@pytest.mark.parametrize("name", V2_SPACES)
def test_keys_round_trip(name):
    ops = enumerate_ops(name)
    assert len({op.key for op in ops}) == len(ops)
    for op in ops:
        assert parse_key_v2(op.key) == op


def test_key_fields_and_rejections():
    op = parse_key_v2("ir_k5_sehsig_hs-80x14x14-m360-80-s1")
    assert op.fields() == {"key": "ir_k5_sehsig_hs-80x14x14-m360-80-s1", "block": "ir_k5_sehsig_hs", "kernel": 5,
                           "se": True, "act": "hswish", "cin": 80, "h": 14, "w": 14, "mid": 360, "cout": 80,
                           "stride": 1}
    assert op.residual and op.has_pw and not op.is_identity
    assert parse_key_v2("ir_k3-16x8x8-m16-24-s2").fields()["act"] == "relu"
    # skip and fc are the v1 modules under the v1 keys
    for key in ("skip-56x14x14-80-s1", "fc-1984-1000"):
        assert parse_key(key).key == parse_key_v2(key).key == key
    assert parse_key_v2("skip-8x8x8-8-s1").is_identity
    for bad in ("ir_k3-16x8x8-24-s2", "skip-16x8x8-m16-24-s1", "k3_e6-16x8x8-24-s1", "ir_k7-16x8x8-m16-24-s1",
                "ir_k3-016x8x8-m16-24-s1", "ir_k3-0x8x8-m16-24-s1", "fc-10"):
        with pytest.raises(OpV2KeyError):
            parse_key_v2(bad)
    with pytest.raises(OpKeyError):
        parse_key("ir_k5_sehsig_hs-80x14x14-m360-80-s1")  # v1 never reads a v2 inverted residual
    with pytest.raises(OpV2KeyError, match="inner width is required"):
        OpV2("ir_k3", 8, 8, 8, 8, 1)


@pytest.mark.parametrize("name", V2_SPACES)
def test_grid_size_and_determinism(name):
    g = grid_summary(name)
    assert g["ops"] == GRID_SIZE[name] == len(enumerate_ops(name))
    assert sum(g["by_block"].values()) == g["ops"] and g["identity"] > 0
    assert g["by_position"] > g["ops"] and all(0 < n <= g["ops"] for n in g["by_resolution"].values())
    rows = op_list(name)
    assert json.loads(json.dumps(rows)) == rows and rows[0]["key"] == enumerate_ops(name)[0].key
    # the same list, in the same order, in a fresh process
    code = ("import hashlib; from fbnet.space_v2 import enumerate_ops; "
            f"print(hashlib.sha256('|'.join(o.key for o in enumerate_ops({name!r})).encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == hashlib.sha256("|".join(o.key for o in enumerate_ops(name)).encode()).hexdigest()


def test_archfile_carries_a_v2_architecture(tmp_path):
    text = REFERENCES["FBNetV2-F4"].to_text()
    doc = ArchFile(arch=text, space="fbnetv2-224", predicted_latency_us=10.0)
    back = read_arch_file(write_arch_file(doc, tmp_path))
    assert back == doc and back.is_v2 and back.architecture == REFERENCES["FBNetV2-F4"]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"arch": text, "space": "fbnetv2-cifar"}))
    with pytest.raises(ArchFileError, match="not an architecture of fbnetv2-cifar"):
        read_arch_file(p)
    p.write_text(json.dumps({"arch": text, "space": "fbnet-cifar"}))
    with pytest.raises(ArchFileError, match="FBNetV2 architecture cannot belong to space 'fbnet-cifar'"):
        read_arch_file(p)
    p.write_text(json.dumps({"arch": "res:32,stem:8,ir_k3:8,head:640"}))
    with pytest.raises(ArchFileError, match="an expansion is required"):
        read_arch_file(p)


def test_v2_modules_import_no_torch():
    code = ("import sys, fbnet.space_v2, fbnet.archfile; fbnet.space_v2.enumerate_ops('fbnetv2-cifar'); "
            "assert 'torch' not in sys.modules, 'torch loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)
