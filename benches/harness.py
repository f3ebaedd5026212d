"""What the benchmark harnesses share (benches/amqp_rabbitmq.py,
benches/compare.py): the brokers they start and stop by pid (Ferry,
RabbitMQ with its epmd, NATS JetStream, Redis), one run of `ferry bench`,
/proc readings, the machine's description and the report's helpers.
Standard library only."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
HANDWRITTEN = "<!-- Everything below this line is kept when the harness rewrites this file. -->"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# /proc and process helpers


def proc_status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the machine since boot."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    idle = v[3] + v[4]
    steal = v[7] if len(v) > 7 else 0
    busy = sum(v[:8]) - idle - steal
    return busy / CLK_TCK, steal / CLK_TCK


def children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def find_descendant(pid: int, name: str) -> int | None:
    todo = [pid]
    while todo:
        p = todo.pop()
        if comm(p) == name:
            return p
        todo += children(p)
    return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --------------------------------------------------------------------------
# Brokers


class Ferry:
    """`ferry serve` on a fresh data directory, measured through AMQP."""
    name = "ferry"
    protocol = "amqp"

    def __init__(self, binary: Path, run_dir: Path):
        self.binary = binary
        self.run_dir = run_dir
        self.proc: subprocess.Popen | None = None

    def command(self, data: str, port: int | str) -> list[str]:
        kafka, amqp = (port, 0) if self.protocol == "kafka" else (0, port)
        return [str(self.binary), "serve", "--data-dir", data,
                "--kafka-listen", f"127.0.0.1:{kafka}", "--amqp-listen", f"127.0.0.1:{amqp}",
                "--sqs-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]

    def start(self, tag: str) -> None:
        d = self.run_dir / tag
        d.mkdir(parents=True)
        self.port = free_port()
        self.logfile = open(d / "ferry.log", "w")
        self.proc = subprocess.Popen(self.command(str(d / "data"), self.port),
                                     stdin=subprocess.DEVNULL, stdout=self.logfile,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"ferry exited: {(d / 'ferry.log').read_text()[-2000:]}")
            if f"{self.protocol} listening on" in ANSI.sub("", (d / "ferry.log").read_text()):
                break
            time.sleep(0.05)
        else:
            raise BenchError(f"ferry did not report its {self.protocol} listener in 30 s")
        self.pid = self.proc.pid
        self.url = (f"127.0.0.1:{self.port}" if self.protocol == "kafka"
                    else f"amqp://guest:guest@127.0.0.1:{self.port}/%2f")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logfile.close()
        self.proc = None


def rabbit_config(port: int) -> str:
    """rabbitmq.conf of every RabbitMQ run. Everything not set here is
    RabbitMQ 3.10's default: classic queues (version 1 index, not lazy),
    vm_memory_high_watermark 0.4 of RAM, disk_free_limit 50 MB, no plugins.
    Queues are declared durable and messages published persistent
    (delivery_mode 2) by the client, so a confirm means the broker has
    written and fsynced the message (RabbitMQ batches those fsyncs)."""
    return "\n".join([
        f"listeners.tcp.default = 127.0.0.1:{port}",
        "log.console = false",
        "log.file.level = warning",
        "",
    ])


class Rabbit:
    """Debian's rabbitmq-server without systemd: started by us in the
    background with a private node, directories, config and epmd port."""
    name = "rabbitmq"
    protocol = "amqp"

    def __init__(self, run_dir: Path, epmd_port: int):
        self.run_dir = run_dir
        self.epmd_port = epmd_port
        self.proc: subprocess.Popen | None = None

    def env(self, base: Path, port: int, dist_port: int) -> dict[str, str]:
        return {
            "HOME": str(base / "home"),                       # .erlang.cookie
            "RABBITMQ_NODENAME": "ferrybench@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),   # .conf is appended
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
        }

    def start(self, tag: str) -> None:
        base = self.run_dir / tag
        for sub in ("home", "mnesia", "log"):
            (base / sub).mkdir(parents=True)
        self.port = free_port()
        dist = free_port()
        (base / "rabbitmq.conf").write_text(rabbit_config(self.port))
        (base / "enabled_plugins").write_text("[].\n")
        env = dict(os.environ)
        env.update(self.env(base, self.port, dist))
        self.logfile = open(base / "stdout.log", "w")
        self.proc = subprocess.Popen([RABBITMQ_SERVER], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=base)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"rabbitmq-server exited: "
                                 f"{(base / 'stdout.log').read_text()[-3000:]}")
            if "Starting broker... completed" in (base / "stdout.log").read_text():
                break
            time.sleep(0.2)
        else:
            raise BenchError("rabbitmq-server did not start in 120 s")
        if not wait_port(self.port, 30):
            raise BenchError(f"rabbitmq-server is not listening on {self.port}")
        beam = find_descendant(self.proc.pid, "beam.smp")
        if beam is None:
            raise BenchError("no beam.smp under rabbitmq-server")
        self.pid = beam
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # The wrapper script turns SIGTERM into `rabbitmqctl stop`.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                pass
        if alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            time.sleep(0.5)
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.logfile.close()
        self.proc = None


class Epmd:
    """Erlang's port mapper on a private loopback port, for RabbitMQ."""

    def __init__(self, run_dir: Path):
        self.port = free_port()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.logfile = open(run_dir / "epmd.log", "w")
        self.proc = subprocess.Popen(["epmd", "-address", "127.0.0.1", "-port", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=self.logfile,
                                     stderr=subprocess.STDOUT)
        if not wait_port(self.port, 10):
            raise BenchError("epmd did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logfile.close()


class FerryKafka(Ferry):
    """`ferry serve` measured through the Kafka protocol (`ferry bench
    kafka`: acks=all, a topic with a partition per queue)."""
    name = "ferry-kafka"
    protocol = "kafka"


class Daemon:
    """A broker that is one process started in the foreground: its command
    line, how to tell it is ready, and its URL for `ferry bench`."""
    name = ""
    protocol = ""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.proc: subprocess.Popen | None = None

    def command(self, base: Path, port: int) -> list[str]:
        raise NotImplementedError

    def url_for(self, port: int) -> str:
        raise NotImplementedError

    def start(self, tag: str) -> None:
        base = self.run_dir / tag
        base.mkdir(parents=True)
        self.port = free_port()
        self.logfile = open(base / f"{self.name}.log", "w")
        self.proc = subprocess.Popen(self.command(base, self.port), stdin=subprocess.DEVNULL,
                                     stdout=self.logfile, stderr=subprocess.STDOUT, cwd=base)
        if not wait_port(self.port, 30) or self.proc.poll() is not None:
            raise BenchError(f"{self.name} did not start: "
                             f"{(base / f'{self.name}.log').read_text()[-2000:]}")
        self.pid = self.proc.pid
        self.url = self.url_for(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logfile.close()
        self.proc = None


class Nats(Daemon):
    """Debian's nats-server with JetStream on file storage. Version 2.9 has
    no per-write fsync setting (`sync_interval: always` came in 2.10): it
    acknowledges a message once written to the file, and fsyncs on its own
    every 2 minutes, so its acknowledgement does not mean "on disk"."""
    name = "nats"
    protocol = "nats"

    def command(self, base: Path, port: int) -> list[str]:
        return ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js",
                "-sd", str(base / "jetstream")]

    def url_for(self, port: int) -> str:
        return f"nats://127.0.0.1:{port}"


class Redis(Daemon):
    """Debian's redis-server with the append-only file fsynced before every
    reply (`appendfsync always`), no RDB snapshots, no other persistence."""
    name = "redis"
    protocol = "redis"

    def command(self, base: Path, port: int) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                "--dir", str(base), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--daemonize", "no"]

    def url_for(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}"


def dpkg_version(pkg: str) -> str:
    p = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg],
                       capture_output=True, text=True)
    return p.stdout.strip() or "?"


