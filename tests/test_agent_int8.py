"""int8 operators: PT2E quantization through the one exporter, cached apart from fp32, profiled on the
host into an int8 configuration of the device's table (real ExecuTorch, real server)."""

from __future__ import annotations

import httpx
import pytest
import torch
from doubles.support import QUICK, SPACE, export_cache, measured, run_agent, runs

from fbnet import blocks
from fbnet.export import ExportError, export_format, export_module, fingerprint, op_module
from fbnet.space import get_space

OP = "k3_e6-16x32x32-24-s1"


def test_formats_and_fingerprints_separate_precisions(tmp_path):
    from device_agents.exporters import cache_path

    assert export_format("pte", None) == "pte" and export_format("pte", "int8") == "pte-int8"
    assert export_format("mlpackage", None) == "mlpackage" and export_format("mlpackage", "fp16") == "mlpackage"
    with pytest.raises(ExportError, match="int8"):
        export_format("mlpackage", "int8")
    with pytest.raises(ExportError, match="fp16"):
        export_format("pte", "fp16")
    assert fingerprint("pte") != fingerprint("pte-int8")
    assert cache_path(OP, "pte", tmp_path) != cache_path(OP, "pte-int8", tmp_path)


def test_int8_op_runs_close_to_fp32(tmp_path):
    from executorch.runtime import Runtime

    op = get_space(SPACE).op_by_key[OP]
    m = op_module(op)
    x = torch.randn(blocks.example_input(op.input_shape).shape, generator=torch.Generator().manual_seed(1))
    p8 = export_module(m, blocks.example_input(op.input_shape), "pte-int8", tmp_path / "q.pte")
    p32 = export_module(m, blocks.example_input(op.input_shape), "pte", tmp_path / "f.pte")
    assert p8.read_bytes() != p32.read_bytes()
    rt = Runtime.get()
    progs = [rt.load_program(str(p)) for p in (p8, p32)]  # kept alive while their methods run
    y8, y32 = (p.load_method("forward").execute([x])[0] for p in progs)
    with torch.no_grad():
        ref = m(x)
    assert torch.allclose(y32, ref, atol=1e-4)
    # quantized: close, but not the fp32 result (else nothing was quantized)
    err = float((y8 - ref).abs().max() / ref.abs().max())
    assert 1e-4 < err < 0.15, err


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return export_cache(tmp_path_factory)  # the test run's: the fp32 programs are exported already


def test_host_profile_int8_is_its_own_configuration(live_server, cache, tmp_path):
    token = live_server.create_device("host-int8")
    common = ["--server", live_server.url, "--device", "host-int8", "--token", token, "--space", SPACE,
              "--transport", "host", "--ops", "fc-1504-10", "--cache-dir", str(cache), *QUICK,
              "--unstable-threshold", "100"]  # one op: its table, whatever the machine does
    code, out = run_agent("profile", *common, "--spool-dir", str(tmp_path / "s8"), "--precision", "int8")
    assert code == 0, out
    code, out = run_agent("profile", *common, "--spool-dir", str(tmp_path / "s32"))
    assert code == 0, out
    assert {r["precision"] for r in runs(live_server, "host-int8")} == {"int8", "fp32"}
    from device_agents.exporters import cache_path

    # the cache keeps the precisions apart: the int8 program is its own file, quantized
    p8, p32 = cache_path("fc-1504-10", "pte-int8", cache), cache_path("fc-1504-10", "pte", cache)
    assert p8.parent.name.startswith("pte-int8-") and p32.parent.name.startswith("pte-") and p8.parent != p32.parent
    assert p8.is_file() and p32.is_file() and p8.read_bytes() != p32.read_bytes()
    tabs = {}
    for prec in ("int8", "fp32"):
        r = httpx.get(f"{live_server.url}/tables/host-int8", params={"space": SPACE, "precision": prec}, timeout=30)
        assert r.status_code == 200, r.text
        tabs[prec] = r.json()
        assert tabs[prec]["configuration"]["precision"] == prec
    ids8 = {i for e in tabs["int8"]["entries"] for i in e["run_ids"]}
    ids32 = {i for e in tabs["fp32"]["entries"] for i in e["run_ids"]}
    assert ids8 and ids32 and not ids8 & ids32
    assert sorted(measured(tabs["int8"])) == ["fc-1504-10"] and tabs["int8"]["overhead_us"] > 0
