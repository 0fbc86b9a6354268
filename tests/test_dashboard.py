"""The dashboard in a real browser (Debian's headless Chromium through chromedriver), over real data:
a worker that consumed generated traffic from the session's broker serves it at /ui/ (bound
beyond 127.0.0.1, so with a token), then `tally ui` serves the same over the data directory.

Each page loads with no console errors and a screenshot is kept (.tally/test-artifacts/dashboard/);
the numbers shown equal ClickHouse's for the same filters; changing a filter changes them; a click
opens the side panel, whose link drills into the related page with the filter applied.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, WorkerProcess, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

TOKEN = "dashboard-test-token"
ARTIFACTS = ROOT / ".tally" / "test-artifacts" / "dashboard"
PAGES = ("overview", "trends", "apps", "functions", "objects", "errors", "users", "retention", "funnels", "search",
         "pipeline")
TODAY = dt.datetime.now(dt.timezone.utc).date()
DAYS = 12
SEED = 31
USERS = 60


# ---- the data and the servers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def served(bootstrap, tmp_path_factory):
    """A worker bound to 0.0.0.0 (with TALLY_UI_TOKEN) that consumed 12 days of traffic up to yesterday."""
    from streams.config import Topics

    prefix = f"d{uuid.uuid4().hex[:8]}-"
    env = {**os.environ, "TALLY_WEB_BIND": "0.0.0.0", "TALLY_UI_TOKEN": TOKEN}
    worker = WorkerProcess(tmp_path_factory.mktemp("dashboard"), bootstrap, prefix, f"tally-{prefix[:-1]}", [],
                           env=env)
    worker.headers = {"Authorization": f"Bearer {TOKEN}"}
    topics = Topics.with_prefix(prefix)
    try:
        yield load_traffic(worker, bootstrap, topics)
    finally:
        worker.stop()


def load_traffic(worker, bootstrap, topics) -> WorkerProcess:
    from streams.producer.generator import generate_actions, generate_profiles, publish_traffic

    # up to yesterday: events later than now would be dead-lettered as from the future
    actions = list(generate_actions(seed=SEED, start_day=TODAY - dt.timedelta(days=DAYS), days=DAYS, users=USERS,
                                    events_per_day=250))
    worker.start().wait_assigned()
    acked, failed = asyncio.run(publish_traffic(bootstrap, topics.user_actions, actions,
                                                profiles=generate_profiles(SEED, USERS),
                                                profiles_topic=topics.user_profiles, envelope=50))
    assert (acked, failed) == (len(actions), 0)
    stats = worker.wait_consumed(len(actions))
    assert (stats["delivered"], stats["dead_lettered"]) == (len(actions), 0)
    deadline = time.monotonic() + 120
    while worker.query("SELECT count() FROM user_profiles FINAL") != [[USERS]]:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.5)
    return worker


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are missing: `make install` installs them"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def open_page(browser, url: str, timeout: float = 30.0) -> None:
    browser.get(url)
    wait_ready(browser, timeout)


def wait_ready(browser, timeout: float = 30.0, previous: str | None = None) -> None:
    """Until the page's data is on screen (the script marks <body data-state="ready">)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = browser.execute_script("return document.body.dataset.state")
        if state == "error":
            raise AssertionError(browser.find_element("id", "error").text)
        if state == "ready" and browser.execute_script("return location.search") != previous:
            time.sleep(0.3)  # charts are drawn on the next animation frame
            return
        time.sleep(0.1)
    raise TimeoutError(f"page not ready: {browser.current_url}")


