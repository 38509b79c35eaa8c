"""The trace viewer in a real headless Chromium (Debian's, driven by Playwright for Python)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentry_tracing_mw.collector import Collector

from .test_collector import _three_transaction_trace, child, hexid, post, tx_envelope, tx_payload

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]


def _chromium() -> str | None:
    for candidate in (
        os.environ.get("CHROMIUM_PATH"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium executable (install Debian's: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(10_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            yield page, errors
        finally:
            context.close()


def test_viewer_list_trace_child_link_waterfall(tmp_path: Path, browser_page: Any) -> None:
    page, errors = browser_page
    collector = Collector(str(tmp_path / "traces.sqlite3"), port=0).start()
    try:
        trace_id = hexid(0xB0B, 32)
        now = time.time() - 5
        _three_transaction_trace(collector, trace_id, now)
        other, root = hexid(0xC0C, 32), hexid(0xC0C, 16)
        assert (
            post(
                collector,
                tx_envelope(
                    tx_payload(
                        other,
                        root,
                        "GET /checkout",
                        now,
                        0.1,
                        spans=[
                            child(other, hexid(0xC0D, 16), root, "db", "SELECT 1", now + 0.01, 0.02)
                        ],
                        release="storefront@1",
                    ),
                    sample_rate="0.5",
                ),
            ).status_code
            == 200
        )

        # 1. the transaction list
        page.goto(collector.url + "/")
        page.wait_for_selector("#summary")
        row = page.locator("tr.summary-row[data-name='GET /checkout']")
        assert row.locator("td.count").inner_text() == "2"
        assert row.locator("td.extrapolated").inner_text() == "3"  # 1/1.0 + 1/0.5
        assert page.locator("tr.summary-row").count() == 4
        page.fill("#f-min", "250")
        page.click("#f-apply")
        page.wait_for_function("document.querySelectorAll('tr.summary-row').length === 1")
        assert page.locator("tr.summary-row td.count").inner_text() == "1"

        # 2. the transactions of one name, under the list's filters (min duration, status)
        page.locator("tr.summary-row[data-name='GET /checkout']").click()
        page.wait_for_selector("#tx-list")
        assert page.locator("#tx-list tr.tx-row").count() == 1  # the 300 ms one, not 100 ms
        assert "at least 250 ms" in page.inner_text("#tx-list-filters")
        page.click("text=← all transactions")
        page.wait_for_selector("#filters")
        page.fill("#f-min", "")
        page.select_option("#f-status", "failed")  # submits the filters
        page.wait_for_selector("tr.summary-row[data-name='GET /rate']")
        page.evaluate("location.hash = '#/name/' + encodeURIComponent('GET /checkout')")
        page.wait_for_selector("#tx-list")
        assert page.locator("#tx-list tr.tx-row").count() == 0  # none of them failed
        assert "status failed" in page.inner_text("#tx-list-filters")
        page.click("text=← all transactions")
        page.wait_for_selector("#filters")
        page.select_option("#f-status", "")
        page.wait_for_function("document.querySelectorAll('tr.summary-row').length === 4")
        row = page.locator("tr.summary-row[data-name='GET /checkout']")
        row.click()
        page.wait_for_selector("#tx-list")
        assert page.locator("#tx-list tr.tx-row").count() == 2
        page.locator("#tx-list tr.tx-row", has_text=trace_id).locator("td").first.click()
        page.wait_for_selector("#waterfall .wf-row")
        assert page.inner_text("#tx-title").startswith("GET /checkout")
        rows = page.locator("#waterfall .wf-row")
        # root, its missing-instrumentation gap (210-300 ms), the http.client span
        assert rows.count() == 3
        assert page.locator("#waterfall .wf-row.gap-row").count() == 1
        assert "missing instrumentation" in page.locator(".gap-row").inner_text()
        call = page.locator("#waterfall .wf-row", has_text="POST http://pricing/price")
        width = call.locator(".wf-bar").evaluate("e => e.style.width")
        assert float(width.rstrip("%")) == pytest.approx(200 / 300 * 100, rel=0.01)

        # 3. span details, then follow the child link to the downstream transaction
        call.click()
        page.wait_for_selector("#details #details-title")
        details = page.inner_text("#details")
        assert hexid(0xA2, 16) in details and "http.client" in details
        tables = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('#details h4')].map((h) =>
              [h.textContent, [...h.nextElementSibling.querySelectorAll('tr')].map((tr) =>
                [tr.querySelector('th').textContent, tr.querySelector('td').textContent])]))"""
        )
        assert tables["Tags"] == [["k", "v"]] and tables["Data"] == [["rows", "3"]]
        page.locator("#details-children a.child-link").click()
        page.wait_for_function(
            "document.querySelector('#tx-title') && "
            "document.querySelector('#tx-title').textContent.startsWith('POST /price')"
        )
        assert "GET /checkout" in page.inner_text("#parent-link")
        assert page.locator("#waterfall .wf-row:not(.gap-row)").count() == 2
        assert page.locator("#waterfall a.child-link").count() == 1  # on to the tax service

        # 4. search by trace id: every transaction across services, the orphan marked
        page.fill("#trace-search-input", trace_id)
        page.click("#trace-search button")
        page.wait_for_selector("#trace-units")
        assert page.locator("#trace-units tr.unit-row").count() == 4
        assert page.locator("#trace-units .badge.orphan").count() == 1
        assert "1 orphan transaction" in page.inner_text("#orphan-notice")
        spans = page.locator("#waterfall .wf-row:not(.gap-row)")
        assert spans.count() == 6
        depths = [int(spans.nth(i).get_attribute("data-depth")) for i in range(6)]
        assert depths == [0, 1, 2, 3, 4, 0]
        assert "orphan transaction" in spans.nth(5).inner_text()

        # 5. the minimap zooms the waterfall
        box = page.locator("#minimap").bounding_box()
        assert box is not None
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 0.1, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.3, y, steps=5)
        page.mouse.up()
        assert page.locator("#waterfall-card").get_attribute("data-zoomed") == "1"
        assert page.inner_text("#zoom-label").startswith("showing")
        page.locator("#waterfall .wf-row", has_text="GET /rate").click()
        shot = tmp_path / "viewer.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000  # kept with the test's temporary files
        page.click("#zoom-reset")
        assert page.locator("#waterfall-card").get_attribute("data-zoomed") == "0"
        assert not errors, errors
    finally:
        collector.stop()
