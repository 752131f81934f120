"""The web pages without a browser: plain HTTP against a real server, as a client without JavaScript
sees them (tests/test_ui_browser.py drives them in Chromium)."""

from __future__ import annotations

from html import unescape
from html.parser import HTMLParser

import httpx
import pytest
from conftest import HWNASBENCH, start_server

SPACE = "fbnet-cifar"
OPS = ["k3_e1-16x32x32-16-s1", "k5_e1_g2-16x32x32-24-s1", "fc-1504-10"]
SERIAL = "SN-UI-0042-SECRET"
HOST = "lab-bench-secret-host"


class Links(HTMLParser):
    """Every href, src and form action of a page, and its scripts."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("href", "src", "action"):
            if a.get(k):
                self.urls.append(a[k])
        if tag == "script":
            self.scripts.append(a.get("src") or "")


def links(html: str) -> Links:
    p = Links()
    p.feed(html)
    return p


def import_table(server, device: str, file: str, **fields) -> None:
    server.create_device(device, platform="android", runtime="tflite", **fields)
    with server.admin as c:
        r = c.post(f"/tables/{device}/import", params={"format": "hwnasbench", "space": SPACE},
                   content=(HWNASBENCH / file).read_bytes(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def measured_run(server, device: str, token: str, threads: int = 1) -> int:
    """A finished run of three ops with a serial and a host name in its provenance (private fields)."""
    with server.client(token) as c:
        r = c.post("/runs", json={"space": SPACE, "transport": "adb", "agent_version": "t", "runtime": "executorch",
                                  "runtime_version": "1.5.1 sha256:abcdef012345", "host": HOST, "threads": threads,
                                  "build": "fbnet-runner 1 sha256:abcdef012345", "extra": {"serial": SERIAL}})
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        med = [100.0 * (i + 1) / threads for i in range(len(OPS))]
        batch = [{"key": k, "n": 10, "median_us": m, "mean_us": m, "std_us": 5.0, "min_us": 0.9 * m, "p10_us": 0.95 * m,
                  "p90_us": 1.1 * m} for k, m in zip(OPS, med, strict=True)]
        assert c.post(f"/runs/{run_id}/measurements", json={"measurements": batch}).status_code == 200
        if threads != 1:
            return c.post(f"/runs/{run_id}/finish", json={}).json()["id"]
        fin = c.post(f"/runs/{run_id}/finish", json={"extra": {"protocol": {"round_factors": [1.0, 1.0123, 0.9931],
                                                                              "spread": 0.0194, "settle": []}}})
        assert fin.status_code == 200, fin.text
        for pred, meas in ((1000.0, 1100.0), (2000.0, 1900.0)):
            v = c.post("/validations", json={"space": SPACE, "arch": ["k3_e1"] * 22, "predicted_us": pred,
                                             "measured_us": meas, "n": 10, "label": "ui"})
            assert v.status_code == 201, v.text
    return run_id


@pytest.fixture(scope="module")
def site(module_server):
    """Two imported HW-NAS-Bench tables and a measured device with private provenance."""
    s = module_server
    import_table(s, "pixel3", "pixel3_latency.json", model="Pixel 3", soc="Snapdragon 845", metadata={"serial": SERIAL})
    import_table(s, "raspi4", "raspi4_latency.json", model="Raspberry Pi 4")
    token = s.create_device("phone-a", platform="android", runtime="executorch-xnnpack", model="Phone A",
                            metadata={"serial": SERIAL, "lab": "shelf 3"})
    s.run_id = measured_run(s, "phone-a", token)
    measured_run(s, "phone-a", token, threads=4)  # a second configuration of the same device
    s.device_token = token
    return s


def get(server, path: str, token: str | None = None, **kw) -> httpx.Response:
    with server.client(token) as c:
        return c.get(path, **kw)


PAGES = ["/", "/ui", "/ui/devices/phone-a", "/ui/devices/pixel3", f"/ui/tables/pixel3?space={SPACE}",
         f"/ui/tables/phone-a?space={SPACE}", "/ui/tables/phone-a", "/ui/compare",
         f"/ui/compare?space={SPACE}&a=pixel3&b=raspi4", f"/ui/compare?space={SPACE}&a=phone-a&b=pixel3"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_render_without_javascript(site, path):
    r = get(site, path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    page = links(r.text)
    # nothing from another host: every link, image, script and form is this service's (the API links
    # name this server's own address)
    for url in page.urls:
        assert url.startswith(("/", "?", site.url)), url
    assert all(s.startswith("/ui/static/") for s in page.scripts)
    assert "<script>" not in r.text and " style=" not in r.text  # no inline script or style (the CSP forbids them)


def test_every_linked_resource_answers(site):
    """Every image, stylesheet, script and page a page links to answers 200 (the plots render)."""
    seen: set[str] = set()
    for path in PAGES:
        for url in links(get(site, path).text).urls:
            if url.startswith(site.url):
                url = url[len(site.url):]
            if url in seen or url.startswith(("/docs", "/openapi.json", "?")) or "logout" in url:
                continue
            seen.add(url)
            r = get(site, url)
            assert r.status_code == 200, (path, url, r.status_code, r.text[:200])
            if url.startswith("/ui/plots/"):
                assert r.content[:4] == b"\x89PNG"
    assert any("/ui/plots/table/" in u for u in seen) and any("/ui/plots/compare.png" in u for u in seen)
    assert any("/ui/plots/validations/" in u for u in seen)


def test_device_page_shows_runs_and_validations(site):
    html = get(site, "/ui/devices/phone-a").text
    assert f"#{site.run_id}" in html and "1.012" in html and "0.993" in html  # per-round factors
    assert "sha256:abcdef012345" in html and "agent t" in html  # provenance
    assert "2 whole models" in html and "MAPE" in html and "shelf 3" in html
    assert "vs pixel3" in html and "vs raspi4" in html  # compare links


def test_two_configurations_of_one_device(site):
    html = unescape(get(site, "/ui/devices/phone-a").text)
    assert "1 thread(s) vs fp32, executorch 1.5.1 sha256:abcdef012345, 4 thread(s)" in html
    r = get(site, f"/ui/compare?space={SPACE}&a=phone-a&b=phone-a&a_threads=1&b_threads=4")
    assert r.status_code == 200, r.text
    ratios = [float(row[5][0]) for row in rows(r.text, "compare-entries") if row[5][0]]
    assert ratios == [4.0] * len(OPS)  # the 4-thread run measured each op 4x faster
    assert "b_threads=1" in unescape(r.text)  # the other configuration, one click away
    assert get(site, f"/ui/compare?space={SPACE}&a=phone-a&b=phone-a&a_threads=1&b_threads=1").status_code == 422


def test_serials_and_hosts_only_for_the_admin_and_the_device(site):
    for path in ("/ui", "/ui/devices/phone-a", "/ui/devices/pixel3", f"/ui/tables/phone-a?space={SPACE}"):
        html = get(site, path).text
        assert SERIAL not in html and HOST not in html, path
    for token in (site.admin_token, site.device_token):
        html = get(site, "/ui/devices/phone-a", token).text
        assert SERIAL in html and HOST in html
    # a device's token is not the admin's: another device's serial stays hidden
    assert SERIAL not in get(site, "/ui/devices/pixel3", site.device_token).text


class Rows(HTMLParser):
    """The body rows of the table with id ``table_id``: per row, per cell, (data-v or None, text)."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.inside, self.rows, self.cell = table_id, False, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.inside = a.get("id") == self.table_id
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag == "td":
            self.cell = [a.get("data-v"), ""]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[-1].append(tuple(self.cell))
            self.cell = None
        elif tag == "table":
            self.inside = False


