"""The web page in a real headless browser (Debian's chromium + chromium-driver through selenium) against a
real ``magnet-fast serve``: type a prompt, press Generate, and a playable WAV appears in an <audio>."""
from __future__ import annotations

import base64
import io
import os
import shutil
import tempfile
import wave

import pytest

from tests.serve.helpers import need_serve_extra

need_serve_extra()

CHROMIUM = os.environ.get("MAGNET_FAST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = os.environ.get("MAGNET_FAST_CHROMEDRIVER") or shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1100,900", "--autoplay-policy=no-user-gesture-required"]


def browser(profile: str):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not CHROMIUM or not DRIVER:
        pytest.skip("no chromium / chromedriver (apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def generate_on_page(driver, url: str, prompt: str, seed: int, shot=None) -> dict:
    """Open the page, fill the form, press Generate, wait for the result; returns what the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait
    driver.get(url + "/")
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    Select(driver.find_element(By.ID, "model")).select_by_value("magnet")
    driver.find_element(By.ID, "text").send_keys(prompt)
    for field, value in (("duration", "1"), ("seed", str(seed))):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 300).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results li audio")))
    # the element has the audio loaded and decodable: metadata read, a duration, no media error
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "const a = document.querySelector('#results audio'); return a.readyState >= 1 && a.duration > 0;"))
    state = driver.execute_script("""
        const a = document.querySelector('#results audio');
        const link = document.querySelector('#results a');
        return {duration: a.duration, error: a.error ? a.error.code : null, src: a.src,
                download: link.getAttribute('download'), href: link.href,
                meta: document.querySelector('#results .meta').textContent,
                prompt: document.querySelector('#results .prompt').textContent,
                status: document.getElementById('status').textContent};""")
    # the bytes behind the player (the blob the page made from the response)
    state["wav"] = base64.b64decode(driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.querySelector('#results audio').src).then(r => r.arrayBuffer()).then(buf => {
          let s = ''; const b = new Uint8Array(buf);
          for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode.apply(null, b.subarray(i, i + 8192));
          done(btoa(s)); });"""))
    if shot is not None:
        driver.save_screenshot(str(shot))
    return state


def test_page_generates_a_playable_wav_in_a_real_browser(server, tmp_path):
    import httpx
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        driver = browser(profile)
        try:
            driver.set_script_timeout(60)
            shot = tmp_path / "page.png"
            state = generate_on_page(driver, server.url, "lo-fi beat with piano", 7, shot)
        finally:
            driver.quit()
    assert state["error"] is None and abs(state["duration"] - 1.0) < 1e-3, state
    assert state["src"].startswith("blob:") and state["href"] == state["src"]
    assert state["download"].endswith("_seed7.wav") and "seed 7" in state["meta"] and "latency" in state["meta"]
    assert state["prompt"] == "lo-fi beat with piano" and state["status"] == ""
    with wave.open(io.BytesIO(state["wav"])) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 32000, 32000)
    same = httpx.post(server.url + "/v1/generate", json={"model": "magnet", "text": "lo-fi beat with piano",
                                                         "seed": 7, "duration": 1.0}, timeout=600)
    assert state["wav"] == same.content                        # the player holds the server's exact bytes
    assert shot.stat().st_size > 10_000
    if os.environ.get("MAGNET_FAST_SCREENSHOT"):                 # docs/serve-page.png is made this way
        shutil.copy(shot, os.environ["MAGNET_FAST_SCREENSHOT"])
