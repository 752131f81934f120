"""The web pages in a real browser: Debian's headless Chromium (``chromium``, ``chromium-driver``)
driven by selenium against a real server on a free port, with real data: an imported HW-NAS-Bench
table (Pixel 3) and a host run of ExecuTorch ops measured by ``fbnet-agent``.

Every page loads with no console error and no failed request, the links between pages work, the
table page sorts and filters in place, and without JavaScript its headers still sort (on the server).
A screenshot of each page is written to ``tests/out/ui/`` (git-ignored; the path is printed and
recorded as the test's ``screenshots`` property). Nothing downloads a browser: without the system's
chromium, chromedriver or selenium these tests skip and say which is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import HWNASBENCH, REPO
from doubles.support import HOST_OPS, QUICK, SPACE, export_cache, run_agent

CHROMIUM = Path(os.environ.get("FBNET_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FBNET_CHROMEDRIVER", "/usr/bin/chromedriver"))
SHOTS = REPO / "tests" / "out" / "ui"

_missing = [what for what, ok in (
    (f"chromium ({CHROMIUM})", CHROMIUM.exists()), (f"chromedriver ({CHROMEDRIVER})", CHROMEDRIVER.exists()),
    ("the selenium package", importlib.util.find_spec("selenium") is not None)) if not ok]
_WHY = (f"the browser tests need {', '.join(_missing)}: apt-get install chromium chromium-driver; selenium is in "
        f"the dev extra (.ci/run installs them)")
# CI sets FBNET_REQUIRE_BROWSER=1: there a missing browser fails the tests instead of skipping them
REQUIRED = os.environ.get("FBNET_REQUIRE_BROWSER") == "1"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(_missing) and not REQUIRED, reason=_WHY)]


@pytest.fixture(scope="module")
def site(module_server, tmp_path_factory):
    """The demo's world, small: the host CPU profiled (4 ops) and validated, the Pixel 3 table imported."""
    s = module_server
    cache = export_cache(tmp_path_factory)
    token = s.create_device("host-cpu", platform="linux", runtime="executorch-xnnpack", model="x86_64 host",
                            metadata={"serial": "HOST-SERIAL-77"})
    code, out = run_agent("profile", "--server", s.url, "--device", "host-cpu", "--token", token, "--space", SPACE,
                          "--transport", "host", "--ops", ",".join(HOST_OPS), "--cache-dir", str(cache),
                          "--spool-dir", str(tmp_path_factory.mktemp("spool")), *QUICK)
    assert code == 0, out
    with s.client(token) as c:
        for pred, meas in ((900.0, 1000.0), (2100.0, 2000.0), (3050.0, 3000.0)):
            r = c.post("/validations", json={"space": SPACE, "arch": ["k3_e1"] * 22, "predicted_us": pred,
                                             "measured_us": meas, "n": 10, "label": "browser"})
            assert r.status_code == 201, r.text
    s.create_device("pixel3", platform="android", runtime="tflite (HW-NAS-Bench)", model="Pixel 3")
    with s.admin as c:
        r = c.post("/tables/pixel3/import", params={"format": "hwnasbench", "space": SPACE},
                   content=(HWNASBENCH / "pixel3_latency.json").read_bytes())
        assert r.status_code == 200, r.text
    return s


def _driver(javascript: bool = True):
    if _missing:
        pytest.fail(f"FBNET_REQUIRE_BROWSER=1 and {_WHY}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium's driver manager never fetches anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(arg)
    if not javascript:
        opts.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


@pytest.fixture(scope="module")
def browser():
    d = _driver()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def shots(record_testsuite_property):
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    print(f"\nscreenshots of the pages: {SHOTS}")
    record_testsuite_property("ui_screenshots", str(SHOTS))
    return SHOTS


class Page:
    """One page load: its console messages and network failures, checked; a full-page screenshot."""

    def __init__(self, driver, base: str, shots: Path):
        self.d, self.base, self.shots = driver, base, shots

    def problems(self) -> list[str]:
        """Console errors and failed requests since the last call (the logs are drained by reading)."""
        bad = [f"console: {e['message']}" for e in self.d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        for entry in self.d.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.responseReceived":
                resp = msg["params"]["response"]
                if resp["status"] >= 400:
                    bad.append(f"HTTP {resp['status']} {resp['url']}")
                if not resp["url"].startswith((self.base, "data:")):
                    bad.append(f"another host: {resp['url']}")
            elif msg["method"] == "Network.loadingFailed":
                bad.append(f"failed: {msg['params'].get('errorText')} ({msg['params'].get('type')})")
        return bad

    def settle(self, name: str) -> None:
        """Wait for the page and its images; no console error, no failed request; every resource 200."""
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, 30).until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
        broken = self.d.execute_script("return Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)")
        assert not broken, f"{name}: images that did not load: {broken}"
        resources = self.d.execute_script(
            "return Array.from(document.querySelectorAll('img[src],script[src],link[href]'))"
            ".map(e => e.src || e.href)")
        for url in resources:
            assert url.startswith(self.base), f"{name}: a resource from another host: {url}"
            assert httpx.get(url, timeout=60).status_code == 200, f"{name}: {url}"
        assert not self.problems(), f"{name}: {self.problems()}"
        self.shoot(name)

    def shoot(self, name: str) -> Path:
        """The whole page, beyond the window (Chromium's DevTools screenshot)."""
        shot = self.d.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path = self.shots / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def open(self, path: str, name: str) -> None:
        self.d.get(self.base + path)
        self.settle(name)

    def click(self, css: str, name: str, text: str | None = None) -> None:
        from selenium.webdriver.common.by import By

        els = self.d.find_elements(By.CSS_SELECTOR, css)
        els = [e for e in els if text is None or text in e.text]
        assert els, f"no {css} {text or ''} on {self.d.current_url}"
        els[0].click()
        self.settle(name)


def column(driver, table_id: str, col: int) -> list[float | None]:
    """The visible rows' values of one column (data-v, as the sort script reads them)."""
    return driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows).filter(r => !r.hidden)"
        ".map(r => { const v = r.cells[arguments[1]].getAttribute('data-v'); return v === '' ? null : parseFloat(v); })",
        table_id, col)


