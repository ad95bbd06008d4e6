"""The README's pictures: the web page in headless Chromium at 1200 and 390 px wide, before and
after an image is dropped, on any bundle; or any other page (TensorBoard, a label_issues.html).

Usage: .venv/bin/python docs/screenshots.py BUNDLE IMAGE [--output docs/images]
       .venv/bin/python docs/screenshots.py --url URL --file OUT.png [--wait-s 8] [--width 1200]
(needs chromium and chromium-driver, as the browser tests do)
"""

from __future__ import annotations

import argparse
import base64
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

WIDTHS = (1200, 390)
DROP = """const [name, data] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));"""


def _serve(bundle: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", bundle, "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/v1/ready", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("the server did not start")


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def main() -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?")
    parser.add_argument("image", nargs="?")
    parser.add_argument("--output", default="docs/images")
    parser.add_argument("--url", help="screenshot this page instead")
    parser.add_argument("--file", help="with --url: the PNG to write")
    parser.add_argument("--wait-s", type=float, default=8.0, help="with --url: seconds to let it draw")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    if args.url:
        driver = _browser()
        try:
            driver.set_window_size(args.width, args.height)
            driver.get(args.url)
            time.sleep(args.wait_s)
            driver.save_screenshot(args.file)
        finally:
            driver.quit()
        return
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    image = Path(args.image)
    data = base64.b64encode(image.read_bytes()).decode()
    process, url = _serve(args.bundle)
    driver = _browser()
    try:
        for width in WIDTHS:
            driver.set_window_size(width, 1000)
            driver.get(url + "/")
            WebDriverWait(driver, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
            driver.save_screenshot(str(output / f"page-{width}-before.png"))
            driver.execute_script(DROP, image.name, data)
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result figure.cam img"))
            time.sleep(0.5)  # the Grad-CAM picture finishes drawing
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, max(1000, height + 40))
            driver.save_screenshot(str(output / f"page-{width}-after.png"))
            print(f"{width} px: {output}/page-{width}-before.png, page-{width}-after.png")
    finally:
        driver.quit()
        process.terminate()


if __name__ == "__main__":
    main()
