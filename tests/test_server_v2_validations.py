"""Validations of v2 (FBNetV2) architectures through the real service: the architecture text's tokens
as ``arch``, checked against the v2 space; v1 validations unchanged."""

from __future__ import annotations

import random

from fbnet.space_v2 import get_v2_space

SPACE = "fbnetv2-cifar"


def test_v2_validations_are_stored_checked_and_summarised(module_server):
    name = module_server.unique("v2val")
    token = module_server.create_device(name)
    sp = get_v2_space(SPACE)
    rng = random.Random(0)
    archs = [sp.random_arch(rng) for _ in range(3)]
    with module_server.client(token) as c:
        for i, a in enumerate(archs):
            r = c.post("/validations", json={"space": SPACE, "arch": a.to_text().split(","), "predicted_us": 100.0 + i,
                                             "measured_us": 105.0 + 2 * i, "n": 10, "label": f"random-{i}"})
            assert r.status_code == 201, r.text
            assert r.json()["arch"] == a.to_text().split(",")
        bad = archs[0].to_text().split(",")
        bad[0] = "res:64"  # not a resolution of the space
        r = c.post("/validations", json={"space": SPACE, "arch": bad, "predicted_us": 1.0, "measured_us": 1.0, "n": 1})
        assert r.status_code == 422 and "resolution 64" in r.json()["detail"]
        r = c.post("/validations", json={"space": "fbnet-cifar", "arch": archs[0].to_text().split(","),
                                         "predicted_us": 1.0, "measured_us": 1.0, "n": 1})
        assert r.status_code == 422 and "arch" in r.json()["detail"]
        s = c.get(f"/validations/{name}", params={"space": SPACE}).json()
    assert s["count"] == 3 and s["space"] == SPACE and s["kendall_tau"] == 1.0