# --------------------------------------------------------------------------
# One run of `ferry bench <protocol>`


def bench(ferry: Path, broker, args: list[str], logpath: Path, timeout: float) -> dict:
    """Runs `ferry bench` with the broker's protocol against it and returns
    the summary, with the client's CPU time and the machine's load added."""
    target = "--brokers" if broker.protocol == "kafka" else "--url"
    cmd = [str(ferry), "bench", broker.protocol, target, broker.url, "--json",
           "--broker-pid", str(broker.pid)] + args
    busy0, steal0 = system_cpu()
    load0 = load1()
    t0 = time.monotonic()
    with open(logpath, "w") as err, open(logpath.with_suffix(".json"), "w") as out:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        killer = threading.Timer(timeout, p.kill)
        killer.daemon = True  # an interrupted run must not wait for it
        killer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            killer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    busy1, steal1 = system_cpu()
    text = logpath.with_suffix(".json").read_text()
    try:
        summary = json.loads(text)
    except json.JSONDecodeError:
        raise BenchError(f"{shlex.join(cmd)} printed no summary (exit {p.returncode}); "
                         f"stderr tail: {logpath.read_text()[-1500:]}")
    if not summary.get("complete") or p.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} did not complete: {summary.get('errors')}")
    summary["client_cpu_s"] = ru.ru_utime + ru.ru_stime
    summary["wall_s"] = wall
    summary["machine_busy_s"] = busy1 - busy0
    summary["steal_s"] = steal1 - steal0
    summary["load1_start"] = load0
    summary["load1_end"] = load1()
    return summary


