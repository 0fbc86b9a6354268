"""`tally broker start|stop|status [--nodes 3]`: real Apache Kafka (KRaft mode) on this machine.

The jars come from Maven Central once (`mvn dependency:copy-dependencies` on
`deploy/kafka/pom.xml`) into a cache directory; storage is formatted on first start; each node
listens on 127.0.0.1 and logs to a file in its directory. One node by default; `--nodes 3` runs a
cluster of combined broker+controller nodes (a three-voter quorum), every topic replicated three
times with `min.insync.replicas=2`, so an acknowledged event survives the loss of one node.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POM = PROJECT_ROOT / "deploy" / "kafka" / "pom.xml"
DEFAULT_JAR_CACHE = Path(os.environ.get("TALLY_KAFKA_JARS", Path.home() / ".cache" / "tally" / "kafka-jars"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for brokers, workers' web ports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports on 127.0.0.1 that nothing listens on now (a broker's
    port and its controller's at the next, as `broker_for` sets them), below the ephemeral range, where
    no outgoing connection takes one of them meanwhile."""
    for _ in range(200):
        base = random.randrange(20_000, 32_000 - count, 2)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


@dataclass(frozen=True)
class Broker:
    """A broker living in `home` (config, data, log, pid file), listening on 127.0.0.1:port."""
    home: Path
    port: int = 19092
    controller_port: int = 19093
    partitions: int = 4
    jar_cache: Path = DEFAULT_JAR_CACHE
    node_id: int = 1
    voters: str = ""          # the controller quorum, "1@127.0.0.1:19093,..."; "" = this node alone
    replication: int = 1      # of internal topics, and the default for new ones
    cluster_id: str = ""      # shared by a cluster's nodes; "" = a new one on first format

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    def fetch_jars(self) -> Path:
        """Fetch the Kafka jars once; later calls reuse the cache."""
        marker = self.jar_cache / ".complete"
        if marker.exists():
            return self.jar_cache
        if shutil.which("mvn") is None:
            raise RuntimeError("Maven (mvn) is needed to fetch the Kafka jars from Maven Central")
        self.jar_cache.mkdir(parents=True, exist_ok=True)
        # Maven's console library writes colour resets even when quiet: keep its output
        # for when it fails, where it says why.
        done = subprocess.run(
            ["mvn", "-q", "-B", "--no-transfer-progress", "-Dstyle.color=never", "-f", str(POM),
             "dependency:copy-dependencies", f"-DoutputDirectory={self.jar_cache}", "-DincludeScope=runtime"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            raise RuntimeError("Maven could not fetch the Kafka jars (is Maven Central reachable?):\n"
                               + re.sub(r"\x1b\[[0-9;]*m", "", done.stdout).strip())
        marker.touch()
        return self.jar_cache

    def _java(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        classpath = str(self.fetch_jars() / "*")
        return subprocess.run(["java", "-cp", classpath, *args], check=True, capture_output=True, text=True, **kwargs)

    def _write_config(self) -> Path:
        data = self.home / "data"
        config = self.home / "server.properties"
        config.write_text("\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={self.voters or f'{self.node_id}@127.0.0.1:{self.controller_port}'}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            f"num.partitions={self.partitions}",
            f"offsets.topic.replication.factor={self.replication}",
            "offsets.topic.num.partitions=8",
            f"transaction.state.log.replication.factor={self.replication}",
            f"transaction.state.log.min.isr={self.min_insync}",
            f"share.coordinator.state.topic.replication.factor={self.replication}",
            f"share.coordinator.state.topic.min.isr={self.min_insync}",
            f"default.replication.factor={self.replication}",
            f"min.insync.replicas={self.min_insync}",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "message.max.bytes=4194304",
            "log.cleaner.backoff.ms=1000",
            "",
        ]))
        (self.home / "log4j2.properties").write_text(LOG4J2_PROPERTIES.format(log=self.log_file))
        return config

    @property
    def min_insync(self) -> int:
        """Replicas that must have a write before it is acknowledged (acks=all): 2 of 3, 1 of 1."""
        return 2 if self.replication >= 3 else 1

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def is_listening(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def start(self, timeout: float = 90.0) -> "Broker":
        """Start the broker (formatting storage the first time) and wait until it serves metadata."""
        process = self.launch()
        if process is not None:
            self._wait_ready(process, timeout)
        return self

    def launch(self) -> subprocess.Popen | None:
        """Start the process without waiting for it (a cluster's nodes wait for each other's quorum);
        None if it already runs."""
        if self.pid() is not None and self.is_listening():
            return None
        self.home.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.home / "data" / "meta.properties").exists():
            self._java("kafka.tools.StorageTool", "format",
                       "-t", self.cluster_id or str(uuid.uuid4()).replace("-", "")[:22],
                       "-c", str(config), "--ignore-formatted")
        classpath = str(self.fetch_jars() / "*")
        with open(self.home / "broker.stdout", "ab") as out:
            process = subprocess.Popen(
                ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                 "-cp", classpath, "kafka.Kafka", str(config)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        return process

    def _wait_ready(self, process: subprocess.Popen, timeout: float) -> None:
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        async def metadata_ok() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                await admin.list_topics()
                return True
            except Exception:
                return False
            finally:
                await admin.close()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"Kafka broker exited with code {process.returncode}; see {self.log_file}")
            if self.is_listening() and asyncio.run(metadata_ok()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"Kafka broker not ready after {timeout:.0f}s; see {self.log_file}")

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after `timeout`). False if none ran."""
        pid = self.pid()
        if pid is None:
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.2)
        else:
            os.killpg(pid, signal.SIGKILL)
            _alive(pid)
        self.pid_file.unlink(missing_ok=True)
        return True


@dataclass(frozen=True)
class Cluster:
    """`nodes` combined broker+controller nodes in `home/node-N`, on ports port, port+2, ... (their
    controllers one above each), one quorum of all of them, topics replicated `nodes` times."""
    home: Path
    nodes: int = 3
    port: int = 19092
    partitions: int = 4
    jar_cache: Path = DEFAULT_JAR_CACHE

    @property
    def members(self) -> list[Broker]:
        ports = [(self.port + 2 * i, self.port + 2 * i + 1) for i in range(self.nodes)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{controller}" for i, (_, controller) in enumerate(ports))
        return [Broker(home=self.home / f"node-{i + 1}", port=port, controller_port=controller,
                       partitions=self.partitions, jar_cache=self.jar_cache, node_id=i + 1, voters=voters,
                       replication=min(self.nodes, 3), cluster_id=self.cluster_id())
                for i, (port, controller) in enumerate(ports)]

    def cluster_id(self) -> str:
        """One id for every node's storage, made on the first start and kept in `home`."""
        path = self.home / "cluster.id"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            path.write_text(str(uuid.uuid4()).replace("-", "")[:22])
        return path.read_text().strip()

    @property
    def bootstrap(self) -> str:
        return ",".join(member.bootstrap for member in self.members)

    @property
    def replication(self) -> int:
        return min(self.nodes, 3)

    def start(self, timeout: float = 120.0) -> "Cluster":
        members = self.members
        launched = [(member, member.launch()) for member in members]  # all at once: the quorum needs a majority
        for member, process in launched:
            if process is not None:
                member._wait_ready(process, timeout)
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM to every node at once (one by one, the last ones would wait for a quorum that is
        leaving), then each is waited for (SIGKILL after `timeout`)."""
        members = [m for m in self.members if m.pid() is not None]
        for member in members:
            os.killpg(member.pid(), signal.SIGTERM)
        return any([member.stop(timeout) for member in members])

    def node(self, node_id: int) -> Broker:
        return self.members[node_id - 1]

    def running(self) -> list[int]:
        return [m.node_id for m in self.members if m.pid() is not None and m.is_listening()]


def _alive(pid: int) -> bool:
    """True while `pid` runs. Reaps it if it is our own exited child (a zombie still answers kill 0)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: started by another `tally broker start`
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def create_topics(bootstrap: str, topics: dict[str, int], compacted: set[str] = frozenset(),
                        replication: int = 1) -> None:
    """Create topics (name -> partitions) that don't exist yet; compacted ones keep the latest value per key.
    Replicated three times, a write is acknowledged once two replicas have it (`min.insync.replicas`)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        durable = {"min.insync.replicas": "2"} if replication >= 3 else {}
        wanted = [NewTopic(name, partitions, replication,
                           topic_configs={**durable, **({"cleanup.policy": "compact"} if name in compacted else {})})
                  for name, partitions in topics.items() if name not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except Exception as exc:  # created meanwhile by another process
                if "TopicAlreadyExists" not in type(exc).__name__ + str(exc):
                    raise
    finally:
        await admin.close()


def pipeline_topics(settings) -> tuple[dict[str, int], set[str]]:
    """The topics the pipeline uses, their partition counts, and which are compacted."""
    t = settings.topics
    counts = {t.user_actions: settings.partitions, t.dead_letters: settings.partitions,
              t.user_profiles: settings.partitions, t.active_users: 1, t.alerts: 1}
    return counts, {t.user_profiles, t.active_users}


def broker_for(settings) -> Broker:
    port = int(settings.bootstrap.split(",")[0].rsplit(":", 1)[1])
    return Broker(home=settings.data_dir / "kafka", port=port, controller_port=port + 1,
                  partitions=settings.partitions)


def cluster_for(settings, nodes: int) -> Cluster:
    port = int(settings.bootstrap.split(",")[0].rsplit(":", 1)[1])
    return Cluster(home=settings.data_dir / "kafka-cluster", nodes=nodes, port=port, partitions=settings.partitions)


def local_kafka(settings, nodes: int | None = None):
    """The local broker, or the cluster, of this data dir: `nodes` when given, else what was started
    here last (`<data-dir>/kafka-cluster/nodes` says a cluster's size)."""
    if nodes is None:
        marker = settings.data_dir / "kafka-cluster" / "nodes"
        nodes = int(marker.read_text()) if marker.exists() else 1
    return broker_for(settings) if nodes == 1 else cluster_for(settings, nodes)


def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args
    parser = subparsers.add_parser("broker", help="run local Kafka (KRaft): one node, or a cluster with --nodes 3")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--nodes", type=int, choices=[1, 3],
                        help="start: 1 (default) or 3 nodes; stop and status: what was started here")
    add_settings_args(parser)
    parser.set_defaults(func=_cli_broker)