def rows(html: str, table_id: str) -> list[list[tuple]]:
    p = Rows(table_id)
    p.feed(html)
    return [r for r in p.rows if r]


def test_table_page_sorts_and_filters_on_the_server(site):
    def medians(params: str) -> list[float]:  # column 3: the median
        return [float(r[3][0]) for r in rows(get(site, f"/ui/tables/pixel3?space={SPACE}&{params}").text, "entries")]

    asc, desc = medians("sort=latency_us"), medians("sort=latency_us&order=desc")
    assert len(asc) == 112 and asc == sorted(asc) and desc == sorted(asc, reverse=True) and asc[0] < asc[-1]
    keys = [r[0][1] for r in rows(get(site, f"/ui/tables/pixel3?space={SPACE}&q=k5_e6").text, "entries")]
    assert keys and all("k5_e6" in k for k in keys)
    html = get(site, f"/ui/tables/pixel3?space={SPACE}").text.replace("&amp;", "&")
    assert "&sort=p90_us" in html  # the headers are links that sort without JavaScript


def test_table_page_says_how_to_use_it(site):
    html = get(site, f"/ui/tables/pixel3?space={SPACE}").text.replace("&amp;", "&")
    api = f"{site.url}/tables/pixel3?space={SPACE}&precision=fp32&runtime_version=import-hwnasbench"
    assert api in html and f"{api}&format=csv" in html
    assert get(site, api[len(site.url):]).json()["device"] == "pixel3"
    assert "--precision fp32 --runtime-version import-hwnasbench" in html
    assert "heatmap" in html


