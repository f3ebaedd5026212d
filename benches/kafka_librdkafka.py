#!/usr/bin/env python3
"""Kafka throughput benchmark for Ferry with librdkafka (kcat) as the client.

Run it through ./scripts/bench-kafka, which builds the release binary and
installs kcat first. Standard library only.

For every scenario in {100 B, 10 KiB records} x {fsync.policy=always, never}
x {1, 8 partitions} it starts a fresh `ferry serve` on a fresh data directory
under ./bench-results/ and measures, with acks=all:

  * produce: one `kcat -P -l FILE` of N records, timed until kcat has every
    delivery report; afterwards the partitions' high watermarks must add up to
    exactly N (kcat -Q), or the benchmark fails;
  * consume: `kcat -C -o 0 -e` of the N records, once to /dev/null and
    once piped through `wc -l`, whose count must be exactly N;
  * the broker's CPU seconds (utime+stime from /proc/PID/stat) per phase, its
    busiest thread, kcat's own CPU seconds (wait4 rusage) and its application
    thread's CPU (sampled from /proc), and the broker's peak RSS (VmHWM).

Extra scenarios (--parallel, default 2) run that many kcat processes at once,
one per partition, to show what the broker does when one client process is not
the limit.

Each round also measures the disk's sequential write bandwidth with
`dd bs=1M count=1024 conv=fdatasync` in the same directory. Every scenario is
run --runs times (rounds interleave the scenarios); the report gives the
median and the min-max spread and is written to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LISTENING = re.compile(r"kafka listening on (\S+):(\d+)")

# Producer settings. The record batch limit of a topic is max.message.bytes
# (1048588 by default), so batch.size stays just under 1 MB; the queue limits
# let kcat read the whole input file without blocking on QUEUE_FULL.
PRODUCE_FLAGS = [
    "-X", "acks=all",
    "-X", "linger.ms=5",
    "-X", "batch.num.messages=10000",
    "-X", "batch.size=1000000",
    "-X", "queue.buffering.max.messages=2000000",
    "-X", "queue.buffering.max.kbytes=2097151",
]
# Consumer settings: a deep prefetch queue, so librdkafka's fetcher keeps
# fetching while the application thread drains. Fetch sizes stay at their
# defaults (1 MiB per partition, 50 MiB per request): 10 MiB per partition was
# slower with 10 KiB records.
CONSUME_FLAGS = [
    "-X", "queued.min.messages=1000000",
    "-X", "queued.max.messages.kbytes=1048576",
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# /proc helpers


def proc_cpu(pid: int) -> float:
    """utime+stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{tid: (name, utime+stime seconds)} for every thread of pid."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.index("(") + 1 : s.rindex(")")]
        fields = s[s.rindex(")") + 2 :].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"{key} missing from /proc/{pid}/status")


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --------------------------------------------------------------------------
# Child processes with exact CPU accounting