def _cli_broker(args) -> int:
    import asyncio
    from streams.cli import settings_from_args
    settings = settings_from_args(args)
    kafka = local_kafka(settings, args.nodes if args.action == "start" else None)
    if args.action == "start":
        kafka.start()
        counts, compacted = pipeline_topics(settings)
        replication = getattr(kafka, "replication", 1)
        asyncio.run(create_topics(kafka.bootstrap, counts, compacted, replication))
        if isinstance(kafka, Cluster):
            (kafka.home / "nodes").write_text(str(kafka.nodes))
            print(f"Kafka cluster of {kafka.nodes} nodes running; bootstrap {kafka.bootstrap} (pass it as --bootstrap "
                  f"or TALLY_BOOTSTRAP); topics replicated {replication}x, min.insync.replicas=2; logs: "
                  f"{kafka.home}/node-*/broker.log")
        else:
            print(f"Kafka broker running on {kafka.bootstrap} (pid {kafka.pid()}); log: {kafka.log_file}")
    elif args.action == "stop":
        print("stopped" if kafka.stop() else "no broker running")
        if isinstance(kafka, Cluster):
            (kafka.home / "nodes").unlink(missing_ok=True)
    elif isinstance(kafka, Cluster):
        up = kafka.running()
        for member in kafka.members:
            state = f"running (pid {member.pid()})" if member.node_id in up else "not running"
            print(f"node {member.node_id} on {member.bootstrap}: {state}")
        return 0 if len(up) == kafka.nodes else 1
    else:
        pid = kafka.pid()
        up = pid is not None and kafka.is_listening()
        print(f"running on {kafka.bootstrap} (pid {pid})" if up else "not running")
        return 0 if up else 1
    return 0


if __name__ == "__main__":  # `python -m streams.ops.broker fetch-jars`: used by `make install`
    import sys
    if sys.argv[1:] == ["fetch-jars"]:
        print(f"Kafka jars in {Broker(home=Path('.')).fetch_jars()}")
