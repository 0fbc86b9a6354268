"""The benchmark harness: its arithmetic on plain values, and a quick run of `tally bench` so it can't rot."""
import ctypes
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from bench.measure import Progress, measured_window, memory_profile, percentile, time_split, visible_after
from bench.profile import hot_functions
from bench.procstat import engine_cpu_seconds, parse_cpu_seconds, parse_rss_mb


def test_window_starts_after_the_warm_up_and_ends_when_everything_is_done():
    samples = [Progress(0.0, 0, 0.0, 100), Progress(1.0, 50, 1.0, 110), Progress(2.0, 150, 2.0, 120),
               Progress(3.0, 600, 5.0, 130), Progress(4.0, 1000, 8.0, 125)]
    window = measured_window(samples, total=1000)
    assert (window.events, window.seconds, window.cpu_seconds) == (850, 2.0, 6.0)
    assert window.events_per_s == 425
    assert window.cpu_seconds_per_million == pytest.approx(6.0 / 850 * 1e6)
    assert memory_profile(samples, total=1000) == {"start_mb": 120, "middle_mb": 130, "end_mb": 125,
                                                   "peak_mb": 130, "early_median_mb": 120, "late_median_mb": 125}


def test_memory_growth_is_judged_on_quarters_not_on_one_look():
    def run(rss_by_look):
        return [Progress(float(i), i * 100, float(i), rss) for i, rss in enumerate(rss_by_look)]
    # flat, but the last look lands in a merge: the end is 1.5x the start, the last quarter's median is not
    merging = memory_profile(run([50, 100, 100, 110, 100, 100, 105, 100, 100, 100, 150]), total=1000)
    assert merging["end_mb"] / merging["start_mb"] == 1.5
    assert (merging["early_median_mb"], merging["late_median_mb"]) == (100, 100)
    # growing all along: both medians move
    growing = memory_profile(run([50, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190]), total=1000)
    assert (growing["early_median_mb"], growing["late_median_mb"]) == (110, 180)


def test_a_run_seen_in_one_look_is_measured_from_the_look_before():
    samples = [Progress(0.0, 0, 0.0, 100), Progress(0.5, 1000, 1.0, 100)]
    assert measured_window(samples, total=1000).events_per_s == 2000
    with pytest.raises(ValueError):
        measured_window(samples[1:], total=1000)
    with pytest.raises(ValueError):
        measured_window(samples[:1], total=1000)


def test_time_split_is_per_event_over_the_measured_window():
    def look(at_s, done, cpu, stage_cpu, stage_wall, insert_cpu, insert_wall, engine_cpu):
        clock = {"stage_cpu": stage_cpu, "stage_wall": stage_wall, "insert_cpu": insert_cpu, "insert_wall": insert_wall,
                 "engine_cpu": engine_cpu}
        return Progress(at_s, done, cpu, 100, clock)
    samples = [look(0.0, 0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0), look(1.0, 200, 1.0, 0.4, 0.5, 0.0, 0.0, 0.1),
               look(2.0, 1200, 3.0, 1.6, 2.0, 0.3, 0.6, 0.2), look(3.0, 2200, 5.0, 2.8, 3.5, 0.6, 1.2, 0.5)]
    # the window is 1200 -> 2200 events (the first look past 10% of them to the last): 1,000 events,
    # 2.0 s of process CPU, of which stages 1.2, inserts 0.3, chDB's threads 0.3
    assert time_split(samples, total=2200) == pytest.approx(
        {"stage_cpu_us": 1200.0, "stage_wall_us": 1500.0, "insert_cpu_us": 300.0, "insert_wall_us": 600.0,
         "engine_cpu_us": 300.0, "other_cpu_us": 200.0})
    assert time_split([Progress(0.0, 0, 0.0, 100), Progress(1.0, 10, 1.0, 100)], total=10) == {}  # not a Tally run


