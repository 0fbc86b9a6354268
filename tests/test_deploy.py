"""deploy/ holds what this machine can't start (compose, k8s, a ClickHouse cluster): what can be checked
here is that it stays in step with the code that the tests do run."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def table_columns(sql: str) -> dict[str, list[tuple[str, str]]]:
    """Table name (without database or `_local`) -> its (column, type) list, from CREATE TABLE ... ( ... )."""
    tables = {}
    for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS ([\w.]+)(?: ON CLUSTER \w+)?\s*\((.*?)\n\)", sql, re.S):
        columns = []
        for line in body.strip().splitlines():
            line = re.sub(r"--.*", "", line).strip().rstrip(",")
            if line:
                column, kind = line.split(None, 1)
                columns.append((column, " ".join(kind.split())))
        tables[name.split(".")[-1].removesuffix("_local")] = columns
    return tables


def test_cluster_ddl_has_the_columns_of_the_migrations():
    single = {**table_columns((ROOT / "streams/store/sql/001_tables.sql").read_text()),
              **table_columns((ROOT / "streams/store/sql/003_meta.sql").read_text())}
    for table, column, kind in re.findall(r"ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS (\w+) ([\w()]+)",
                                          (ROOT / "streams/store/sql/004_dead_letter_entries.sql").read_text()):
        single[table].append((column, kind))
    cluster = table_columns((ROOT / "deploy/clickhouse/cluster.sql").read_text())
    assert {"user_actions", "dead_letters", "user_profiles", "tally_meta"} <= set(single)
    for table, columns in single.items():
        assert cluster.get(table) == columns, f"deploy/clickhouse/cluster.sql: {table} differs from the migrations"


def test_deploy_manifests_parse_and_run_the_worker():
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    assert {"kafka-1", "kafka-2", "kafka-3", "clickhouse"} <= set(compose["services"])
    assert any("worker" in " ".join(map(str, service.get("command", []) or []))
               for service in compose["services"].values())
    documents = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/worker.yaml").read_text()) if d]
    containers = [c for d in documents if d.get("kind") in ("Deployment", "StatefulSet")
                  for c in d["spec"]["template"]["spec"]["containers"]]
    assert any("worker" in " ".join(map(str, c.get("args", []) + c.get("command", []))) for c in containers)


def test_alert_rules_are_prometheus_rule_groups():
    """deploy/prometheus/alerts.yml loads as Prometheus rule groups (that each rule's metrics are ones
    the worker exports is checked against a real worker's scrape in test_stream_guarantees)."""
    groups = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len({rule["alert"] for rule in rules}) == len(rules) >= 5
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["expr"].strip() and rule["labels"]["severity"] in ("page", "warn", "info")
        assert rule["annotations"]["summary"]


def test_deployed_workers_listen_beyond_localhost_and_keep_sql_read_only():
    """The readiness probe and Prometheus reach the worker's port from outside its container; the
    port's /query/ must then not take DDL."""
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert worker["environment"]["TALLY_WEB_BIND"] == "0.0.0.0"
    documents = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/worker.yaml").read_text()) if d]
    containers = [c for d in documents if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]]
    assert all({"name": "TALLY_WEB_BIND", "value": "0.0.0.0"} in c["env"] for c in containers)
    commands = [" ".join(map(str, worker["command"]))] + [" ".join(map(str, c.get("args", []))) for c in containers]
    assert not any("--admin-sql" in command for command in commands)


def local_cluster_settings(tmp_path) -> dict[str, str]:
    """What `tally broker start --nodes 3` writes into a node's server.properties."""
    from streams.ops.broker import Cluster
    node = Cluster(home=tmp_path, nodes=3).members[0]
    node.home.mkdir(parents=True)
    config = node._write_config().read_text()
    return dict(line.split("=", 1) for line in config.splitlines() if "=" in line)


KAFKA_SETTINGS = ("process.roles", "offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                  "transaction.state.log.min.isr", "default.replication.factor", "min.insync.replicas",
                  "controller.listener.names")


def test_the_deployed_kafka_clusters_match_the_local_one(tmp_path):
    local = local_cluster_settings(tmp_path)
    assert (local["default.replication.factor"], local["min.insync.replicas"]) == ("3", "2")
    assert len(local["controller.quorum.voters"].split(",")) == 3
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    nodes = [compose["services"][f"kafka-{i}"]["environment"] for i in (1, 2, 3)]
    k8s = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/kafka.yaml").read_text()) if d]
    (statefulset,) = [d for d in k8s if d["kind"] == "StatefulSet"]
    assert statefulset["spec"]["replicas"] == 3
    k8s_env = {e["name"]: e["value"] for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}

    def as_env(name: str) -> str:
        return "KAFKA_" + name.upper().replace(".", "_")
    for setting in KAFKA_SETTINGS:
        for where, env in [(f"compose kafka-{i + 1}", n) for i, n in enumerate(nodes)] + [("k8s", k8s_env)]:
            assert str(env[as_env(setting)]) == local[setting], f"{where}: {setting}"
    for env in [*nodes, k8s_env]:
        assert len(str(env["KAFKA_CONTROLLER_QUORUM_VOTERS"]).split(",")) == 3
        assert str(env["KAFKA_LISTENERS"]) == "PLAINTEXT://:9092,CONTROLLER://:9093"
    assert [n["KAFKA_NODE_ID"] for n in nodes] == [1, 2, 3]
    assert len({n["KAFKA_ADVERTISED_LISTENERS"] for n in nodes}) == 3


def test_deployed_workers_reach_every_kafka_node_and_replicate_their_topics():
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    documents = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/worker.yaml").read_text()) if d]
    containers = [c for d in documents if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]]
    for args in [compose["services"]["worker"]["command"]] + [c["args"] for c in containers]:
        args = list(map(str, args))
        assert len(args[args.index("--bootstrap") + 1].split(",")) == 3
        assert args[args.index("--replication") + 1] == "3"
    for container in containers:  # the worker's own health endpoints (streams/runtime/web.py)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz/"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz/"
    assert "/readyz/" in " ".join(compose["services"]["worker"]["healthcheck"]["test"])
