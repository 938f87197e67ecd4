"""The demo warehouse's report in a real browser (headless Chromium): it loads without console errors and without a
network request, every chart has drawn, and a screenshot is not blank.

Chromium is Debian's `chromium` (`make test` installs it with apt-get when it is missing and the user is root);
where there is none the test is skipped and says why.
"""

from __future__ import annotations

import re

import pytest

from chromium import blank_share, find_chromium, open_report

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium on PATH (install Debian's `chromium`: `make browser`, or apt-get install chromium; "
           "or set SMDA_CHROMIUM to a Chromium/Chrome binary)")


def test_the_report_loads_offline_and_draws_every_chart(demo_report):
    written, page = demo_report
    load = open_report(written.path)
    assert load.errors == []
    page_url = written.path.resolve().as_uri()
    elsewhere = [u for u in load.requests if u != page_url and not u.startswith(("data:", "blob:"))]
    assert elsewhere == [], f"the page requested {elsewhere}"
    n_figures = len(re.findall(r'<div id="fig-\d+" class="plotly-graph-div"', page))
    assert n_figures == written.n_figures >= 5  # policy, categories, pairs, mechanism, heatmap
    assert len(load.charts) == n_figures
    for chart in load.charts:
        assert chart["svg"] > 0 and chart["marks"] > 0, chart  # an SVG root and drawn bars, points or heatmap
    assert blank_share(load.screenshot) < 0.95  # a blank page is one colour
    assert load.seconds < 60
