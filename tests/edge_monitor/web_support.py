"""Helpers for the web view tests: plain HTTP requests and a headless Chromium.

Chromium and its driver are Debian's (`chromium`, `chromium-driver`, installed by
tools/setup.sh); selenium is pointed at both binaries, so it never looks for a browser or
driver of its own. Screenshots go to `$EDGE_MONITOR_SCREENSHOTS` when it is set (the
committed ones in docs/screenshots/ were taken that way), else into the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT_ENV = "EDGE_MONITOR_SCREENSHOTS"
WAIT_S = 30.0


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(url: str, method: str = "GET", headers: Mapping[str, str] | None = None,
         body: bytes | None = None, timeout_s: float = 10.0) -> Reply:
    """One request; a 4xx/5xx answer is returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Show redirects to the test (a login redirect is what it checks)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post_json(url: str, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
              ) -> Reply:
    return http(url, "POST", {"Content-Type": "application/json", **(headers or {})},
                json.dumps(payload).encode())


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def connected(driver: Any) -> bool:
    """Whether the page's event stream is up (False between two pages, as after a login)."""
    from selenium.common.exceptions import WebDriverException

    try:
        return driver.execute_script(
            "return document.body ? document.body.dataset.connected : null") == "yes"
    except WebDriverException:
        return False


def screenshot_path(tmp_path: Path, name: str) -> Path:
    target = os.environ.get(SCREENSHOT_ENV)
    directory = Path(target) if target else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A headless Chromium driven by selenium; skipped where Debian's packages are missing."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists() and shutil.which(Path(binary).name) is None:
            pytest.skip(f"{binary} is missing: apt-get install chromium chromium-driver "
                        "(tools/setup.sh does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1100,900", "--mute-audio"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