def test_errors_are_pages_with_the_api_status(site):
    r = get(site, "/ui/devices/ghost")
    assert r.status_code == 404 and "unknown device 'ghost'" in unescape(r.text) and r.headers["content-type"].startswith("text/html")
    assert get(site, f"/ui/tables/ghost?space={SPACE}").status_code == 404
    assert get(site, "/ui/tables/pixel3?space=nope").status_code == 404
    for bad in ("threads=abc", "precision=fp64", "sort=bogus", "order=up", "q=" + "x" * 200):
        r = get(site, f"/ui/tables/pixel3?space={SPACE}&{bad}")
        assert r.status_code == 422 and "query parameter" in r.text, bad
    r = get(site, f"/ui/compare?space={SPACE}&a=pixel3&b=pixel3")  # a configuration with itself
    assert r.status_code == 422 and "two different devices" in r.text
    assert get(site, f"/ui/compare?space={SPACE}&a=pixel3&b=ghost").status_code == 404
    assert get(site, f"/ui/compare?space={SPACE}&a=pixel3&b=raspi4&a_threads=0").status_code == 422
    assert get(site, "/ui/static/nope.js").status_code == 404


def test_pages_are_read_only(site):
    with site.admin as c:
        assert c.post("/ui").status_code == 405
        assert c.delete("/ui/devices/pixel3").status_code == 405


def test_read_token_guards_pages_and_figures(tmp_path):
    server, cleanup = start_server("sqlite", tmp_path / "srv", extra_env={"FBNET_READ_TOKEN": "reader-secret"})
    try:
        import_table(server, "pixel3", "pixel3_latency.json")
        for path in ("/ui", "/ui/devices/pixel3", f"/ui/tables/pixel3?space={SPACE}", "/ui/compare",
                     f"/ui/plots/table/pixel3.png?space={SPACE}"):
            r = get(server, path)
            assert r.status_code == 401, path
        r = get(server, "/ui")
        assert 'action="/ui/login"' in r.text and "requires a token" in r.text
        assert get(server, "/").status_code == 200  # the front door reads nothing
        assert get(server, "/ui", "reader-secret").status_code == 200  # the API's header works
        assert get(server, "/ui", "wrong").status_code == 401
        with server.client() as c:  # a browser: the login form sets an HttpOnly cookie, then goes on
            r = c.get("/ui/login", params={"token": "wrong", "next": "/ui"})
            assert r.status_code == 401 and "fbnet_token" not in r.headers.get("set-cookie", "")
            r = c.get("/ui/login", params={"token": "reader-secret", "next": "//evil.example/x"})
            assert r.status_code == 303 and r.headers["location"] == "/ui"
            assert "httponly" in r.headers["set-cookie"].lower()
            r = c.get("/ui/login", params={"token": "reader-secret", "next": f"/ui/tables/pixel3?space={SPACE}"},
                      follow_redirects=True)
            assert r.status_code == 200 and "pixel3 / fbnet-cifar" in r.text
            assert c.get(f"/ui/plots/table/pixel3.png?space={SPACE}").status_code == 200
            assert c.get(f"/tables/pixel3?space={SPACE}").status_code == 401  # the cookie is for the pages only
            c.get("/ui/logout")
            assert c.get("/ui").status_code == 401
    finally:
        cleanup()