def machine_info(path: Path) -> dict:
    info: dict = {}
    with open("/proc/cpuinfo") as f:
        models = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    info["cpu"] = models[0] if models else "unknown"
    info["cores"] = os.cpu_count()
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                info["ram_gib"] = int(line.split()[1]) / 1024 / 1024
    info["kernel"] = os.uname().release
    p = subprocess.run(["df", "-T", "-P", str(path)], capture_output=True, text=True)
    rows = p.stdout.strip().splitlines()
    if len(rows) >= 2:
        cols = rows[1].split()
        info["filesystem"] = f"{cols[1]} on {cols[0]} (mounted at {cols[-1]})"
    return info


def git_rev() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "crates", "Cargo.toml"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return rev + (" (with uncommitted changes under crates/)" if dirty else "")


# --------------------------------------------------------------------------
# The report


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def cell(runs: list[dict], key: str, digits: int = 0) -> str:
    xs = [r[key] for r in runs if r.get(key) is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt(xs[0], digits)
    return f"{fmt(med(xs), digits)} ({fmt(min(xs), digits)}–{fmt(max(xs), digits)})"


def bound(r: dict, cores: int) -> str:
    """What limited a run, read off its CPU figures (first match wins)."""
    if r.get("other_busy_pct", 0) >= 25:
        return f"disturbed (other processes: {r['other_busy_pct']:.0f}% of the cores)"
    if r["machine_busy_pct"] >= 85:
        if r["client_cpu_s"] > 1.5 * r["broker_cpu_s"]:
            return "CPU, mostly the client"
        if r["broker_cpu_s"] > 1.5 * r["client_cpu_s"]:
            return "CPU, mostly the broker"
        return "CPU (client and broker)"
    if r["broker_busy_pct"] >= 85:
        return "broker (one core)"
    return "waiting (fsyncs, round trips, pacing)"


def write_doc(doc_path: Path, section: str, begin: str, end: str) -> None:
    """Puts `section` between its markers below the HANDWRITTEN line of
    docs/benchmarks.md (appended there the first time)."""
    text = doc_path.read_text() if doc_path.exists() else "# Benchmarks\n\n" + HANDWRITTEN + "\n"
    if HANDWRITTEN not in text:
        text = text.rstrip("\n") + "\n\n" + HANDWRITTEN + "\n"
    head, tail = text.split(HANDWRITTEN, 1)
    if begin in tail and end in tail:
        before = tail[:tail.index(begin)]
        after = tail[tail.index(end) + len(end):]
        tail = before + section + after
    else:
        tail = tail.rstrip("\n") + "\n\n" + section + "\n"
    doc_path.write_text(head + HANDWRITTEN + tail)
