"""`tally query` and `tally report`: output formats, charts, errors, and where queries run
(the worker's HTTP endpoint while a worker owns chDB, the data directory otherwise)."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import publish
from streams.analyst import charts, output
from streams.analyst import query as analyst
from streams.store import clickhouse
from streams.analyst import kpis
from streams.cli import main
from streams.config import Settings

DAY = dt.date(2024, 5, 6)  # a Monday


def sample_rows() -> list[list]:
    """(event_id, app, command, event_name, user, ts, ds, duration_ms): 3 users over 3 days."""
    rows = []
    for day in range(3):
        for n, user in enumerate(["ann", "bob", "cy"][: day + 1]):
            ts = dt.datetime.combine(DAY + dt.timedelta(days=day), dt.time(9, n), dt.timezone.utc)
            rows.append([f"e{day}{n}", "amundsen", "search_table", "Search Table", user, ts, ts.date(), 10 * (n + 1)])
    return rows


SAMPLE_COLUMNS = ["event_id", "app", "command", "event_name", "user", "ts", "ds", "duration_ms"]


def load_sample(client) -> None:
    client.insert("user_actions", sample_rows(), column_names=SAMPLE_COLUMNS)
    client.insert("user_actions", sample_rows()[:2], column_names=SAMPLE_COLUMNS)  # redelivered


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A data directory whose embedded ClickHouse holds the sample (no worker running)."""
    for name in ("TALLY_DATA_DIR", "TALLY_CLICKHOUSE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(data_dir=tmp_path)
    client = clickhouse.connect(settings.clickhouse_dsn)
    clickhouse.migrate(client)
    load_sample(client)
    return tmp_path


def tally(*argv) -> int:
    return main(list(argv))


# ---- formatting (pure) -----------------------------------------------------------------------

def test_format_table_aligns_and_counts_rows():
    text = output.format_table(["day", "users", "rate"], [(DAY, 12, 33.3333), (DAY, 7, None)])
    assert text.splitlines() == [
        "day         users   rate",
        "----------  -----  -----",
        "2024-05-06     12  33.33",
        "2024-05-06      7   NULL",
        "(2 rows)",
    ]


def test_format_table_cuts_long_cells_and_keeps_one_line_per_row():
    text = output.format_table(["error"], [("x" * 100 + "\nsecond line",)], max_cell=20)
    assert text.splitlines()[2] == "x" * 19 + "…"


def test_csv_and_json_keep_full_values():
    columns, rows = ["ds", "rate", "note"], [(DAY, 1 / 3, None)]
    assert output.format_csv(columns, rows) == f"ds,rate,note\n2024-05-06,{1 / 3!r},\n"
    assert json.loads(output.format_json(columns, rows)) == [{"ds": "2024-05-06", "rate": 1 / 3, "note": None}]


@pytest.mark.parametrize("values,line", [
    ([1, 2, 3, 4, 5, 6, 7, 8], "▁▂▃▄▅▆▇█"),
    ([0, 10, 0], "▁█▁"),
    ([5, 5, 5], "▄▄▄"),
    ([1, None, 8], "▁ █"),
    ([], ""),
])
def test_sparkline(values, line):
    assert output.sparkline(values) == line


def test_error_message_takes_the_clickhouse_line_out_of_driver_wrapping():
    wrapped = Exception("HTTPDriver for http://h:8123 received ClickHouse error code 62\n"
                        " Code: 62. DB::Exception: Syntax error: failed at position 1 (SELEC)\n more")
    assert analyst.error_message(wrapped) == "Code: 62. DB::Exception: Syntax error: failed at position 1 (SELEC)"


def test_chart_is_one_trace_per_variant_and_the_page_needs_no_network():
    kpi = kpis.get_kpi("retention")
    columns = ["week", "variant", "active_users", "returned_users", "retention_percent"]
    rows = [(DAY, "false", 10, 5, 50.0), (DAY, "true", 10, 7, 70.0),
            (DAY + dt.timedelta(weeks=1), "false", 8, 2, 25.0), (DAY + dt.timedelta(weeks=1), "true", 9, 3, 100 / 3)]
    figure = charts.figure(columns, rows, kpi.chart)
    assert [(t["name"], t["x"], t["y"], t["customdata"]) for t in figure["data"]] == [
        ("false", ["2024-05-06", "2024-05-13"], [50.0, 25.0], [0, 2]),
        ("true", ["2024-05-06", "2024-05-13"], [70.0, 100 / 3], [1, 3])]
    page = output.report_html("retention", "k=1", figure, columns, rows)
    assert '<script src="plotly.min.js"></script>' in page and "<table>" in page
    assert "http://" not in page and "https://" not in page


def test_partial_weeks_are_open_markers_and_said_so():
    kpi = kpis.get_kpi("wau")
    columns, rows = ["week", "active_users", "partial"], [(DAY, 5, 1), (DAY + dt.timedelta(weeks=1), 9, 0)]
    (trace,) = charts.figure(columns, rows, kpi.chart)["data"]
    assert trace["marker"]["symbol"] == ["circle-open", "circle"] and trace["text"] == ["partial period", ""]
    assert "partial week" in output.report_html("wau", "", charts.figure(columns, rows, kpi.chart), columns, rows)


def test_report_subtitle_says_the_filters_in_words():
    params = {"app": "", "since": kpis.EARLIEST, "until": DAY, "role": "", "team": "", "ab": "", "limit": 20}
    assert output.describe_params(params) == "all apps, from the first event to 2024-05-06, limit 20"
    params.update(app="bi", since=DAY, role="Analyst")
    assert output.describe_params(params) == "app bi, from 2024-05-06 to 2024-05-06, role Analyst, limit 20"


# ---- the worker endpoint's handler -----------------------------------------------------------

@pytest.mark.clickhouse
def test_handle_query_request(ch):
    load_sample(ch)
    status, answer = analyst.handle_query_request(
        ch, {"sql": "SELECT ds, active_users FROM kpi_dau WHERE app = {app:String} ORDER BY ds",
             "parameters": {"app": "amundsen"}})
    assert status == 200
    assert answer == {"columns": ["ds", "active_users"],
                      "rows": [[DAY, 1], [DAY + dt.timedelta(days=1), 2], [DAY + dt.timedelta(days=2), 3]]}

    status, answer = analyst.handle_query_request(ch, {"sql": "SELEC 1"})
    assert (status, answer["error"]) == (400, "'SELEC' is not a keyword of a query; did you mean SELECT?")
    status, answer = analyst.handle_query_request(ch, {"sql": "SELECT (1 FROM user_actions"})
    assert status == 400 and answer["error"].startswith("Code: 62. DB::Exception: Syntax error")
    assert "\n" not in answer["error"]

    assert analyst.handle_query_request(ch, {"query": "SELECT 1"})[0] == 400
    assert analyst.handle_query_request(ch, {"sql": "SELECT 1", "parameters": [1]})[0] == 400


@pytest.mark.clickhouse
def test_empty_result_keeps_its_column_names(ch):
    assert analyst.run_query(ch, "SELECT ds, active_users FROM kpi_dau WHERE app = 'none'") == (
        ["ds", "active_users"], [])


# ---- where queries run -----------------------------------------------------------------------

def load_sample_into(data_dir: Path) -> None:
    """The sample into a data directory's embedded ClickHouse, from a process of its own that exits
    (chDB lets one process own a data directory at a time)."""
    code = ("import sys, pathlib; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from streams.store import clickhouse\nfrom streams.config import Settings\nimport test_analyst\n"
            "client = clickhouse.connect(Settings(data_dir=pathlib.Path(sys.argv[3])).clickhouse_dsn)\n"
            "clickhouse.migrate(client)\ntest_analyst.load_sample(client)\n")
    here = Path(__file__).resolve().parent
    subprocess.run([sys.executable, "-c", code, str(here.parent), str(here), str(data_dir)], check=True)


@pytest.fixture
def running_worker(pipeline_env, tmp_path, monkeypatch):
    """A real worker process that owns a data directory holding the sample."""
    for name in ("TALLY_DATA_DIR", "TALLY_CLICKHOUSE"):
        monkeypatch.delenv(name, raising=False)
    load_sample_into(tmp_path / "w1")
    worker = pipeline_env.worker("w1").start()

    def never_open_it(dsn):
        raise AssertionError(f"opened {dsn} while the worker owns it")
    monkeypatch.setattr(clickhouse, "connect", never_open_it)
    yield tmp_path / "w1", worker
    worker.stop()


@pytest.mark.kafka
def test_query_goes_through_the_running_worker(running_worker, capsys):
    data_dir, _ = running_worker
    target = analyst.open_query_target(Settings(data_dir=data_dir))
    assert isinstance(target, analyst.WorkerTarget)
    columns, rows = target.query("SELECT user, count() AS n FROM kpi_actions WHERE ds >= {since:Date} "
                                 "GROUP BY user ORDER BY user", {"since": DAY + dt.timedelta(days=1)})
    assert (columns, rows) == (["user", "n"], [("ann", 2), ("bob", 2), ("cy", 1)])
    with pytest.raises(analyst.QueryError, match="^Code: 60. DB::Exception: Unknown table"):
        target.query("SELECT * FROM no_such_table")

    # The user types the same command; it never opens the data directory the worker owns.
    assert tally("query", "SELECT count() AS events FROM kpi_actions", "--data-dir", str(data_dir),
                 "--format", "csv") == 0
    assert capsys.readouterr().out == "events\n6\n"


@pytest.mark.kafka
def test_sql_through_the_running_worker_is_read_only(running_worker, pipeline_env, capsys):
    """Its port may be reachable by more than its owner: SQL that would change data or tables is
    refused (a worker started with --admin-sql takes it, as test_stream_guarantees' do)."""
    data_dir, _ = running_worker
    target = analyst.open_query_target(Settings(data_dir=data_dir))
    for sql in ("DROP TABLE user_actions", "ALTER TABLE user_actions DELETE WHERE 1",
                "INSERT INTO user_profiles (user) VALUES ('mallory')"):
        with pytest.raises(analyst.QueryError, match="only read: add --admin"):
            target.query(sql)
    assert target.query("SELECT count() FROM kpi_actions")[1] == [(6,)]
    assert target.query("SELECT count() FROM user_profiles WHERE user = 'mallory'")[1] == [(0,)]
    # and the worker still writes what it takes: a refused statement left its store writable
    from streams.contract import UserAction
    event = UserAction(event_id="after-refusal", app="amundsen", command="search_table", user="dee", schema_version=1,
                       start_epoch_ms=int(time.time() * 1000), end_epoch_ms=int(time.time() * 1000) + 5)
    asyncio.run(publish(pipeline_env.bootstrap, pipeline_env.topics.user_actions,
                        [(b"dee", event.SerializeToString())]))
    running_worker[1].wait_consumed(1)
    assert target.query("SELECT count() FROM user_actions WHERE event_id = 'after-refusal'")[1] == [(1,)]


@pytest.mark.kafka
def test_report_through_the_running_worker(running_worker, capsys):
    data_dir, _ = running_worker
    assert tally("report", "dau", "--app", "amundsen", "--since", str(DAY), "--until", str(DAY + dt.timedelta(days=6)),
                 "--data-dir", str(data_dir)) == 0
    out = capsys.readouterr().out
    assert "2024-05-08             3" in out and "active_users: ▁▅█  (min 1, max 3)" in out
    assert (data_dir / "reports" / "dau.html").exists()


def test_a_stale_worker_file_means_open_the_data_directly(data_dir):
    finished = subprocess.Popen(["true"])
    finished.wait()
    (data_dir / "worker.json").write_text(json.dumps({"pid": finished.pid, "web_port": 1}))
    target = analyst.open_query_target(Settings(data_dir=data_dir))
    assert isinstance(target, analyst.DirectTarget)
    assert target.query("SELECT count() FROM kpi_actions") == (["count()"], [(6,)])


def test_a_server_dsn_never_uses_the_worker_file(tmp_path, capsys):
    (tmp_path / "worker.json").write_text(json.dumps({"pid": os.getpid(), "web_port": 9}))
    assert analyst.running_worker(tmp_path) is not None
    settings = Settings(data_dir=tmp_path, clickhouse="http://analyst:s3cret@127.0.0.1:9/db")
    with pytest.raises(analyst.QueryError, match=r"^cannot open ClickHouse at http://analyst:\*\*\*@127.0.0.1:9/db"):
        analyst.open_query_target(settings)  # nothing listens on port 9: it went to the server itself

    assert tally("query", "SELECT 1", "--data-dir", str(tmp_path), "--clickhouse", settings.clickhouse) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open ClickHouse") and "s3cret" not in err and "Traceback" not in err


# ---- the command line (no worker: opens the data directory) ----------------------------------

def test_query_prints_a_table(data_dir, capsys):
    assert tally("query", "SELECT ds, active_users FROM kpi_dau WHERE app = '' ORDER BY ds",
                 "--data-dir", str(data_dir)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ds          active_users",
        "----------  ------------",
        "2024-05-06             1",
        "2024-05-07             2",
        "2024-05-08             3",
        "(3 rows)",
    ]


def test_query_csv_json_and_parameters(data_dir, capsys):
    sql = "SELECT user, count() AS events FROM kpi_actions WHERE ds >= {since:Date} GROUP BY user ORDER BY user"
    assert tally("query", sql, "--param", "since=2024-05-07", "--format", "csv", "--data-dir", str(data_dir)) == 0
    assert capsys.readouterr().out == "user,events\nann,2\nbob,2\ncy,1\n"
    assert tally("query", sql, "--param", "since=2024-05-08", "--format", "json", "--data-dir", str(data_dir)) == 0
    assert json.loads(capsys.readouterr().out) == [{"user": u, "events": 1} for u in ("ann", "bob", "cy")]


def test_bad_sql_is_one_line_and_exit_code_2(data_dir, capsys):
    assert tally("query", "SELECT nope FROM kpi_actions", "--data-dir", str(data_dir)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: Code: 47. DB::Exception: Unknown expression identifier")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_report_list(capsys):
    assert tally("report", "--list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(kpis.KPIS)
    assert all(len(line.split(None, 1)[1]) > 10 for line in lines)


def test_report_prints_table_sparkline_and_writes_the_chart(data_dir, tmp_path, capsys):
    chart = tmp_path / "charts" / "ids.html"
    assert tally("report", "command_usage", "--since", "2024-05-01", "--until", "2024-05-31",
                 "--chart", str(chart), "--data-dir", str(data_dir)) == 0
    captured = capsys.readouterr()
    assert "search_table" in captured.out and "p95_ms" in captured.out
    assert "p95_ms [amundsen]: ▄" in captured.out
    assert str(chart) in captured.err
    page = chart.read_text()
    assert "search_table" in page and "from 2024-05-01 to 2024-05-31" in page and "app=" not in page
    assert (chart.parent / "plotly.min.js").stat().st_size > 1_000_000  # the bundle the page loads, offline


@pytest.mark.parametrize("argv,message", [
    (["report", "nope"], "error: unknown report 'nope'"),
    (["report", "user_stats"], "error: user_stats needs --user"),
    (["report", "dau", "--threshold", "3"], "error: dau does not take --threshold"),
    (["report", "dau", "--since", "yesterday"], "error: --since must be a date"),
    (["report"], "error: name a report"),
])
def test_report_mistakes_are_clear(data_dir, capsys, argv, message):
    assert tally(*argv, "--data-dir", str(data_dir)) == 2
    assert capsys.readouterr().err.startswith(message)


# ---- a read never destroys ----------------------------------------------------------------------

WRITES = ["DROP TABLE user_actions", "ALTER TABLE user_actions DELETE WHERE 1", "TRUNCATE TABLE user_actions",
          "INSERT INTO user_actions (event_id, app, user) VALUES ('x', 'a', 'mallory')",
          "SELECT 1; DROP TABLE user_actions"]


@pytest.mark.parametrize("sql", WRITES)
def test_a_query_on_the_data_directory_changes_nothing_without_admin(data_dir, capsys, sql):
    assert tally("query", sql, "--data-dir", str(data_dir)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert tally("query", "SELECT count() FROM user_actions", "--data-dir", str(data_dir), "--format", "csv") == 0
    assert capsys.readouterr().out == "count()\n8\n"  # the sample's rows, a redelivered copy among them


def test_admin_changes_data_on_purpose(data_dir, capsys):
    assert tally("query", "DROP TABLE user_actions", "--data-dir", str(data_dir)) == 2
    assert "add --admin" in capsys.readouterr().err
    assert tally("query", "TRUNCATE TABLE user_actions", "--data-dir", str(data_dir), "--admin") == 0
    capsys.readouterr()
    assert tally("query", "SELECT count() FROM user_actions", "--data-dir", str(data_dir), "--format", "csv") == 0
    assert capsys.readouterr().out == "count()\n0\n"


def test_a_data_directory_that_does_not_exist_is_an_error_not_an_empty_answer(tmp_path, capsys):
    missing = tmp_path / "does-not-exist"
    assert tally("query", "SELECT 1", "--data-dir", str(missing)) == 2
    assert tally("report", "dau", "--data-dir", str(missing)) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"error: no Tally data in {missing} ({missing / 'clickhouse'} does not exist): check --data-dir "
                      f"(the demo's is .tally/demo; a worker's is its --data-dir, default .tally)"] * 2
    assert not missing.exists()


@pytest.mark.kafka
@pytest.mark.parametrize("admin", [False, True])
def test_a_query_through_the_worker_changes_nothing_and_admin_is_refused_there(running_worker, capsys, admin):
    data_dir, _ = running_worker
    for sql in WRITES:
        assert tally("query", sql, "--data-dir", str(data_dir), *(["--admin"] if admin else [])) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        expected = ("not started with --admin-sql" if admin else
                    "one statement at a time" if ";" in sql else "add --admin")
        assert expected in err, err
    assert tally("query", "SELECT count() FROM user_actions", "--data-dir", str(data_dir), "--format", "csv") == 0
    assert capsys.readouterr().out == "count()\n8\n"  # the sample's rows, a redelivered copy among them


def test_a_mistyped_app_is_named_with_the_known_ones(data_dir, capsys):
    assert tally("report", "dau", "--app", "amundsn", "--data-dir", str(data_dir), "--no-chart") == 0
    captured = capsys.readouterr()
    assert "(0 rows)" in captured.out
    assert "note: no events of app 'amundsn'; did you mean 'amundsen'?" in captured.err


def test_a_date_range_that_holds_no_day_is_an_error(data_dir, capsys):
    assert tally("report", "dau", "--since", "2026-12-01", "--until", "2026-11-01", "--data-dir", str(data_dir)) == 2
    assert capsys.readouterr().err == "error: --since 2026-12-01 is after --until 2026-11-01: no day is in between\n"