def console_errors(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def tiles(browser) -> dict[str, int]:
    return {tile.get_attribute("data-tile"): float(tile.get_attribute("data-value"))
            for tile in browser.find_elements("css selector", ".tile")}


def table(browser, panel: str) -> list[dict[str, str]]:
    columns = [th.get_attribute("data-column") for th in browser.find_elements("css selector", f"#table-{panel} th")]
    return [dict(zip(columns, (td.get_attribute("data-value") for td in tr.find_elements("tag name", "td"))))
            for tr in browser.find_elements("css selector", f"#table-{panel} tbody tr")]


def choose(browser, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select
    before = browser.execute_script("return location.search")
    Select(browser.find_element("id", select_id)).select_by_value(value)
    wait_ready(browser, previous=before)


def rolling(worker, app: str, day: str) -> dict[str, int]:
    """DAU/WAU/MAU on `day` straight from ClickHouse, as an analyst would count them."""
    where = f"AND app = '{app}'" if app else ""
    answer = {}
    for metric, width in (("dau", 1), ("wau", 7), ("mau", 28)):
        (n,), = worker.query(f"SELECT uniqExact(user) FROM user_actions WHERE ds BETWEEN toDate('{day}') - {width - 1}"
                             f" AND toDate('{day}') {where}")
        answer[metric] = n
    return answer


# ---- through the worker's /ui/ ------------------------------------------------------------------

def test_every_page_loads_with_no_console_errors(served, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    open_page(browser, f"{served.web}/ui/?token={TOKEN}")  # the token once: the cookie carries it on
    for page in PAGES:
        open_page(browser, f"{served.web}/ui/?page={page}")
        assert browser.execute_script("return document.body.dataset.page") == page
        problems = [p.text for p in browser.find_elements("css selector", ".problem")]
        assert problems == [], page
        assert console_errors(browser) == [], page
        browser.save_screenshot(str(ARTIFACTS / f"{page}.png"))
    assert (ARTIFACTS / "overview.png").stat().st_size > 10_000


def test_overview_numbers_equal_clickhouse_and_follow_the_filters(served, browser):
    open_page(browser, f"{served.web}/ui/?page=overview")
    shown = tiles(browser)
    note = browser.find_element("css selector", '[data-tile="dau"] .note').text
    day = note.split()[1].rstrip(",")
    assert {m: shown[m] for m in ("dau", "wau", "mau")} == rolling(served, "", day)
    assert shown["stickiness_percent"] == pytest.approx(shown["dau"] * 100 / shown["mau"])
    # the worker's live tables, shown next to them, hold the same numbers on the stream's current day
    live = {r["metric"]: r["value"] for r in served.active_users()
            if r["app"] == "*" and r["day"] == day and r["metric"] in ("dau", "wau", "mau")}  # on a Monday calendar WAU too
    assert {m: shown[f"live_{m}"] for m in ("dau", "wau", "mau")} == live

    choose(browser, "f-app", "bi")
    assert "app=bi" in browser.current_url
    narrowed = tiles(browser)
    assert {m: narrowed[m] for m in ("dau", "wau", "mau")} == rolling(served, "bi", day)
    assert narrowed["mau"] < shown["mau"]

    choose(browser, "f-role", "Analyst")
    analysts = served.query(f"SELECT uniqExact(user) FROM user_actions WHERE app = 'bi' AND ds > toDate('{day}') - 28 "
                            f"AND ds <= toDate('{day}') AND user IN (SELECT user FROM user_profiles FINAL "
                            f"WHERE title = 'Analyst')")[0][0]
    assert tiles(browser)["mau"] == analysts < narrowed["mau"]


def test_functions_match_clickhouse_and_a_click_drills_into_recent_events(served, browser):
    since, until = TODAY - dt.timedelta(days=6), TODAY
    open_page(browser, f"{served.web}/ui/?page=functions&app=amundsen&since={since}&until={until}")
    rows = table(browser, "command_usage")
    expected = {command: (calls, users) for command, calls, users in served.query(
        f"SELECT command, count(), uniqExact(user) FROM user_actions FINAL WHERE app = 'amundsen' "
        f"AND ds BETWEEN '{since}' AND '{until}' GROUP BY command")}
    assert {r["command"]: (int(r["calls"]), int(r["users"])) for r in rows} == expected

    command = rows[0]["command"]
    browser.find_element("css selector", '#table-command_usage tbody tr[data-row="0"]').click()
    side = browser.find_element("id", "side")
    assert side.is_displayed() and command in side.text
    before = browser.execute_script("return location.search")
    side.find_element("partial link text", f"Recent events of {command}").click()
    wait_ready(browser, previous=before)
    assert f"command={command}" in browser.current_url and "app=amundsen" in browser.current_url
    events = table(browser, "recent_events")
    assert events and {e["command"] for e in events} == {command} and {e["app"] for e in events} == {"amundsen"}


def test_apps_point_opens_that_apps_functions(served, browser):
    open_page(browser, f"{served.web}/ui/?page=apps")
    apps = table(browser, "apps")
    counts = dict(served.query(f"SELECT app, count() FROM user_actions FINAL WHERE ds >= '{TODAY - dt.timedelta(27)}' "
                               f"GROUP BY app"))
    assert {a["app"]: int(a["events"]) for a in apps} == counts
    # a click on the scatter's point: Plotly's own click event on the drawn marker
    from selenium.webdriver import ActionChains
    point = browser.find_elements("css selector", "#chart-apps .scatterlayer .point")[0]
    ActionChains(browser).move_to_element(point).click().perform()
    side = browser.find_element("id", "side")
    assert side.is_displayed()
    app = side.find_element("css selector", "dd").text
    before = browser.execute_script("return location.search")
    side.find_element("partial link text", f"Functions of {app}").click()
    wait_ready(browser, previous=before)
    assert browser.execute_script("return document.body.dataset.page") == "functions"
    assert {r["app"] for r in table(browser, "command_usage")} == {app}


def test_an_email_typed_on_the_users_page_finds_the_person(served, browser):
    from streams.producer.generator import people_of
    email = people_of(SEED, USERS)[0][0]
    open_page(browser, f"{served.web}/ui/?page=users")
    box = browser.find_element("id", "i-user")
    box.send_keys(email)
    before = browser.execute_script("return location.search")
    box.send_keys("\n")
    wait_ready(browser, previous=before)
    panel = browser.find_element("id", "panel-user_stats")
    assert "stored as its pseudonym" in panel.text
    stats = table(browser, "user_stats")
    pseudonym = panel.text.split("pseudonym ")[1].split()[0]
    (events,), = served.query(f"SELECT count() FROM user_actions FINAL WHERE user = '{pseudonym}' "
                              f"AND ds > today() - 30")
    assert stats and sum(int(r["events"]) for r in stats) == events


def test_the_worker_asks_for_its_token_and_refuses_writes(served):
    def call(path, data=None, headers=None, method=None):
        request = urllib.request.Request(served.web + path, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    drop = json.dumps({"sql": "DROP TABLE user_actions"}).encode()
    assert call("/query/", drop)[0] == 401
    assert call("/ui/api/meta")[0] == 401
    assert call("/ui/api/meta", headers={"Authorization": "Bearer wrong"})[0] == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, body = call("/query/", drop, auth)
    assert status == 400 and b"only read" in body
    for sql in ("INSERT INTO user_actions (event_id) VALUES ('x')", "ALTER TABLE user_actions DELETE WHERE 1",
                "TRUNCATE TABLE user_actions", "SELECT 1; DROP TABLE user_actions"):
        assert call("/query/", json.dumps({"sql": sql}).encode(), auth)[0] in (400, 403), sql
    assert call("/ui/api/page?page=overview", b"{}", auth, method="POST")[0] in (404, 405)
    # filters are bound as values, never pasted into SQL
    status, _ = call("/ui/api/page?page=functions&app=x%27%3B%20DROP%20TABLE%20user_actions%3B%20--", headers=auth)
    assert status == 200
    assert served.query("SELECT count() > 0 FROM user_actions") == [[1]]
    assert call("/stats/")[0] == 200  # probes and scrapes need no token


def test_a_funnel_split_by_flag_is_tested_for_significance(served, browser):
    open_page(browser, f"{served.web}/ui/?page=funnels")
    choose(browser, "i-flag", "new_search_ui")
    funnel = table(browser, "funnel")
    tests = table(browser, "funnel-tests")
    variants = sorted({row["variant"] for row in funnel})
    assert len(variants) >= 2 and len(tests) == len(variants) - 1
    users = {(row["variant"], row["step"]): int(row["users"]) for row in funnel}
    for test in tests:
        assert test["baseline"] == variants[0]
        assert float(test["rate_percent"]) == pytest.approx(
            users[test["variant"], test["step"]] * 100 / users[test["variant"], "1"], abs=0.01)


def test_two_proportion_z_test_by_hand():
    from streams.analyst.significance import two_proportion_z
    z, p = two_proportion_z(60, 100, 40, 100)  # pooled 0.5: se = sqrt(0.25 * 0.02)
    assert z == pytest.approx(0.2 / (0.25 * 0.02) ** 0.5) and p == pytest.approx(0.004678, abs=1e-6)
    assert two_proportion_z(0, 10, 0, 10) is None and two_proportion_z(1, 0, 1, 1) is None


# ---- `tally ui` over the data directory, once the worker is gone ----------------------------------

def test_tally_ui_serves_the_same_numbers_from_the_data_dir(served, browser):
    expected = {"apps": dict(served.query(f"SELECT app, uniqExact(user) FROM user_actions "
                                          f"WHERE ds >= '{TODAY - dt.timedelta(27)}' GROUP BY app"))}
    served.stop()
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "streams.cli", "ui", "--data-dir", str(served.data_dir),
                           "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        first = ui.stdout.readline()
        assert first.startswith(f"dashboard: http://127.0.0.1:{port}/"), first
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/page?page=apps", timeout=30) as answer:
            page = json.loads(answer.read())
        apps = page["panels"][0]
        assert {row[0]: row[1] for row in apps["rows"]} == expected["apps"]
        open_page(browser, f"http://127.0.0.1:{port}/?page=overview")
        assert console_errors(browser) == []
        assert set(tiles(browser)) == {"dau", "wau", "mau", "stickiness_percent"}  # no worker: no live tiles
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/page?page=overview", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 405
    finally:
        ui.terminate()
        ui.wait(30)


def test_a_report_file_draws_its_chart_offline(tmp_path, browser):
    """`tally report`'s HTML, opened from disk: Plotly.js from the file next to it draws the chart."""
    from streams.analyst import kpis
    from streams.analyst.output import write_report_files
    kpi = kpis.get_kpi("wau")
    monday = TODAY - dt.timedelta(days=TODAY.weekday())
    rows = [(monday - dt.timedelta(weeks=1), 40, 0), (monday, 12, 1)]
    params = kpis.bind_params(kpi, {"since": str(monday - dt.timedelta(weeks=1))})
    html_path, *_ = write_report_files(tmp_path / "reports" / "wau", kpi, params, ["week", "active_users", "partial"],
                                       rows)
    browser.get(html_path.as_uri())
    deadline = time.monotonic() + 20
    while not browser.find_elements("css selector", "#chart .main-svg .scatterlayer .point"):
        assert time.monotonic() < deadline, "the chart was not drawn"
        time.sleep(0.2)
    assert len(browser.find_elements("css selector", "#chart .scatterlayer .point")) == 2
    assert "partial week" in browser.find_element("tag name", "body").text
    assert console_errors(browser) == []