def test_engine_cpu_is_the_cpu_of_the_threads_that_named_themselves():
    libc = ctypes.CDLL(None)
    named, done = threading.Event(), threading.Event()

    burned = []

    def engine_thread():
        libc.prctl(15, b"engine-test", 0, 0, 0)  # PR_SET_NAME, as chDB names its threads
        until = time.thread_time() + 0.3
        while time.thread_time() < until:
            pass
        burned.append(time.thread_time())
        named.set()
        done.wait()  # a thread's CPU leaves /proc with it

    before = engine_cpu_seconds(os.getpid())
    thread = threading.Thread(target=engine_thread)
    thread.start()
    until = time.thread_time() + 0.3  # this thread burns as much meanwhile: it must not be counted
    while time.thread_time() < until:
        pass
    named.wait()
    try:
        spent = engine_cpu_seconds(os.getpid()) - before
    finally:
        done.set()
        thread.join()
    tick = 1 / os.sysconf("SC_CLK_TCK")  # /proc counts CPU in clock ticks
    assert abs(spent - burned[0]) <= 2 * tick, (spent, burned)  # the engine thread's CPU, and only it


def test_each_event_is_visible_from_the_first_poll_that_stored_its_offset():
    sent = [(0, 0, 10.0), (0, 1, 10.1), (1, 0, 10.2), (1, 5, 10.3)]
    polls = [(10.5, {0: 0}), (11.0, {0: 3, 1: 2}), (12.0, {0: 3, 1: 5})]
    assert visible_after(sent, polls) == pytest.approx([0.5, 0.9, 0.8, 1.7])
    assert visible_after([(2, 0, 10.0)], polls) == [None]  # never stored


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99), percentile(values, 100)) == \
        (50, 95, 99, 100)
    assert percentile([7.0], 95) == 7.0


def test_proc_parsing_reads_cpu_ticks_and_resident_memory():
    stat = "123 (python -m a) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0"
    assert parse_cpu_seconds(stat) == pytest.approx(300 / __import__("os").sysconf("SC_CLK_TCK"))
    assert parse_rss_mb("Name:\tpython\nVmRSS:\t  204800 kB\n") == 200.0


def test_hot_functions_leave_out_the_idle_event_loop_and_sum_the_pipeline():
    lines = ["thread (1): MainThread;main (streams/cli.py:5);process_batch (streams/stages/flow.py:80);to_row (streams/stages/enrich.py:9) 6",
             "thread (1): MainThread;main (streams/cli.py:5);process_batch (streams/stages/flow.py:81) 2",
             "thread (1): MainThread;run_forever (asyncio/base_events.py:1);EpollSelector.select (selectors.py:468) 50",
             "thread (2): asyncio_0;insert (streams/store/sink.py:3) 2"]
    hot = hot_functions(lines)
    assert (hot["samples"], hot["idle_samples"]) == (10, 50)
    assert hot["threads"] == {"MainThread": 0.8, "asyncio_0": 0.2}
    assert hot["self"][0] == {"function": "to_row (streams/stages/enrich.py)", "share": 0.6}
    own = {entry["function"]: entry["share"] for entry in hot["own_total"]}
    assert own["process_batch (streams/stages/flow.py)"] == 0.8


