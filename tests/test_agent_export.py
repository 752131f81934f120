"""Exporters: the on-disk cache, the process pool for cold exports, identity skips."""

from __future__ import annotations

import pytest
from doubles.support import HOST_OPS, SPACE, export_cache

from device_agents import exporters
from fbnet.blocks import example_input
from fbnet.export import WEIGHT_SEED
from fbnet.space import get_space


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return export_cache(tmp_path_factory)


def test_second_export_exports_nothing(cache, monkeypatch):
    sp = get_space(SPACE)

    def boom(*a, **k):
        raise AssertionError("exported although cached")

    monkeypatch.setattr(exporters, "export_module", boom)
    seen = []
    out = exporters.export_space(sp, "pte", cache, ops=[sp.op_by_key[k] for k in HOST_OPS], overheads=True,
                                 progress=lambda key, path, cached: seen.append(cached))
    assert set(out) == {*HOST_OPS, "overhead-1x16x32x32", "overhead-1x1504"}
    assert seen and all(seen)
    assert all(p.parent.name == f"pte-{exporters.fingerprint('pte')}" for p in out.values())


def test_fingerprint_tracks_versions(monkeypatch):
    a = exporters.fingerprint("pte")
    assert a != exporters.fingerprint("mlpackage")
    import fbnet.export

    monkeypatch.setattr(fbnet.export, "EXPORTER_VERSION", "test-bump")
    exporters.fingerprint.cache_clear()
    try:
        assert exporters.fingerprint("pte") != a
    finally:
        monkeypatch.undo()
        exporters.fingerprint.cache_clear()
    with pytest.raises(exporters.ExportError, match="unknown export format"):
        exporters.fingerprint("onnx")


def test_identity_is_never_exported(tmp_path):
    sp = get_space(SPACE)
    ident = sp.op_by_key["skip-16x32x32-16-s1"]
    assert ident.is_identity
    with pytest.raises(exporters.ExportError, match="identity"):
        exporters.export_op(ident, "pte", tmp_path)
    assert exporters.export_space(sp, "pte", tmp_path, ops=[ident]) == {}


def test_cold_exports_run_in_worker_processes(tmp_path, monkeypatch):
    """With jobs=2 the parent exports nothing itself: its export_module is poisoned, workers are fresh."""
    sp = get_space(SPACE)
    ops = [sp.op_by_key["pool-1504x4x4"], sp.op_by_key["fc-1504-10"]]

    def boom(*a, **k):
        raise AssertionError("exported in the parent process")

    monkeypatch.setattr(exporters, "export_module", boom)
    out = exporters.export_space(sp, "pte", tmp_path, ops=ops, jobs=2)
    assert sorted(out) == ["fc-1504-10", "pool-1504x4x4"]
    assert all(p.stat().st_size > 1000 for p in out.values())
    from executorch.runtime import Runtime

    prog = Runtime.get().load_program(out["fc-1504-10"])
    assert "forward" in prog.method_names


def test_export_command_uses_the_cache(cache):
    from doubles.support import run_agent

    code, out = run_agent("export", "--space", SPACE, "--format", "pte", "--out", str(cache), "--ops", "fc-1504-10")
    assert code == 0 and "2 programs in" in out and f"pte-{exporters.fingerprint('pte')}" in out, out
    code, out = run_agent("export", "--space", "fbnet-nope", "--out", str(cache))
    assert code == 2 and "unknown space" in out and "Traceback" not in out  # bad input


def test_whole_architectures_export_in_parallel_once(tmp_path):
    import torch
    from executorch.runtime import Runtime

    from fbnet.blocks import FBNet
    from fbnet.space import Arch

    sp = get_space(SPACE)
    archs = {"b": (Arch.parse("FBNet-B"), tmp_path / "b.pte"),
             "r": (Arch.parse(",".join(["k3_e1_g2", "skip"] * 11)), tmp_path / "r.pte")}
    seen = []
    out = exporters.export_archs(sp, archs, "pte", jobs=2, progress=lambda k, p, cached: seen.append((k, cached)))
    assert sorted(seen) == [("b", False), ("r", False)] and set(out) == {"b", "r"}
    x = example_input(sp.input_shape)
    for key, (arch, _path) in archs.items():
        with torch.random.fork_rng():  # the exporters' deterministic weights
            torch.manual_seed(WEIGHT_SEED)
            ref = FBNet(sp, arch).eval()
        program = Runtime.get().load_program(out[key])
        torch.testing.assert_close(program.load_method("forward").execute((x,))[0], ref(x), rtol=1e-3, atol=1e-4)
    seen.clear()
    exporters.export_archs(sp, archs, "pte", jobs=2, progress=lambda k, p, cached: seen.append((k, cached)))
    assert sorted(seen) == [("b", True), ("r", True)]
