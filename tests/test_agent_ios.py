"""iOS transport against the Xcode double (tests/doubles/xcrun): real Core ML exports, real compile/copy/
launch command lines, real upload. No Core ML runs here; the double's timings are synthetic."""

from __future__ import annotations

import json

import pytest
from doubles.support import QUICK, SPACE, measured, run_agent, run_temp, runs, table, use_doubles

IOS_OPS = ["skip-16x32x32-24-s1", "fc-1504-10"]
UDID = "00008110-000A1B2C3D4E5F60"


@pytest.fixture(scope="module")
def ml_cache(tmp_path_factory):
    from device_agents.exporters import export_space
    from fbnet.space import get_space

    cache = run_temp(tmp_path_factory) / "agent-exports"
    sp = get_space(SPACE)
    export_space(sp, "mlpackage", cache, ops=[sp.op_by_key[k] for k in IOS_OPS], jobs=1, overheads=True)
    return cache


@pytest.fixture
def iphone(tmp_path, monkeypatch):
    root = tmp_path / "iphone"
    root.mkdir()
    use_doubles(monkeypatch)
    monkeypatch.setenv("FAKE_IOS_ROOT", str(root))
    monkeypatch.delenv("FAKE_IOS_LOCKED", raising=False)
    return root


def ios_args(server, device, token, cache, tmp_path, *extra):
    return ["profile", "--server", server.url, "--device", device, "--token", token, "--space", SPACE,
            "--transport", "ios", "--udid", UDID, "--compute-units", "ane", "--ops", ",".join(IOS_OPS),
            "--cache-dir", str(cache), "--spool-dir", str(tmp_path / "spool"), *QUICK, *extra]


def test_mlpackage_is_fp16_ios17(ml_cache):
    import coremltools as ct

    from device_agents.exporters import cache_path

    spec = ct.utils.load_spec(str(cache_path("skip-16x32x32-24-s1", "mlpackage", ml_cache)))
    assert spec.specificationVersion == 8  # iOS 17
    assert spec.WhichOneof("Type") == "mlProgram"
    fp16 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    assert spec.description.input[0].type.multiArrayType.dataType == fp16
    assert spec.description.output[0].type.multiArrayType.dataType == fp16
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 16, 32, 32]


def test_ios_profile(module_server, ml_cache, iphone, tmp_path):
    token = module_server.create_device("iphone13-ane", platform="ios", runtime="coreml")  # device default fp32
    code, out = run_agent(*ios_args(module_server, "iphone13-ane", token, ml_cache, tmp_path))
    assert code == 0, out
    got = measured(table(module_server, "iphone13-ane"))
    assert sorted(got) == sorted(IOS_OPS) and all(e["n"] == 10 for e in got.values())
    # the double's timings grow with the weight size: the 1504x10 fc is slower than the 16->24 1x1 conv
    assert got["fc-1504-10"]["latency_us"] > got["skip-16x32x32-24-s1"]["latency_us"]
    (run,) = runs(module_server, "iphone13-ane")
    assert run["transport"] == "ios" and run["runtime"] == "coreml" and run["compute_units"] == "ane"
    # Core ML programs are fp16: the run says so, and the compute units name the configuration
    cfg = table(module_server, "iphone13-ane")["configuration"]
    assert run["precision"] == "fp16" and (cfg["precision"], cfg["compute_units"]) == ("fp16", "ane")
    assert run["device_model"] == "iPhone 13" and run["os"] == "iOS 17.5.1"
    assert run["temps_after"] == {"thermal_state": 0.0}
    docs = iphone / "containers/org.fbnetlut.CoreMLBench/Documents"
    job = json.loads((docs / "job.json").read_text())
    assert job["compute_units"] == ["cpuAndNeuralEngine"] and (job["warmup"], job["iters"]) == (2, 5)
    assert sorted(p.name for p in (docs / "models").iterdir()) == sorted(
        [f"{k}.mlmodelc" for k in IOS_OPS] + ["overhead-1x1504.mlmodelc", "overhead-1x16x32x32.mlmodelc"])


def test_ios_locked_phone_and_unknown_udid(module_server, ml_cache, iphone, tmp_path, monkeypatch):
    token = module_server.create_device("iphone-locked", platform="ios", runtime="coreml")
    monkeypatch.setenv("FAKE_IOS_LOCKED", "1")
    code, out = run_agent(*ios_args(module_server, "iphone-locked", token, ml_cache, tmp_path))
    assert code == 1 and "locked" in out and "--resume" in out and "Traceback" not in out, out
    monkeypatch.delenv("FAKE_IOS_LOCKED")
    code, out = run_agent(*ios_args(module_server, "iphone-locked", token, ml_cache, tmp_path, "--resume"))
    assert code == 0, out
    assert sorted(measured(table(module_server, "iphone-locked"))) == sorted(IOS_OPS)
    args = ios_args(module_server, "iphone-locked", token, ml_cache, tmp_path)
    code, out = run_agent(*[("0000-NOPE" if a == UDID else a) for a in args])
    assert code == 1 and "0000-NOPE" in out and "not found" in out, out