@pytest.mark.kafka
@pytest.mark.clickhouse
@pytest.mark.parametrize("envelope", [1, 50])  # single messages; envelopes, as the SDK sends
def test_quick_bench_measures_all_four_stages_and_stores_every_event(bootstrap, tmp_path, envelope):
    output = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "streams.cli", "bench", "--quick", "--bootstrap", bootstrap,
                          "--envelope", str(envelope), "--output", str(output), "--work-dir", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(output.read_text())

    for stage in ("ceiling", "batch_peer", "naive", "tally"):
        assert results[stage]["events"] > 0 and results[stage]["events_per_s"] > 0, results[stage]
        assert results[stage]["cpu_seconds_per_million"] > 0, results[stage]
    tally = results["tally"]
    assert tally["stored_rows"] == tally["distinct_event_ids"] == tally["events_sent"] == 5_000
    counted = {name: tally[name] for name in ("delivered", "dead_lettered", "duplicates", "rerouted", "stage_events")}
    assert (tally["dead_lettered"], tally["rerouted"]) == (0, 0), counted  # keyed as stored
    # at least once: a rebalance in the run redelivers what was not yet committed (a duplicate, or
    # delivered again when the partition's state went with it); the rows above are still exact
    assert tally["delivered"] >= 5_000, counted
    assert tally["stage_events"] == tally["delivered"] + tally["duplicates"], counted  # each one through the stages
    assert set(tally["time_split_us_per_event"]) == {"stage_cpu_us", "stage_wall_us", "insert_cpu_us",
                                                     "insert_wall_us", "engine_cpu_us", "other_cpu_us"}
    assert 0 < tally["memory"]["start_mb"] <= tally["memory"]["peak_mb"]
    assert tally["ratio_to_ceiling"] == pytest.approx(tally["events_per_s"] / results["ceiling"]["events_per_s"], abs=1e-6)
    for mode, measured in results["memory_split"].items():  # the same batches, without Kafka
        assert measured["events"] == 5_000 and 0 < measured["start_mb"] <= measured["peak_mb"], mode

    latency = results["latency"]
    assert latency["seen"] == latency["measured"] > 0  # every measured event became queryable
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert set(results["targets"]) == {"events_per_s", "ratio_to_ceiling", "p95_ms", "memory_growth"}
    assert "ceiling: bare aiokafka" in run.stdout and "p95" in run.stdout  # the printed table


def test_runs_with_envelopes_default_to_two_million_events():
    """A 500k run with envelopes lasts ~15 s, too short to judge memory past its filling."""
    import argparse

    from bench.__main__ import _add_arguments, plan_from_args
    parser = argparse.ArgumentParser()
    _add_arguments(parser)

    def events(*args: str) -> int:
        return plan_from_args(parser.parse_args(list(args))).events
    assert events() == 500_000
    assert events("--envelope", "125") == 2_000_000
    assert events("--envelope", "125", "--events", "300000") == 300_000
    assert events("--envelope", "125", "--quick") == 5_000


@pytest.mark.kafka
@pytest.mark.clickhouse
def test_a_short_soak_reports_each_quarter_and_stores_what_the_sdk_delivered(bootstrap, tmp_path):
    output = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "streams.cli", "bench", "--soak", "0.4", "--soak-rate", "400",
                          "--bootstrap", bootstrap, "--output", str(output), "--work-dir", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    soak = json.loads(output.read_text())["soak"]
    sdk = soak["sdk"]
    assert sdk["delivered"] == sdk["tracked"] > 0 and (sdk["dropped"], sdk["failed"]) == (0, 0)
    assert soak["stored_rows"] == soak["distinct_event_ids"] == sdk["delivered"]
    assert [q["quarter"] for q in soak["quarters"]] == [1, 2, 3, 4]
    for quarter in soak["quarters"]:
        assert quarter["probes"] > 0 and quarter["probes_unseen"] == 0, quarter
        assert 0 < quarter["p50_ms"] <= quarter["p95_ms"], quarter
        assert all(rss > 0 for rss in quarter["rss_mb"]), quarter
    assert "| quarter |" in run.stdout


def test_stage_bench_times_every_stage_on_generated_envelopes(tmp_path):
    from bench import stages
    output = tmp_path / "stages.json"
    assert stages.main(["--events", "3000", "--repeats", "1", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["events"] == 3000 and result["best_us_per_event"] > 0
    split = result["split_us_per_event"]
    assert {"admit", "unpack", "build_columns", "extract_columns", "scrub_columns", "count_activity"} <= set(split)
    assert split["admit"] >= split["admit_clean"] > 0  # a clean batch is admitted at once


def test_the_decoder_bench_checks_the_native_decoder_against_upb(tmp_path):
    from bench import native_decode
    from streams.contract import envelope_columns
    if not envelope_columns.NATIVE:
        pytest.skip("the native decoder is not built here")
    output = tmp_path / "native.json"
    assert native_decode.main(["--events", "3000", "--repeats", "1", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["disagreements"] == [] and result["native_us_per_event"] > 0 and result["upb_us_per_event"] > 0