def header(driver, table_id: str, col: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"#{table_id} th[data-col='{col}']")


def test_walk_the_pages(site, browser, shots):
    """From / to the devices, the host, its table (sorted and filtered in place), back, and compare."""
    from selenium.webdriver.common.by import By

    p = Page(browser, site.url, shots)
    p.problems()
    p.open("/", "index")
    p.click("#to-ui", "devices")
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "a.device-link")]
    assert names == ["host-cpu", "pixel3"]
    assert "HOST-SERIAL-77" not in browser.page_source
    p.click("a.device-link", "device-host-cpu", "host-cpu")
    assert browser.find_element(By.TAG_NAME, "h1").text == "host-cpu"
    runs = browser.find_element(By.ID, "runs").text
    assert "finished" in runs and "stable" in runs and "agent" in runs
    assert browser.find_element(By.CSS_SELECTOR, "td.factors").text.count(".") >= 2  # per-round factors
    assert "3 whole models" in browser.page_source
    p.click("a.table-link", "table-host-cpu")
    assert "host-cpu / fbnet-cifar" in browser.find_element(By.TAG_NAME, "h1").text
    assert len(column(browser, "entries", 3)) == 112

    header(browser, "entries", "latency_us").click()  # in place: the page does not reload
    got = column(browser, "entries", 3)
    measured = [v for v in got if v is not None]
    assert len(measured) >= len(HOST_OPS) and measured == sorted(measured)
    assert got[:len(measured)] == measured and all(v is None for v in got[len(measured):])  # gaps last
    assert header(browser, "entries", "latency_us").get_attribute("aria-sort") == "ascending"
    header(browser, "entries", "latency_us").click()
    desc = [v for v in column(browser, "entries", 3) if v is not None]
    assert desc == sorted(measured, reverse=True)
    browser.find_element(By.CSS_SELECTOR, "input[data-filter='entries']").send_keys("k5_e1_g2")
    keys = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#entries tbody tr:not([hidden]) td.key")]
    assert keys and all("k5_e1_g2" in k for k in keys)
    assert browser.find_element(By.CSS_SELECTOR, "[data-count-for='entries']").text == str(len(keys))
    assert not p.problems()
    p.shoot("table-sorted-filtered")

    p.click("#to-device", "device-host-cpu-again")
    p.click("a.compare-link", "compare", "pixel3")
    assert "host-cpu vs pixel3" in browser.find_element(By.TAG_NAME, "h2").text
    assert len(column(browser, "compare-entries", 5)) == 112
    assert "Geometric mean" in browser.find_element(By.ID, "summary").text
    p.click("#nav-compare", "compare-form")
    p.open("/ui/devices/pixel3", "device-pixel3")
    p.click("a.table-link", "table-pixel3")


def test_errors_render_as_pages(site, browser, shots):
    from selenium.webdriver.common.by import By

    p = Page(browser, site.url, shots)
    p.problems()
    browser.get(site.url + "/ui/devices/ghost")
    assert "unknown device 'ghost'" in browser.find_element(By.ID, "error-detail").text
    bad = p.problems()  # the page itself answered 404, as it should; nothing else failed
    assert bad and all("404" in b for b in bad) and all("/ui/devices/ghost" in b for b in bad), bad
    p.shoot("error-404")


def test_sorting_works_without_javascript(site, shots):
    """JavaScript off: the headers are links and the server sorts; the filter is a form."""
    from selenium.webdriver.common.by import By

    def medians(d) -> list[float]:
        return [float(td.get_attribute("data-v")) for td in d.find_elements(By.CSS_SELECTOR, "#entries tbody td:nth-child(4)")]

    d = _driver(javascript=False)
    try:
        p = Page(d, site.url, shots)
        d.get(f"{site.url}/ui/tables/pixel3?space={SPACE}")
        assert not d.find_elements(By.CSS_SELECTOR, "th.js-sort")  # the script did not run
        assert len(medians(d)) == 112
        header(d, "entries", "latency_us").find_element(By.TAG_NAME, "a").click()  # a page load
        vals = medians(d)
        assert "sort=latency_us" in d.current_url and vals == sorted(vals, reverse=True) and vals[0] > vals[-1]
        p.shoot("nojs-table-sorted")
        box = d.find_element(By.CSS_SELECTOR, "input[name='q']")
        box.send_keys("k3_e6")
        box.submit()
        keys = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#entries td.key")]
        assert keys and all("k3_e6" in k for k in keys) and "q=k3_e6" in d.current_url
        assert not p.problems()
        p.shoot("nojs-table-filtered")
    finally:
        d.quit()
