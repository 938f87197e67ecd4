"""Screenshots for docs/report.md: the HTML report of a warehouse, and the policy asset in the Dagster UI.

    PYTHONPATH=. .venv/bin/python docs/screenshots.py [--warehouse warehouse/warehouse.duckdb]

The report is opened from its file in headless Chromium. For the UI, a dagster-webserver is started on the
warehouse's own instance (`<stem>.files/dagster`, where `smda demo` recorded the materialisations) and
the policy asset's page is opened; the markdown metadata (formula and coefficient chart) is opened
the way a user does, by its "Show Markdown" button. Writes docs/figures/report*.png and docs/figures/ui_*.png.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "report"))

from chromium import Chromium  # noqa: E402

FIGURES = ROOT / "docs" / "figures"


def report_shots(report: Path) -> None:
    """The top of the report (policy and category gaps) and the pairs section, at a laptop's width."""
    with Chromium(width=1280, height=1500) as browser:
        browser.load(report.resolve().as_uri())
        for name, anchor in (("report.png", None), ("report_pairs.png", "pairs"), ("report_mechanism.png", "mechanism")):
            if anchor:
                browser.evaluate(f"document.getElementById('{anchor}').scrollIntoView()")
                time.sleep(0.5)
            (FIGURES / name).write_bytes(_shot(browser))


def _shot(browser: Chromium) -> bytes:
    import base64

    return base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui_shots(warehouse: Path) -> None:
    """The policy asset's page in dagster-webserver, and its coefficient chart opened from the metadata."""
    home = warehouse.with_name(warehouse.stem + ".files") / "dagster"
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-m", "smda_assets.definitions",
                               "-h", "127.0.0.1", "-p", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("dagster-webserver did not start")
                time.sleep(1)
        with Chromium(width=1400, height=1100) as browser:
            browser.load(f"http://127.0.0.1:{port}/assets/policy", settle_s=1)
            _wait_text(browser, "coefficients", 120)
            time.sleep(2)
            browser.evaluate("""(() => { const skip = [...document.querySelectorAll('button')].find(
                b => b.innerText.trim() === 'Skip'); if (skip) skip.click(); })()""")  # the first-visit newsletter dialog
            time.sleep(1)
            browser.evaluate("""(() => { const h = [...document.querySelectorAll('div, span, h3')].find(
                e => e.children.length === 0 && e.innerText.trim() === 'Metadata'); if (h) h.scrollIntoView(); })()""")
            time.sleep(1)
            (FIGURES / "ui_policy.png").write_bytes(_shot(browser))
            opened = browser.evaluate("""(() => {
                const rows = [...document.querySelectorAll('tr')].filter(r => r.innerText.includes('coefficients'));
                const button = rows.length ? [...rows[0].querySelectorAll('button, a')].find(
                    b => /markdown/i.test(b.innerText)) : null;
                if (button) { button.click(); return true; } return false; })()""")
            time.sleep(2)
            if opened:
                (FIGURES / "ui_policy_coefficients.png").write_bytes(_shot(browser))
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_text(browser: Chromium, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if browser.evaluate(f"document.body.innerText.includes({text!r})"):
            return
        time.sleep(1)
    raise RuntimeError(f"the page never showed {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default="warehouse/warehouse.duckdb")
    parser.add_argument("--skip-ui", action="store_true")
    parser.add_argument("--skip-report", action="store_true")
    args = parser.parse_args()
    warehouse = Path(args.warehouse).resolve()
    FIGURES.mkdir(parents=True, exist_ok=True)
    if not args.skip_report:
        report_shots(warehouse.with_name(warehouse.stem + ".files") / "report.html")
    if not args.skip_ui:
        ui_shots(warehouse)
    print("\n".join(str(p) for p in sorted(FIGURES.glob("report*.png")) + sorted(FIGURES.glob("ui_*.png"))))


if __name__ == "__main__":
    main()
