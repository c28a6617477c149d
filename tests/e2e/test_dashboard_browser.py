"""The dashboard in a real browser: headless Chromium against a live gunicorn.

A partner signs in through the form, opens the charts of a count-by-month and a
count-by-channel release made through the API, sees them drawn (checked on the DOM and on
the pixels of a screenshot), signs out, and is sent back to the sign-in page.

Needs the Debian packages ``chromium`` and ``chromium-driver``. Without them the test is
skipped, except under CI (``CI=true``), where it fails: CI must prove the dashboard renders.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.live_server import ROOT, environment, serve

BIN = ROOT / ".venv" / "bin"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MONTHS = 12

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Server:
    url: str
    partner_token: str
    release_id: str
    by_channel_id: str


def _dpx(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "dpx"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"dpx {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


@pytest.fixture
def server(tmp_path: Path, policy_dir: Path) -> Iterator[Server]:
    """gunicorn (2 workers) over a fresh data dir with 20,000 synthetic contacts and a release."""
    variables = {"DPX_DATA_DIR": str(tmp_path / "data"), "DPX_POLICY_DIR": str(policy_dir)}
    env = environment(variables)
    _dpx(env, "init")
    _dpx(env, "demo-data", "--dataset", "uk-helpline-2024", "--contacts", "20000")
    token = _dpx(env, "issue-token", "--partner", "no-police").strip()
    with serve(variables, workers=2, log_path=tmp_path / "gunicorn.log") as live:
        released = requests.post(
            f"{live.url}/v1/queries",
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
            json={
                "dataset": "uk-helpline-2024",
                "statistic": "count",
                "group_by": ["month"],
                "epsilon": 0.5,
            },
        )
        assert released.status_code == 201, released.text
        by_channel = requests.post(
            f"{live.url}/v1/queries",
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
            json={
                "dataset": "uk-helpline-2024",
                "statistic": "count",
                "group_by": ["channel"],
                "epsilon": 0.5,
            },
        )
        assert by_channel.status_code == 201, by_channel.text
        yield Server(
            live.url, token, released.json()["release_id"], by_channel.json()["release_id"]
        )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Headless Chromium with a fresh profile and no background network traffic."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        message = (
            f"{', '.join(missing)} not found: install the Debian packages "
            "`chromium chromium-driver` to run the browser tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path / "chromium-profile"
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def png_colours(png: bytes) -> int:
    """The number of distinct colours in an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, b"", b""
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        data = png[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
        offset += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), f"unexpected PNG format {depth}/{colour_type}"
    channels = 3 if colour_type == 2 else 4
    stride = width * channels
    raw = zlib.decompress(idat)
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + predictor) & 0xFF
        colours.update(bytes(line[i : i + 3]) for i in range(0, stride, channels))
        previous = line
    return len(colours)


def test_partner_signs_in_sees_the_release_chart_and_signs_out(
    server: Server, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    wait = WebDriverWait(browser, 20)
    browser.get(f"{server.url}/dashboard")
    wait.until(ec.url_contains("/dashboard/sign-in"))
    browser.find_element(By.ID, "token").send_keys(server.partner_token)
    browser.find_element(By.CSS_SELECTOR, "section.sign-in button[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "budgets")))
    assert server.partner_token not in browser.current_url
    browser.save_screenshot(str(tmp_path / "overview.png"))

    browser.get(f"{server.url}/dashboard/releases/{server.release_id}")
    chart = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#release-chart svg")))
    assert chart.size["width"] > 300 and chart.size["height"] > 150
    line = chart.find_element(By.CSS_SELECTOR, "polyline.series")
    assert len((line.get_attribute("points") or "").split()) == MONTHS
    assert chart.find_element(By.CSS_SELECTOR, "polygon.band").is_displayed()
    browser.save_screenshot(str(tmp_path / "release.png"))
    picture = chart.screenshot_as_png
    (tmp_path / "release-chart.png").write_bytes(picture)
    # White background, grid, axis text, line, band and markers: far more than a handful.
    assert png_colours(picture) > 20

    browser.get(f"{server.url}/dashboard/releases/{server.by_channel_id}")
    chart = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#release-chart svg")))
    assert chart.size["width"] > 300 and chart.size["height"] > 150
    bars = chart.find_elements(By.CSS_SELECTOR, "rect.bar")
    whiskers = chart.find_elements(By.CSS_SELECTOR, "line.whisker")
    assert len(bars) == len(whiskers) == 4
    assert all(bar.is_displayed() and bar.size["height"] > 5 for bar in bars)
    labels = {text.text for text in chart.find_elements(By.TAG_NAME, "text")}
    assert {"phone", "chat", "email", "web"} <= labels
    picture = chart.screenshot_as_png
    (tmp_path / "release-by-channel.png").write_bytes(picture)
    assert png_colours(picture) > 20

    browser.find_element(By.CSS_SELECTOR, "form.sign-out button").click()
    wait.until(ec.url_contains("/dashboard/sign-in"))
    browser.get(f"{server.url}/dashboard")
    wait.until(ec.url_contains("/dashboard/sign-in"))
    assert browser.find_elements(By.ID, "token")


def test_the_api_docs_render_under_their_content_security_policy(
    tmp_path: Path, policy_dir: Path, browser: object
) -> None:
    """Swagger UI draws every operation, and the page logs no CSP violation or error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    variables = {"DPX_DATA_DIR": str(tmp_path / "data"), "DPX_POLICY_DIR": str(policy_dir)}
    _dpx(environment(variables), "init")
    with serve(variables, workers=1, log_path=tmp_path / "gunicorn.log") as live:
        assert (
            "frame-ancestors 'none'"
            in requests.get(f"{live.url}/docs", timeout=30).headers["Content-Security-Policy"]
        )
        browser.get(f"{live.url}/docs")
        WebDriverWait(browser, 30).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock-summary-path"))
        )
        paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/v1/queries", "/v1/queries/estimate", "/v1/releases"} <= {
            p.replace("\u200b", "") for p in paths
        }
        problems = [
            entry["message"]
            for entry in browser.get_log("browser")  # type: ignore[attr-defined]
            if (entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"])
            and "favicon.ico" not in entry["message"]  # the browser asks; dpx has none
        ]
        assert not problems, problems