class ThreadSampler:
    """Samples the per-thread CPU of a child every `interval` s, keeping the
    last value seen for each thread (a lower bound: the final <interval of a
    thread's life is not seen)."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last.update(thread_cpu(self.pid))
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        named: dict[str, float] = {}
        for name, cpu in self.last.values():
            named[name] = named.get(name, 0.0) + cpu
        return named


def run_timed(pipelines: list[list[list[str]]], capture: bool, timeout: float) -> dict:
    """Starts every pipeline (cmds[0] | cmds[1] | ...) at once and waits for all
    of them. The last command of each writes to /dev/null, or into a captured
    buffer when `capture`. Returns the wall time from the first start to the
    last exit and, per pipeline, each command's exact rusage (wait4), the first
    command's per-thread CPU (sampled), stderr texts and captured stdout."""
    t0 = time.monotonic()
    started: list[subprocess.Popen] = []
    lines: list[dict] = []
    threads: list[threading.Thread] = []
    devnull = open(os.devnull, "wb")
    try:
        for cmds in pipelines:
            procs: list[subprocess.Popen] = []
            prev_stdout = None
            for i, cmd in enumerate(cmds):
                last = i == len(cmds) - 1
                p = subprocess.Popen(
                    cmd,
                    stdin=prev_stdout if prev_stdout is not None else subprocess.DEVNULL,
                    stdout=(subprocess.PIPE if capture else devnull) if last else subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                started.append(p)
                if prev_stdout is not None:
                    prev_stdout.close()
                prev_stdout = p.stdout if not last else None
                procs.append(p)
            line = {"cmds": cmds, "procs": procs, "stderr": {}, "stdout": b"",
                    "sampler": ThreadSampler(procs[0].pid)}
            lines.append(line)

            def drain(line=line, i=0, stream=None) -> None:
                line["stderr"][i] = stream.read()

            for i, p in enumerate(procs):
                threads.append(threading.Thread(target=drain, args=(line, i, p.stderr),
                                                daemon=True))
            if capture:
                def grab(line=line, stream=procs[-1].stdout) -> None:
                    line["stdout"] = stream.read()
                threads.append(threading.Thread(target=grab, daemon=True))
        for t in threads:
            t.start()
        deadline = t0 + timeout
        ends = []
        for line in lines:
            line["results"] = []
            for p in line["procs"]:
                while True:
                    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                    if pid:
                        break
                    if time.monotonic() > deadline:
                        raise BenchError(f"timed out after {timeout:.0f}s: "
                                         f"{fmt_pipeline(line['cmds'])}")
                    time.sleep(0.002)
                p.returncode = os.waitstatus_to_exitcode(status)
                line["results"].append({"rc": p.returncode, "utime": ru.ru_utime,
                                        "stime": ru.ru_stime, "maxrss_kb": ru.ru_maxrss})
            ends.append(time.monotonic())
        wall = max(ends) - t0
        for t in threads:
            t.join()
        out = []
        for line in lines:
            res = line["results"]
            for i, r in enumerate(res):
                r["stderr"] = line["stderr"].get(i, b"").decode(errors="replace")
            out.append({"procs": res, "threads": line["sampler"].stop(),
                        "stdout": line["stdout"], "cmds": line["cmds"]})
        return {"wall": wall, "pipelines": out}
    finally:
        for line in lines:
            line["sampler"].stop()
        for p in started:
            if p.returncode is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                    os.waitpid(p.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
                p.returncode = -9
        devnull.close()


def fmt_pipeline(cmds: list[list[str]]) -> str:
    return " | ".join(shlex.join(c) for c in cmds)


# --------------------------------------------------------------------------
# The broker


class Broker:
    def __init__(self, ferry: Path, data_dir: Path, fsync: str, partitions: int):
        self.data_dir = data_dir
        self.log_path = data_dir.with_suffix(".log")
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.cmd = [
            str(ferry), "serve",
            "--data-dir", str(data_dir),
            "--kafka-listen", "127.0.0.1:0", "--amqp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
            "--topic-default", f"fsync.policy={fsync}",
            "--default-partitions", str(partitions),
        ]
        env = dict(os.environ, NO_COLOR="1")
        env.setdefault("FERRY_LOG", "warn,ferry::serve=info")
        self.log_f = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.log_f, stderr=self.log_f, env=env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while True:
            text = ANSI.sub("", self.log_path.read_text(errors="replace"))
            m = LISTENING.search(text)
            if m:
                self.bootstrap = f"{m.group(1)}:{m.group(2)}"
                break
            if self.proc.poll() is not None:
                raise BenchError(f"ferry exited with {self.proc.returncode}:\n{text}")
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"ferry did not report its port within 30s:\n{text}")
            time.sleep(0.02)

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def threads(self) -> dict[int, tuple[str, float]]:
        return thread_cpu(self.pid)

    def peak_rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmHWM")

    def stop(self) -> int:
        """SIGTERM to this broker's pid only; SIGKILL if it does not exit."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log(f"ferry pid {self.pid} ignored SIGTERM for 30s; killing it")
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_f.close()
        return self.proc.returncode


# --------------------------------------------------------------------------
# Inputs and the disk


def input_file(bench_dir: Path, size: int, count: int) -> Path:
    """count newline-terminated records of exactly `size` bytes each (the
    newline is the delimiter, not part of the record), each unique: a
    zero-padded record number followed by filler."""
    path = bench_dir / f"input-{size}B-x{count}.txt"
    if path.exists() and path.stat().st_size == (size + 1) * count:
        return path
    log(f"writing {path.name} ({(size + 1) * count / 1e6:.0f} MB)")
    filler = (b"abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 2))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        chunk = []
        for i in range(count):
            head = b"%012d " % i
            chunk.append(head + filler[: size - len(head)] + b"\n")
            if len(chunk) >= 4096:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))
    os.replace(tmp, path)
    return path


def split_input(path: Path, size: int, count: int, parts: int) -> list[Path]:
    """The input cut into `parts` files of count/parts records each."""
    if count % parts:
        raise BenchError(f"{count} records do not split evenly into {parts} parts")
    per = count // parts
    out = []
    with open(path, "rb") as src:
        for k in range(parts):
            part = path.with_name(f"{path.stem}.part{k}of{parts}.txt")
            want = (size + 1) * per
            data = src.read(want)
            if not (part.exists() and part.stat().st_size == want):
                part.write_bytes(data)
            out.append(part)
    return out


def disk_bandwidth(bench_dir: Path) -> dict:
    target = bench_dir / "dd.test"
    cmd = ["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=1024", "conv=fdatasync"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    finally:
        target.unlink(missing_ok=True)
    if p.returncode != 0:
        raise BenchError(f"dd failed: {p.stderr}")
    # "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 2.04 s, 527 MB/s"
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.,]+) s, ([0-9.,]+) (\w+)/s", p.stderr, re.M)
    if not m:
        raise BenchError(f"cannot parse dd output: {p.stderr}")
    nbytes, secs = int(m.group(1)), float(m.group(2).replace(",", "."))
    return {"command": shlex.join(cmd), "bytes": nbytes, "seconds": secs,
            "mb_per_s": nbytes / secs / 1e6, "dd_says": f"{m.group(3)} {m.group(4)}/s"}


# --------------------------------------------------------------------------
# One scenario


def kcat_metadata(kcat: str, bootstrap: str, topic: str, partitions: int) -> None:
    """Creates the topic (Metadata auto-creates it) and checks its partitions,
    so that the produce phase does not time topic creation."""
    deadline = time.monotonic() + 30
    while True:
        p = subprocess.run([kcat, "-L", "-b", bootstrap, "-t", topic, "-J"],
                           capture_output=True, text=True, timeout=30)
        try:
            md = json.loads(p.stdout)
            parts = md["topics"][0]["partitions"]
            if len(parts) == partitions and all(x.get("leader", -1) >= 0 for x in parts):
                return
        except (ValueError, KeyError, IndexError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"topic {topic} not ready with {partitions} partitions: "
                             f"{p.stdout} {p.stderr}")
        time.sleep(0.1)


def high_watermarks(kcat: str, bootstrap: str, topic: str, partitions: int) -> list[int]:
    cmd = [kcat, "-Q", "-b", bootstrap, "-J"]
    for part in range(partitions):
        cmd += ["-t", f"{topic}:{part}:-1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise BenchError(f"kcat -Q failed: {p.stderr}")
    data = json.loads(p.stdout)[topic]
    hws = []
    for part in range(partitions):
        entry = data[str(part)]
        if "error" in entry:
            raise BenchError(f"kcat -Q {topic}:{part}: {entry['error']}")
        hws.append(int(entry["offset"]))
    return hws


def kcat_cpu(r: dict) -> float:
    """CPU seconds of every kcat in a phase (the first command of each pipeline)."""
    return sum(pl["procs"][0]["utime"] + pl["procs"][0]["stime"] for pl in r["pipelines"])


def app_thread(r: dict) -> float:
    """The busiest kcat application thread of a phase. kcat's own thread keeps
    the process name; librdkafka's are named rdk:*."""
    return max(pl["threads"].get("kcat", 0.0) for pl in r["pipelines"])


def busiest_thread_delta(before: dict, after: dict) -> float:
    best = 0.0
    for tid, (_, cpu) in after.items():
        best = max(best, cpu - before.get(tid, ("", 0.0))[1])
    return best


def check_kcat(r: dict, what: str) -> None:
    for pl in r["pipelines"]:
        for res in pl["procs"]:
            if res["rc"] != 0 or "Delivery failed" in res["stderr"] or "ERROR" in res["stderr"]:
                raise BenchError(f"{what} failed (exit {res['rc']}): {fmt_pipeline(pl['cmds'])}\n"
                                 f"{res['stderr'][-3000:]}")


def run_scenario(args, sc: dict, run_no: int, files: dict, run_dir: Path) -> dict:
    size, fsync, parts, count = sc["size"], sc["fsync"], sc["partitions"], sc["count"]
    clients = sc["clients"]
    nbytes = size * count
    name = sc["name"]
    data_dir = run_dir / f"{name}-run{run_no}"
    broker = Broker(args.ferry, data_dir, fsync, parts)
    log(f"{name} run {run_no}: ferry pid {broker.pid} on {broker.bootstrap}, data {data_dir}")
    topic = f"bench-{size}b-{parts}p"
    res: dict = {"scenario": name, "run": run_no, "load_before": loadavg()}
    base = ["-b", broker.bootstrap, "-t", topic]
    try:
        kcat_metadata(args.kcat, broker.bootstrap, topic, parts)

        # ---- produce: one kcat, or `clients` kcats each writing its share of
        # the input to its own partition.
        if clients == 1:
            prod = [[[args.kcat, "-P", *base, *PRODUCE_FLAGS, "-l", str(files[(size, 1)][0])]]]
        else:
            prod = [[[args.kcat, "-P", *base, "-p", str(i), *PRODUCE_FLAGS, "-l", str(f)]]
                    for i, f in enumerate(files[(size, clients)])]
        log(f"{name} run {run_no}: produce {count} x {size} B with {clients} kcat")
        cpu0, thr0, sys0 = broker.cpu(), broker.threads(), system_cpu()
        r = run_timed(prod, False, args.timeout)
        cpu1, thr1, sys1 = broker.cpu(), broker.threads(), system_cpu()
        check_kcat(r, "produce")
        hws = high_watermarks(args.kcat, broker.bootstrap, topic, parts)
        if sum(hws) != count:
            raise BenchError(f"{name}: high watermarks {hws} add up to {sum(hws)}, "
                             f"expected exactly {count}")
        res["produce"] = phase_result(r, cpu1 - cpu0, busiest_thread_delta(thr0, thr1),
                                      count, nbytes, sys0, sys1)
        res["produce"]["high_watermarks"] = hws
        log(f"{name} run {run_no}: produce {r['wall']:.2f}s "
            f"({count / r['wall']:,.0f} rec/s, {nbytes / r['wall'] / 1e6:.0f} MB/s), "
            f"broker cpu {cpu1 - cpu0:.2f}s, kcat cpu {kcat_cpu(r):.2f}s; "
            f"high watermarks add up to {sum(hws)}: ok")

        # ---- consume to /dev/null, then through wc -l (counted)
        if clients == 1:
            cons = [[args.kcat, "-C", *base, "-o", "0", "-e", "-q", "-c", str(count),
                     *CONSUME_FLAGS]]
        else:
            cons = [[args.kcat, "-C", *base, "-p", str(i), "-o", "0", "-e", "-q",
                     "-c", str(hws[i]), *CONSUME_FLAGS] for i in range(clients)]
        for key in ("consume", "consume_wc"):
            wc = key == "consume_wc"
            pipelines = [[c, ["wc", "-l"]] if wc else [c] for c in cons]
            log(f"{name} run {run_no}: {key}")
            cpu0, thr0, sys0 = broker.cpu(), broker.threads(), system_cpu()
            r = run_timed(pipelines, wc, args.timeout)
            cpu1, thr1, sys1 = broker.cpu(), broker.threads(), system_cpu()
            check_kcat(r, key)
            pr = phase_result(r, cpu1 - cpu0, busiest_thread_delta(thr0, thr1), count, nbytes,
                              sys0, sys1)
            if wc:
                got = sum(int(pl["stdout"].split()[0]) for pl in r["pipelines"])
                if got != count:
                    raise BenchError(f"{name}: consumed {got} records, expected exactly {count}")
                pr["counted"] = got
                pr["wc_cpu_s"] = sum(pl["procs"][1]["utime"] + pl["procs"][1]["stime"]
                                     for pl in r["pipelines"])
            res[key] = pr
            log(f"{name} run {run_no}: {key} {r['wall']:.2f}s "
                f"({count / r['wall']:,.0f} rec/s, {nbytes / r['wall'] / 1e6:.0f} MB/s), "
                f"broker cpu {cpu1 - cpu0:.2f}s, kcat cpu {kcat_cpu(r):.2f}s"
                + (f"; counted {pr['counted']}: ok" if wc else ""))
        res["peak_rss_mb"] = broker.peak_rss_kb() / 1024
    finally:
        rc = broker.stop()
        res["broker_exit"] = rc
        if not args.keep:
            rm_tree(data_dir)
    if rc != 0:
        raise BenchError(f"ferry exited with {rc} after SIGTERM; log in {broker.log_path}")
    if not args.keep:
        broker.log_path.unlink(missing_ok=True)
    return res


def phase_result(r: dict, broker_cpu: float, busiest: float, count: int, nbytes: int,
                 sys0: tuple[float, float], sys1: tuple[float, float]) -> dict:
    wall = r["wall"]
    children = sum(p["utime"] + p["stime"] for pl in r["pipelines"] for p in pl["procs"])
    # Everything else the machine ran meanwhile (other users, the kernel's
    # writeback, this script): a disturbance gauge. Ticks are 10 ms.
    others = max(0.0, (sys1[0] - sys0[0]) - broker_cpu - children)
    kthreads: dict[str, float] = {}
    for pl in r["pipelines"]:
        for k, v in pl["threads"].items():
            kthreads[k] = kthreads.get(k, 0.0) + v
    return {
        "wall_s": wall,
        "records_per_s": count / wall,
        "mb_per_s": nbytes / wall / 1e6,
        "broker_cpu_s": broker_cpu,
        "broker_cpu_s_per_m": broker_cpu / (count / 1e6),
        "broker_busiest_thread_s": busiest,
        "kcat_user_s": sum(pl["procs"][0]["utime"] for pl in r["pipelines"]),
        "kcat_sys_s": sum(pl["procs"][0]["stime"] for pl in r["pipelines"]),
        "kcat_app_thread_s": app_thread(r),
        "kcat_rdk_threads_s": sum(v for k, v in kthreads.items() if k.startswith("rdk:")),
        "kcat_threads_s": kthreads,
        "kcat_maxrss_mb": max(pl["procs"][0]["maxrss_kb"] for pl in r["pipelines"]) / 1024,
        "other_cpu_s": others,
        "steal_s": sys1[1] - sys0[1],
    }


def rm_tree(path: Path) -> None:
    if not path.exists():
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for f in files:
            os.unlink(os.path.join(root, f))
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    os.rmdir(path)


# --------------------------------------------------------------------------
# Machine description


def machine_info(bench_dir: Path) -> dict:
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
    p = subprocess.run(["df", "-T", "-P", str(bench_dir)], capture_output=True, text=True)
    rows = p.stdout.strip().splitlines()
    if len(rows) >= 2:
        cols = rows[1].split()
        info["filesystem"] = f"{cols[1]} on {cols[0]} (mounted at {cols[-1]})"
    return info


def tool_versions(kcat: str) -> dict:
    p = subprocess.run([kcat, "-V"], capture_output=True, text=True)
    text = p.stdout + p.stderr
    m = re.search(r"Version (\S+) \(.*?librdkafka (\S+)", text)
    return {"kcat": m.group(1) if m else "?", "librdkafka": m.group(2) if m else "?",
            "kcat_V": text.strip()}


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "crates", "Cargo.toml",
                                "Cargo.lock"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        return rev + (" (with uncommitted changes under crates/)" if dirty else "")
    except OSError:
        return "?"


# --------------------------------------------------------------------------
# Aggregation and the report


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str) -> str:
    if len(values) < 2:
        return ""
    return f" ({format(min(values), fmt)}–{format(max(values), fmt)})"


