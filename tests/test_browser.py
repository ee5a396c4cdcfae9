"""The pages in a real browser: headless Chromium (Debian's chromium and chromedriver)
driven by Selenium, on a bridge fed by real uploads (fake IOCs).

Screenshots are kept as test artifacts under pytest's tmp path (the path is printed).
With ``RECSYNC_SCREENSHOTS=DIR`` the overview and a PV page are also written there at a
small size (how docs/overview.png and docs/pv.png were made).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.testing.cluster import EtcdCluster
from tests.helpers import poll
from tests.webfleet import FIRST_ID, SCRIPT, SECOND_ID, WebFleet, web_fleet

pytestmark = pytest.mark.etcd

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: This machine's network is closed: nothing may try to reach out.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@contextmanager
def chromium(width: int = 1200, height: int = 900) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, quit (and the profile removed) after."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            raise AssertionError("chromium and chromium-driver are not installed")
        pytest.skip("no chromium/chromedriver (Debian packages chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="recsync-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Shots:
    """Screenshots of one test, numbered, under `folder`."""

    def __init__(self, driver: Any, folder: Path) -> None:
        self.driver = driver
        self.folder = folder
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)
        print(f"screenshots in {folder}")

    def take(self, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def fleet(tmp_path: Path, etcd_server: EtcdCluster, prefix: str) -> Iterator[WebFleet]:
    with web_fleet(tmp_path / "fleet", etcd_server.endpoints, prefix) as running:
        yield running


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def test_search_follow_links_and_watch_an_ioc_go_down(fleet: WebFleet, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with chromium() as driver:
        shots = Shots(driver, tmp_path / "screenshots")
        driver.get(fleet.base + "/")
        assert text_of(driver, '[data-live="iocs_up"]') == "2"
        assert text_of(driver, '[data-live="iocs_down"]') == "0"
        shots.take("overview")

        # Search as a person does: type in the box, press Enter.
        driver.find_element(By.LINK_TEXT, "PVs").click()
        box = driver.find_element(By.NAME, "q")
        box.send_keys("script", Keys.ENTER)
        poll(lambda: "1 PVs match" in text_of(driver, "#count"), what="the search result")
        link = driver.find_element(By.CSS_SELECTOR, "#results a")
        assert link.text == SCRIPT  # shown as text, never run
        shots.take("search")
        link.click()
        poll(lambda: driver.find_element(By.TAG_NAME, "h1").text == SCRIPT, what="the PV page")
        assert driver.execute_script("return document.querySelectorAll('main script').length") == 0
        assert "<b>bold</b>" in driver.page_source.replace("&lt;", "<").replace("&gt;", ">")
        shots.take("script-pv")

        # Follow the owner IOC, then one of its records.
        driver.find_element(By.LINK_TEXT, FIRST_ID).click()
        poll(lambda: driver.find_element(By.TAG_NAME, "h1").text == FIRST_ID, what="IOC page")
        assert "jdoe" in text_of(driver, "main")
        driver.find_element(By.LINK_TEXT, "SR:C01:BPM1").click()
        poll(lambda: "SR:C01:BPM1:ALIAS" in text_of(driver, "main"), what="the aliases")
        shots.take("pv")

        # The overview follows an IOC going down, without a reload.
        driver.get(fleet.base + "/")
        driver.execute_script("window.notReloaded = true")
        fleet.iocs.pop(SECOND_ID).close()
        poll(
            lambda: text_of(driver, '[data-live="iocs_down"]') == "1",
            what="the overview to show the IOC down",
        )
        assert driver.execute_script("return window.notReloaded === true")
        assert text_of(driver, '[data-live="iocs_up"]') == "1"
        assert "inactive" in text_of(driver, "#recent")
        shots.take("overview-ioc-down")


def test_pages_fit_a_phone(fleet: WebFleet, tmp_path: Path) -> None:
    with chromium(width=390, height=844) as driver:
        shots = Shots(driver, tmp_path / "phone")
        for path in ("/", "/iocs", "/pvs?q=SR", f"/iocs/{FIRST_ID}", "/pvs/SR:C01:BPM1"):
            driver.get(fleet.base + path)
            # Wide tables scroll inside their box; the page itself never scrolls sideways.
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"{path} is {overflow} px wider than the phone"
            shots.take(path.strip("/").replace("/", "-").replace("?", "-") or "overview")
    folder = os.environ.get("RECSYNC_SCREENSHOTS")
    if folder:
        save_readme_shots(fleet, Path(folder))


def save_readme_shots(fleet: WebFleet, folder: Path) -> None:
    """The overview and a PV page, small, for the README."""
    with chromium(width=900, height=620) as driver:
        driver.get(fleet.base + "/")
        driver.save_screenshot(str(folder / "overview.png"))
        driver.get(fleet.base + "/pvs/SR:C01:BPM1")
        driver.save_screenshot(str(folder / "pv.png"))
