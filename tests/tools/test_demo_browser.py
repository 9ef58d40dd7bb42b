"""``make demo`` in a real browser: Debian's Chromium, headless, driven through Debian's chromedriver by Selenium
(told where both are, so nothing downloads a browser or a driver).

A shopper opens the shop, views the product page, adds it to the cart, signs in with an e-mail, and closes the tab
right after clicking a link, so that the web SDK sends the queued click with ``sendBeacon`` as the page goes. The
console, opened in the same browser, must then show within 10 s one person holding the device's ECID, the e-mail and
the CRM id, and every event the shop sent, the one sent at unload included. The screenshots go to
``data/screenshots/`` (README shows copies of them from ``docs/screenshots/``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx2
import pytest

from tests.conftest import missing_prerequisite
from tools.demo import running_demo

ROOT = Path(__file__).parents[2]
SCREENSHOTS = ROOT / "data" / "screenshots"
EMAIL = "shopper.demo@example.com"
SHOWN_WITHIN_S = 10.0
PAGE_TIMEOUT_S = 20.0


@pytest.fixture
def browser():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        missing_prerequisite("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a browser online
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.25)


def click(driver, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    wait_for(lambda: driver.find_elements(By.ID, element_id), PAGE_TIMEOUT_S, f"#{element_id}")[0].click()


def profile_events(demo, identity: str) -> list[dict]:
    answer = httpx2.get(
        f"{demo.api}/profiles",
        params={"identity": identity},
        headers={"Authorization": f"Bearer {demo.token}"},
        timeout=5.0,
    )
    return answer.json()["events"]["recent"] if answer.status_code == 200 else []


@pytest.mark.integration
def test_a_shopper_becomes_one_person_the_console_shows_with_every_event(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with running_demo(tmp_path / "demo") as demo:
        browser.get(demo.shop)
        click(browser, "to-product")
        click(browser, "add-to-cart")
        wait_for(lambda: browser.find_element(By.ID, "cart-count").text == "1", PAGE_TIMEOUT_S, "the cart")
        click(browser, "nav-sign-in")
        wait_for(lambda: browser.find_elements(By.ID, "email"), PAGE_TIMEOUT_S, "the sign-in form")
        browser.find_element(By.ID, "email").send_keys(EMAIL)
        click(browser, "sign-in-go")
        wait_for(lambda: EMAIL in browser.find_element(By.ID, "signed-in").text, PAGE_TIMEOUT_S, "signed in")
        browser.save_screenshot(str(SCREENSHOTS / "demo-shop.png"))
        shop = browser.current_window_handle
        browser.switch_to.new_window("tab")
        console = browser.current_window_handle
        browser.switch_to.window(shop)
        click(browser, "nav-home")
        browser.close()
        closed = time.monotonic()

        browser.switch_to.window(console)
        browser.get(demo.console)
        browser.find_element(By.ID, "token").send_keys(demo.token, Keys.ENTER)
        lookup = browser.find_element(By.ID, "lookup")
        lookup.send_keys(f"Email:{EMAIL}")

        def shown() -> list[str] | None:
            click(browser, "lookup-go")
            time.sleep(0.5)
            identities = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#identities li")]
            events = profile_events(demo, f"Email:{EMAIL}")
            clicks = [event for event in events if event.get("eventType") == "web.webinteraction.linkClicks"]
            unload_click = any(
                event.get("web", {}).get("webInteraction", {}).get("URL", "").endswith("/index.html")
                for event in clicks
            )
            listed = browser.find_elements(By.CSS_SELECTOR, "#events li[data-event-id]")
            complete = unload_click and len(listed) == len(events) and len(events) >= 6
            namespaces = {text.split(":", 1)[0] for text in identities}
            return identities if complete and {"ECID", "Email", "CRMID"} <= namespaces else None

        identities = wait_for(shown, SHOWN_WITHIN_S, "the person with every event in the console")
        within_s = time.monotonic() - closed
        browser.save_screenshot(str(SCREENSHOTS / "console-person.png"))
        graph = browser.find_element(By.CSS_SELECTOR, "svg#graph")
        graph.screenshot(str(SCREENSHOTS / "console-graph.png"))

    ecids = [text for text in identities if text.startswith("ECID:")]
    assert len(ecids) == 1 and re.fullmatch(r"ECID:\d{38}", ecids[0])
    assert f"Email:{EMAIL}" in identities
    assert len(graph.find_elements(By.CSS_SELECTOR, "circle.node")) == len(identities)
    assert within_s <= SHOWN_WITHIN_S