def summarize(scenarios: list[dict], results: list[dict]) -> list[dict]:
    rows = []
    for sc in scenarios:
        runs = [r for r in results if r["scenario"] == sc["name"]]
        if not runs:
            continue
        row = {"scenario": sc, "runs": len(runs)}
        for phase in ("produce", "consume", "consume_wc"):
            ph = [r[phase] for r in runs]
            row[phase] = {k: [p[k] for p in ph] for k in ph[0] if isinstance(ph[0][k], float)}
            row[phase]["kcat_cpu_s"] = [p["kcat_user_s"] + p["kcat_sys_s"] for p in ph]
            # The run with the median wall time, for numbers that belong together.
            mid = sorted(ph, key=lambda p: p["wall_s"])[len(ph) // 2]
            row[phase + "_median_run"] = dict(mid, kcat_cpu_s=mid["kcat_user_s"] + mid["kcat_sys_s"])
        row["peak_rss_mb"] = [r["peak_rss_mb"] for r in runs]
        rows.append(row)
    return rows


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 and size >= 1024 else f"{size} B"


def cell(values: list[float], fmt: str) -> str:
    return format(med(values), fmt) + spread(values, fmt)


def clients_label(sc: dict) -> str:
    if sc["clients"] == 1:
        return "1"
    return f"{sc['clients']} (one per partition)"


HANDWRITTEN = "<!-- Everything below this line is kept when the harness rewrites this file. -->"


def render(meta: dict, rows: list[dict], disks: list[dict]) -> str:
    m = meta["machine"]
    v = meta["versions"]
    cores = m["cores"]
    out: list[str] = []
    w = out.append
    w("# Benchmarks")
    w("")
    w("Kafka produce and consume throughput of Ferry with librdkafka (kcat) as the client. "
      "The sections down to \"Targets\" are generated by `benches/kafka_librdkafka.py`: "
      "rerun it rather than editing them.")
    w("")
    w("## How to reproduce")
    w("")
    w("```sh")
    w("./scripts/bench-kafka                    # full run, 3 runs per scenario (~3 minutes after the build)")
    w("./scripts/bench-kafka --quick            # 10x fewer records, for a quick look")
    w("./scripts/bench-kafka --json bench-results/results.json --runs 5")
    w("./scripts/bench-kafka --help             # every option")
    w("FERRY_BIN=path/to/ferry ./scripts/bench-kafka   # benchmark that binary, skip the build")
    w("```")
    w("")
    w("The script builds `target/release/ferry`, installs kcat with apt-get if it is missing, "
      "and rewrites this file (`--no-write` leaves it alone). It is not part of "
      "`scripts/test` or CI. Client and broker share the machine's cores, so nothing else "
      "should run meanwhile; data goes to `./bench-results/` (git-ignored).")
    w("")
    w("## This run")
    w("")
    w(f"- **date**: {meta['date']}; ferry built from {meta['git']}; invoked as "
      f"`{meta['invocation']}`")
    w(f"- **machine**: {m['cpu']}, {cores} cores, {m['ram_gib']:.0f} GiB RAM, Linux "
      f"{m['kernel']}; bench directory on {m.get('filesystem', '?')}")
    w(f"- **load average** (1, 5, 15 min) before the run: {meta['load_before']}; "
      f"after: {meta['load_after']} (the benchmark's own processes count in both)")
    w(f"- **client**: kcat {v['kcat']} with librdkafka {v['librdkafka']} (from `kcat -V`), "
      "on the same machine as the broker")
    w(f"- **records**: {meta['counts']}; {meta['runs']} run{'' if meta['runs'] == 1 else 's'} per scenario, rounds "
      "interleaved; tables give the median and, in parentheses, the min–max over the runs")
    w("")
    w("Each scenario starts a fresh broker on a fresh data directory and stops it with "
      "SIGTERM at the end:")
    w("")
    w("```sh")
    w("target/release/ferry serve --data-dir bench-results/run-…/<scenario> "
      "--kafka-listen 127.0.0.1:0 \\")
    w("    --topic-default fsync.policy=<always|never> --default-partitions <partitions>")
    w("kcat -L -b $B -t $T -J        # creates the topic (auto-create) before any timing")
    w(f"kcat -P -b $B -t $T {' '.join(PRODUCE_FLAGS)} -l input.txt")
    w("kcat -Q -b $B -J -t $T:0:-1 … -t $T:<n-1>:-1   # high watermarks must add up to the count")
    w(f"kcat -C -b $B -t $T -o 0 -e -q -c $COUNT {' '.join(CONSUME_FLAGS)} > /dev/null")
    w("kcat -C …the same… | wc -l   # must print exactly $COUNT")
    w("```")
    w("")
    w("Consumers start at `-o 0`, which is the beginning of these fresh topics: `-o beginning` "
      "costs a ListOffsets round trip that librdkafka 2.0.2 now and then retries after a "
      "fixed 500 ms (the partition's leader is not known yet when it first asks), which "
      "added 0.5 s to about 1.5% of runs.")
    w("")
    w("With several kcat processes, kcat *i* produces the *i*-th slice of the input with "
      "`-p i` and consumes with `-p i -c <high watermark of i>`; the phase lasts from the "
      "first start to the last exit.")
    w("")
    w("The input holds one record per line, each exactly the record size (a record number, "
      "then filler; the newline is the delimiter, not payload). Produce is timed from "
      "starting kcat until it exits, which is after every record's delivery report, i.e. "
      "after the broker acknowledged it with acks=all; consume from starting kcat until it "
      "has received the last record. Consumers read what the broker has just written, so "
      "from the page cache. MB/s counts record payload (10^6 bytes). Broker CPU is "
      "utime+stime of the ferry process (/proc/PID/stat) before and after each phase; kcat "
      "CPU is its exact rusage (wait4); peak RSS is the broker's VmHWM at the end of the "
      "scenario, after produce and both consumes.")
    w("")

    d = [x["mb_per_s"] for x in disks]
    disk_med = med(d) if d else None
    w("## Disk")
    w("")
    if d:
        w(f"`{disks[0]['command']}` in the bench directory, once per round before the "
          f"scenarios: **{disk_med:.0f} MB/s**" + (f" median{spread(d, '.0f')} MB/s" if len(d) > 1 else "")
          + f" (dd printed: {', '.join(x['dd_says'] for x in disks)}).")
    w("")

    w("## Results")
    w("")
    w("| records | fsync.policy | partitions | kcat processes | produce rec/s | produce MB/s "
      "| consume rec/s | consume MB/s | consume \\| wc -l rec/s | broker CPU s per M records: "
      "produce | …: consume | broker peak RSS MB |")
    w("|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        sc = row["scenario"]
        p, c, cw = row["produce"], row["consume"], row["consume_wc"]
        w(f"| {sc['count']:,} × {size_label(sc['size'])} | {sc['fsync']} | {sc['partitions']} | "
          f"{clients_label(sc)} | "
          f"{cell(p['records_per_s'], ',.0f')} | {cell(p['mb_per_s'], ',.0f')} | "
          f"{cell(c['records_per_s'], ',.0f')} | {cell(c['mb_per_s'], ',.0f')} | "
          f"{cell(cw['records_per_s'], ',.0f')} | "
          f"{cell(p['broker_cpu_s_per_m'], '.2f')} | {cell(c['broker_cpu_s_per_m'], '.2f')} | "
          f"{cell(row['peak_rss_mb'], '.0f')} |")
    w("")
    w("\"consume\" is kcat writing to /dev/null; the `| wc -l` run is the one whose count is "
      "checked (the pipe and wc take CPU on the same cores, so it is a little slower). "
      "/proc's CPU times tick in 10 ms steps.")
    w("")

    w("### Where the time goes (the run with the median wall time)")
    w("")
    w("The wall time of each phase next to the CPU time each side spent in it. kcat's "
      "*application thread* (named `kcat`: it reads the input and calls produce, or polls "
      "and writes the output; librdkafka's own threads are `rdk:*`) is sampled from /proc "
      "every 50 ms, so it is a slight underestimate; with several kcat processes the busiest "
      "one is shown. *Everything else* is the machine's busy time (/proc/stat) less the "
      "broker and kcat: other processes, kernel writeback, this script; when it is large, "
      "the run was disturbed.")
    w("")
    w("| records | fsync | partitions | kcat processes | phase | wall s | kcat CPU s | "
      "kcat application thread s | kcat librdkafka threads s | broker CPU s | "
      "busiest broker thread s | everything else s | steal s | limited by |")
    w("|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for row in rows:
        sc = row["scenario"]
        for phase in ("produce", "consume"):
            p = row[phase + "_median_run"]
            wall = p["wall_s"]
            w(f"| {size_label(sc['size'])} | {sc['fsync']} | {sc['partitions']} | "
              f"{sc['clients']} | {phase} | {wall:.2f} | {p['kcat_cpu_s']:.2f} | "
              f"{p['kcat_app_thread_s']:.2f} | {p['kcat_rdk_threads_s']:.2f} | "
              f"{p['broker_cpu_s']:.2f} | {p['broker_busiest_thread_s']:.2f} | "
              f"{p['other_cpu_s']:.2f} | {p['steal_s']:.2f} | "
              f"{bound_by(p, cores, sc, phase, disk_med)} |")
    w("")
    w("\"limited by\" is read off these numbers, first match wins: *disturbed* when other "
      "work and steal add up to ≥ 25% of the wall time (and ≥ 0.1 s); *CPU* when kcat and the broker "
      f"together used ≥ 85% of the {cores} cores' time; *client* when a kcat application "
      "thread ran ≥ 85% of the wall time (a single thread that cannot go faster); *broker* "
      "when the broker's CPU time is ≥ 70% of the wall time (a kcat consumer keeps one fetch "
      "in flight per broker, so serving fetches is on the critical path even when spread "
      "over threads); *disk* for fsync=always produce at ≥ 50% of dd's bandwidth; otherwise "
      "*round trips* (waiting on requests, fsyncs or wake-ups rather than on any one "
      "resource).")
    w("")
    steal = [r[ph]["steal_s"] for r in rows for ph in ("produce", "consume")]
    total_steal = sum(sum(x) for x in steal)
    w(f"Steal (CPU time the hypervisor gave to other guests while this one wanted it) added "
      f"up to {total_steal:.1f} s over all timed phases; its worst single phase lost "
      f"{max(max(x) for x in steal):.2f} s (CPU seconds, summed over the {cores} cores). "
      "Steal and other work explain some of the low ends of the ranges above; the tables "
      "report medians for that reason.")
    w("")

    w("## Targets")
    w("")
    w(targets_text(rows, disk_med, cores))
    w("")
    return "\n".join(out)


def bound_by(p: dict, cores: int, sc: dict, phase: str, disk_med) -> str:
    wall, app = p["wall_s"], p["kcat_app_thread_s"]
    kc, bc = p["kcat_cpu_s"], p["broker_cpu_s"]
    if p["other_cpu_s"] + p["steal_s"] >= max(0.25 * wall, 0.1):
        return "disturbed"
    if kc + bc >= 0.85 * cores * wall:
        return "CPU"
    if app >= 0.85 * wall:
        return "client"
    if bc >= 0.70 * wall:
        return "broker"
    if (phase == "produce" and sc["fsync"] == "always" and disk_med
            and sc["size"] * sc["count"] / wall / 1e6 >= 0.5 * disk_med):
        return "disk"
    return "round trips"


def describe(row: dict, phase: str) -> str:
    sc = row["scenario"]
    ph = row[phase]
    return (f"fsync={sc['fsync']}, {sc['partitions']} partition{'s' if sc['partitions'] > 1 else ''}"
            f", {sc['clients']} kcat")


def busy_text(row: dict, phase: str, cores: int) -> str:
    p = row[phase + "_median_run"]
    wall = p["wall_s"]
    return (f"in its median run, {wall:.2f} s of wall time, kcat used {p['kcat_cpu_s']:.2f} "
            f"CPU s (its application thread {p['kcat_app_thread_s']:.2f} s) and the broker "
            f"{p['broker_cpu_s']:.2f} CPU s, of the {cores * wall:.2f} s the {cores} cores had")


def targets_text(rows: list[dict], disk_med: float | None, cores: int) -> str:
    lines = []
    small = [r for r in rows if r["scenario"]["size"] == 100]
    if small:
        single = [r for r in small if r["scenario"]["clients"] == 1] or small
        multi = [r for r in small if r["scenario"]["clients"] > 1]
        # Issue 6's targets: 1,000,000 records/s produced, 2,000,000 consumed.
        for phase, target in (("produce", 1_000_000), ("consume", 2_000_000)):
            rates = [(r, med(r[phase]["records_per_s"])) for r in single]
            hits = sum(1 for _, x in rates if x >= target)
            best, rate = max(rates, key=lambda t: t[1])
            verdict = "**met**" if rate >= target else "**not met**"
            listing = "; ".join(f"{describe(r, phase)}: {x:,.0f}" for r, x in rates)
            cpu = [med(r[phase]["broker_cpu_s_per_m"]) for r in single]
            text = (f"- **{target:,} records/s of 100 B, {phase}, one kcat**: {verdict} in "
                    f"{hits} of {len(rates)} scenarios (medians in rec/s: {listing}). In the "
                    f"best, {busy_text(best, phase, cores)}. The broker spent "
                    f"{min(cpu):.2f}–{max(cpu):.2f} CPU s per million records, i.e. "
                    f"{100 * min(cpu):.0f}–{100 * max(cpu):.0f}% of one core at 1,000,000 "
                    "records/s.")
            if multi:
                mb = max(multi, key=lambda r: med(r[phase]["records_per_s"]))
                mrate = med(mb[phase]["records_per_s"])
                text += (f" With {mb['scenario']['clients']} kcat processes: {mrate:,.0f} rec/s "
                         f"median ({describe(mb, phase)}; runs "
                         f"{min(mb[phase]['records_per_s']):,.0f}–"
                         f"{max(mb[phase]['records_per_s']):,.0f}); "
                         f"{busy_text(mb, phase, cores)}.")
            lines.append(text)
    allbig = [r for r in rows if r["scenario"]["size"] >= 1024
              and r["scenario"]["fsync"] == "always"]
    if allbig and disk_med:
        def pct(r):
            return med(r["produce"]["pct_of_dd"])
        best = max(allbig, key=pct)
        verdict = "**met**" if pct(best) >= 70 else "**not met**"
        one = [r for r in allbig if r["scenario"]["clients"] == 1]
        hits = sum(1 for r in one if pct(r) >= 70)
        per = "; ".join(
            f"{describe(r, 'produce')}: {med(r['produce']['mb_per_s']):.0f} MB/s, "
            f"{pct(r):.0f}% (runs {min(r['produce']['pct_of_dd']):.0f}–"
            f"{max(r['produce']['pct_of_dd']):.0f}%)" for r in allbig)
        lines.append(
            f"- **≥ 70% of the disk's sequential write bandwidth, "
            f"{size_label(best['scenario']['size'])} records, fsync=always, produce**: "
            f"{verdict}, in {hits} of {len(one)} one-kcat scenarios. Each run's payload MB/s "
            f"is divided by the dd figure of its own round (median {disk_med:.0f} MB/s); "
            f"medians of those ratios: {per}. In the best, "
            f"{busy_text(best, 'produce', cores)}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Kafka throughput benchmark of Ferry with kcat (librdkafka); "
                    "see the top of benches/kafka_librdkafka.py and docs/benchmarks.md.")
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    ap.add_argument("--quick", action="store_true", help="10x fewer records")
    ap.add_argument("--json", metavar="FILE", help="also write machine-readable results here")
    ap.add_argument("--no-write", action="store_true",
                    help="print the report instead of rewriting docs/benchmarks.md")
    ap.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"),
                    help="report to rewrite (default docs/benchmarks.md)")
    ap.add_argument("--bench-dir", default=str(REPO / "bench-results"),
                    help="data directories, inputs and dd's test file (default ./bench-results)")
    ap.add_argument("--ferry", default=str(REPO / "target" / "release" / "ferry"),
                    help="broker binary (default target/release/ferry)")
    ap.add_argument("--ferry-source", metavar="TEXT",
                    help="what the binary was built from, for the report (default: this "
                         "repository's HEAD, flagged when crates/ has uncommitted changes)")
    ap.add_argument("--kcat", default="kcat")
    ap.add_argument("--sizes", default="100,10240", help="record sizes in bytes (default 100,10240)")
    ap.add_argument("--fsync", default="always,never", help="fsync.policy values (default always,never)")
    ap.add_argument("--partitions", default="1,8", help="partition counts (default 1,8)")
    ap.add_argument("--parallel", type=int, default=2,
                    help="extra scenarios with this many kcat processes, one per partition, for "
                         "every size and fsync policy (default 2; 0 for none)")
    ap.add_argument("--small-count", type=int, default=1_000_000,
                    help="records of sizes < 1 KiB (default 1,000,000)")
    ap.add_argument("--large-count", type=int, default=100_000,
                    help="records of sizes >= 1 KiB (default 100,000)")
    ap.add_argument("--timeout", type=float, default=900, help="per phase, seconds (default 900)")
    ap.add_argument("--keep", action="store_true", help="keep the brokers' data directories")
    args = ap.parse_args()
    args.ferry = Path(args.ferry)
    if not args.ferry.is_file():
        raise SystemExit(f"{args.ferry} not found: run cargo build --release "
                         "(scripts/bench-kafka does)")

    div = 10 if args.quick else 1
    bench_dir = Path(args.bench_dir).resolve()
    bench_dir.mkdir(parents=True, exist_ok=True)
    run_dir = bench_dir / time.strftime("run-%Y%m%d-%H%M%S")
    sizes = [int(x) for x in args.sizes.split(",")]
    policies = args.fsync.split(",")

    def count_of(size: int) -> int:
        return (args.small_count if size < 1024 else args.large_count) // div

    scenarios = []
    for size in sizes:
        for fsync in policies:
            for parts in (int(x) for x in args.partitions.split(",")):
                scenarios.append({"name": f"{size}B-{fsync}-{parts}p", "size": size,
                                  "fsync": fsync, "partitions": parts, "clients": 1,
                                  "count": count_of(size)})
    if args.parallel > 1:
        k = args.parallel
        for size in sizes:
            for fsync in policies:
                scenarios.append({"name": f"{size}B-{fsync}-{k}p-{k}kcat", "size": size,
                                  "fsync": fsync, "partitions": k, "clients": k,
                                  "count": count_of(size)})

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": args.ferry_source or (
            f"this repository at {git_rev()}" if args.ferry == REPO / "target" / "release" / "ferry"
            else f"unknown source: {args.ferry} (repository HEAD is {git_rev()})"),
        "invocation": "./scripts/bench-kafka" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""),
        "machine": machine_info(bench_dir),
        "versions": tool_versions(args.kcat),
        "runs": args.runs,
        "load_before": loadavg(),
        "produce_flags": PRODUCE_FLAGS,
        "consume_flags": CONSUME_FLAGS,
    }
    meta["counts"] = ", ".join(f"{count_of(size):,} × {size_label(size)}" for size in sizes)
    log(f"kcat {meta['versions']['kcat']} / librdkafka {meta['versions']['librdkafka']}; "
        f"{len(scenarios)} scenarios x {args.runs} runs; load {meta['load_before']}; "
        f"data under {run_dir}")

    files: dict[tuple[int, int], list[Path]] = {}
    for size in sizes:
        whole = input_file(bench_dir, size, count_of(size))
        files[(size, 1)] = [whole]
        if args.parallel > 1:
            files[(size, args.parallel)] = split_input(whole, size, count_of(size), args.parallel)

    results: list[dict] = []
    disks: list[dict] = []
    t_start = time.monotonic()
    for run_no in range(1, args.runs + 1):
        log(f"round {run_no}/{args.runs}: dd")
        disk = disk_bandwidth(bench_dir)
        disks.append(disk)
        log(f"dd: {disk['mb_per_s']:.0f} MB/s ({disk['dd_says']})")
        for sc in scenarios:
            res = run_scenario(args, sc, run_no, files, run_dir)
            # Against this round's dd, measured minutes earlier on the same disk.
            res["produce"]["pct_of_dd"] = 100 * res["produce"]["mb_per_s"] / disk["mb_per_s"]
            results.append(res)
            log(f"elapsed {time.monotonic() - t_start:.0f}s")
    meta["load_after"] = loadavg()

    rows = summarize(scenarios, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "scenarios": scenarios, "disk": disks,
                       "results": results}, f, indent=1, default=str)
        log(f"wrote {args.json}")
    doc = render(meta, rows, disks)
    if args.no_write:
        print(doc)
    else:
        doc_path = Path(args.doc)
        kept = ""
        if doc_path.exists():
            old = doc_path.read_text()
            if HANDWRITTEN in old:
                kept = old[old.index(HANDWRITTEN):]
        doc_path.write_text(doc + "\n" + (kept or HANDWRITTEN + "\n"))
        log(f"wrote {doc_path}")
    try:
        run_dir.rmdir()
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"FAILED: {e}")
        sys.exit(1)
