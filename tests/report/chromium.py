"""Headless Chromium over the DevTools protocol: load a page, record its console errors and network requests,
check its charts, take a screenshot. No Selenium or Playwright: Debian's `chromium` and the `websockets`
package the environment already has are enough.

Used by the report's browser test and by `docs/screenshots.py`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from websockets.sync.client import connect

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHARTS_DRAWN = """(() => {
  const charts = [...document.querySelectorAll('div.plotly-graph-div')];
  return charts.map(c => ({id: c.id,
    svg: c.querySelectorAll('svg.main-svg').length,
    marks: c.querySelectorAll('g.trace path, g.trace .point, g.hm image, .heatmaplayer image').length}));
})()"""
"""Per Plotly chart on the page: how many SVG roots it has and how many marks (bars, points, heatmap images) it drew."""


def find_chromium() -> str | None:
    """The Chromium binary on PATH ($SMDA_CHROMIUM first), or None."""
    for name in (os.environ.get("SMDA_CHROMIUM"), *BINARIES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@dataclass
class PageLoad:
    """What one page load did: console errors, every request URL, the charts' marks, and a PNG screenshot."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    charts: list[dict] = field(default_factory=list)
    screenshot: bytes = b""
    seconds: float = 0.0


class Chromium:
    """One headless Chromium process and one page, driven by DevTools commands (a context manager)."""

    def __init__(self, binary: str | None = None, *, width: int = 1280, height: int = 900):
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise FileNotFoundError("no chromium on PATH")
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="smda-chromium-")
        self._proc = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self._profile}",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
             "--allow-file-access-from-files", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = self._page_socket()
        try:  # websockets ≥ 16 wants a context manager unless told this connection is managed by hand
            self._ws = connect(url, max_size=None, open_timeout=30, legacy=True)
        except TypeError:
            self._ws = connect(url, max_size=None, open_timeout=30)
        self._id = 0
        self.events: list[dict] = []

    def _page_socket(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        port = None
        while port is None:
            line = self._proc.stderr.readline()
            if not line and (self._proc.poll() is not None or time.monotonic() > deadline):
                raise RuntimeError(f"chromium did not start (exit {self._proc.poll()})")
            if "DevTools listening on ws://" in line:
                port = line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            if time.monotonic() > deadline:
                raise RuntimeError("chromium opened no page")
            time.sleep(0.1)

    def send(self, method: str, timeout: float = 60.0, **params) -> dict:
        """Run one DevTools command and return its result; events that arrive meanwhile are kept in `events`."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60.0) -> dict:
        """The first event named `event` (already received or the next to arrive)."""
        for message in self.events:
            if message.get("method") == event:
                return message
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(message)
            if message.get("method") == event:
                return message

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def load(self, url: str, *, full_page: bool = False, max_height: int = 12000, settle_s: float = 0.5) -> PageLoad:
        """Open `url`, wait for its load event and for every Plotly chart to have drawn, and screenshot it."""
        t0 = time.monotonic()
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        charts: list[dict] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # Plotly draws synchronously, but give layout a moment
            charts = self.evaluate(CHARTS_DRAWN) or []
            if charts and all(c["svg"] and c["marks"] for c in charts):
                break
            time.sleep(0.2)
        time.sleep(settle_s)
        if full_page:
            height = int(self.evaluate("document.documentElement.scrollHeight") or self.height)
            self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=min(height, max_height),
                      deviceScaleFactor=1, mobile=False)
            time.sleep(settle_s)
        shot = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        self.send("Runtime.evaluate", expression="0")  # flush events that arrived during the screenshot
        return PageLoad(errors=self._errors(), requests=self._requests(), charts=charts, screenshot=shot,
                        seconds=time.monotonic() - t0)

    def _errors(self) -> list[str]:
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return out

    def _requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self._ws.close()
        finally:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def blank_share(png: bytes) -> float:
    """Share of the screenshot's pixels that have the most common colour (1.0 = a blank page)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height)
    return max(n for n, _ in colours) / (image.width * image.height)


def open_report(path: Path, **kwargs) -> PageLoad:
    """Load one report file in a fresh headless Chromium."""
    with Chromium() as browser:
        return browser.load(Path(path).resolve().as_uri(), **kwargs)
