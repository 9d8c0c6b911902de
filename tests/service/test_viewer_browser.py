"""The map page in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``
packages), driven by Selenium, loads ``/`` from ``cropstar serve`` (a real uvicorn process); the class
map picture is drawn with the legend's colours, the legend lists the model's classes, the demo's sample
fields are classified through the page and drawn with what the API answers, a field's details show its
crop, confidence and top-3 probabilities, and the page is saved as a screenshot (also to the path in
``CROPSTAR_SCREENSHOT`` where set: docs/images/viewer.png, the README's picture, comes from here).

Skipped, saying why, where Selenium, Chromium or its driver is missing (``.ci/run`` installs them
where it can)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from served import serve

SCREENSHOT_VARIABLE = "CROPSTAR_SCREENSHOT"
WAIT_S = 120


def _browser_paths() -> tuple[str, str]:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(f"no headless browser here (chromium: {browser or 'missing'}, chromedriver: "
                    f"{driver or 'missing'}); on Debian: apt-get install chromium chromium-driver")  # fmt: skip
    return browser, driver


@pytest.fixture(scope="module")
def server(service_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(service_cache_dir, tmp_path_factory.mktemp("served")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,900"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: str, *args: Any) -> Any:
    """Wait until the JavaScript expression ``condition`` (``arguments`` are ``args``) is truthy; its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(
        lambda d: d.execute_script(f"return ({condition});", *args),
        message=f"the page never satisfied {condition}",
    )


#: The picture's colours, read back in the page: counts of opaque pixels per "#rrggbb".
PICTURE_COLOURS = """
const done = arguments[arguments.length - 1];
const picture = new Image();
picture.onload = () => {
  const canvas = document.createElement("canvas");
  canvas.width = picture.naturalWidth; canvas.height = picture.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(picture, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const counts = {};
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] === 0) continue;
    const hex = "#" + [data[i], data[i + 1], data[i + 2]].map((v) => v.toString(16).padStart(2, "0")).join("");
    counts[hex] = (counts[hex] || 0) + 1;
  }
  done({width: canvas.width, height: canvas.height, counts});
};
picture.onerror = () => done(null);
picture.src = document.getElementById("map-image").getAttribute("href");
"""


def test_the_map_page_shows_the_map_and_classifies_the_demo_fields(
    server: str, browser: Any, demo_fields: dict, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    card = httpx.get(f"{server}/v1/models/default", timeout=30).json()["card"]
    classes = card["classes"]
    browser.get(f"{server}/")
    assert browser.current_url == f"{server}/viewer/"
    _wait(browser, "document.getElementById('map-status').dataset.loaded === 'true'")

    # the legend: every class of the model, with the map's colours
    items = browser.find_elements(By.CSS_SELECTOR, "#legend li")
    assert [item.text for item in items] == [f"{c['name']} ({c['code']})" for c in classes]
    description = httpx.get(f"{server}/v1/sources/demo/map", timeout=60).json()
    legend_colours = {entry["colour"] for entry in description["legend"]}

    # the map: drawn, in the legend's colours only, more than one class, the size of the SVG image
    picture = browser.execute_async_script(PICTURE_COLOURS)
    assert picture is not None, "the map picture did not load in the page"
    assert set(picture["counts"]) <= legend_colours and len(picture["counts"]) >= 2
    assert sum(picture["counts"].values()) > 0.5 * picture["width"] * picture["height"]
    image_box = browser.execute_script("const b = document.getElementById('map-image').getBoundingClientRect();"
                                       "return [b.width, b.height];")  # fmt: skip
    assert image_box[0] > 300 and image_box[1] > 300
    assert browser.find_element(By.ID, "model-name").text.startswith(card["name"])

    # classify the demo's sample fields through the page
    browser.find_element(By.ID, "load-sample").click()
    _wait(browser, "document.getElementById('geojson').value.length > 0")
    assert json.loads(browser.find_element(By.ID, "geojson").get_property("value")) == demo_fields
    browser.find_element(By.ID, "classify").click()
    status = _wait(browser, "/fields: \\d+ classified/.test(document.getElementById('classify-status').textContent)"
                   " && document.getElementById('classify-status').textContent")  # fmt: skip
    answer = httpx.post(f"{server}/v1/fields:classify?source=demo", json=demo_fields, timeout=60).json()
    statuses = [feature["properties"]["status"] for feature in answer["features"]]
    assert re.match(rf"^{len(statuses)} fields: {statuses.count('ok')} classified", status), status
    paths = browser.find_elements(By.CSS_SELECTOR, "#fields path")
    assert len(paths) == len(answer["features"])

    # each field coloured as its predicted crop; one field's details on click
    colour_of = {entry["id"]: entry["colour"] for entry in description["legend"]}
    fills = browser.execute_script("return [...document.querySelectorAll('#fields path')].map(p => p.getAttribute('fill'))")
    want = [colour_of[f["properties"]["crop_id"]] if f["properties"]["status"] == "ok" else None
            for f in answer["features"]]  # fmt: skip
    assert fills == want
    index = max(range(len(paths)), key=lambda i: paths[i].size["width"] * paths[i].size["height"])
    ActionChains(browser).move_to_element(paths[index]).click().perform()
    details = browser.find_element(By.ID, "field-details").text
    chosen = answer["features"][index]["properties"]
    assert f"crop {chosen['crop']} ({chosen['crop_code']})" in details
    assert f"confidence {round(100 * chosen['confidence'])}%" in details
    top = sorted(chosen["probabilities"].items(), key=lambda item: -item[1])[:3]
    assert all(code in details for code, _ in top)
    assert browser.find_element(By.ID, "download").get_attribute("href").startswith("blob:")

    shot = tmp_path / "viewer.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_VARIABLE):
        shutil.copyfile(shot, os.environ[SCREENSHOT_VARIABLE])
