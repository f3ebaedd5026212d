"""Fixtures for the real-client interop suite.

Every test gets its own `ferry serve` process on a free port with a fresh data
directory (`ferry` fixture). Extra server flags come from the `ferry_args`
marker:

    @pytest.mark.ferry_args("--default-partitions", "3")
    def test_x(ferry): ...

At teardown the fixture sends SIGTERM to the server's pid (never by name),
waits for it, and fails the test if it exited with a non-zero status, was
killed by a signal, did not stop in time, or logged a panic. When a test fails,
the server's log is attached to the report.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 20.0

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LISTENING = re.compile(r"kafka listening on (\S+):(\d+)")
_AMQP_LISTENING = re.compile(r"amqp listening on (\S+):(\d+)")
_SQS_LISTENING = re.compile(r"sqs listening on (\S+):(\d+)")
_HTTP_LISTENING = re.compile(r"http listening on (\S+):(\d+)")


def ferry_bin() -> Path:
    path = Path(os.environ.get("FERRY_BIN", "target/debug/ferry"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def api_versions_v0(host: str, port: int, timeout: float) -> list[tuple[int, int, int]]:
    """Raw ApiVersions v0 exchange: [(api_key, min_version, max_version)].

    Raises OSError/TimeoutError if the broker does not answer in time."""
    client_id = b"ferry-interop-probe"
    correlation_id = 7
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(body)) + body)

        def read_exact(n: int) -> bytes:
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
                buf += chunk
            return buf

        (size,) = struct.unpack(">i", read_exact(4))
        frame = read_exact(size)
    corr, error_code, count = struct.unpack(">ihi", frame[:10])
    assert corr == correlation_id, f"correlation id {corr} != {correlation_id}"
    assert error_code == 0, f"ApiVersions error code {error_code}"
    return [struct.unpack(">hhh", frame[10 + 6 * i : 16 + 6 * i]) for i in range(count)]


# Once one server failed the ApiVersions probe, later ones get a short probe
# so that a broken build fails the suite quickly instead of timing out in
# every client call.
_probe_failed = False


class ServerError(Exception):
    pass


class FerryServer:
    """One `ferry serve` process (restartable on the same data directory)."""

    def __init__(self, root: Path, extra_args: list[str]):
        self.root = root
        # Nested so that a path escaping the data dir (e.g. a topic called
        # ../../etc) would still land inside `root`, where tests can see it.
        self.data_dir = root / "sandbox" / "inner" / "data"
        self.data_dir.mkdir(parents=True)
        self.log_path = root / "ferry.log"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None
        # The AMQP 0-9-1 listener (a free port unless the test's ferry_args
        # give --amqp-listen).
        self.amqp_port: int | None = None
        # The SQS HTTP listener (a free port unless the test's ferry_args
        # give --sqs-listen).
        self.sqs_port: int | None = None
        # The admin HTTP listener (a free port unless the test's ferry_args
        # give --http-listen).
        self.http_port: int | None = None
        # Exit statuses of clean stops (SIGTERM), in order.
        self.exit_codes: list[int] = []
        # Whether the current process was stopped on purpose (stop/kill9).
        self._stopped_on_purpose = False
        self._log_offset = 0

    # -- public API -------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        assert self.port is not None, "server not started"
        return f"{self.host}:{self.port}"

    @property
    def amqp_url(self) -> str:
        """amqp:// URL of the AMQP listener, default vhost, guest/guest."""
        assert self.amqp_port is not None, "server not started"
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def sqs_endpoint(self) -> str:
        """http:// endpoint URL of the SQS listener (for boto3's endpoint_url)."""
        assert self.sqs_port is not None, "server not started"
        return f"http://127.0.0.1:{self.sqs_port}"

    @property
    def http_endpoint(self) -> str:
        """http:// base URL of the admin HTTP listener (JSON API, /metrics)."""
        assert self.http_port is not None, "server not started"
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    @property
    def log(self) -> str:
        """Everything the server(s) wrote to stderr so far, ANSI codes removed."""
        try:
            return strip_ansi(self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def start(
        self,
        listen: str = "127.0.0.1:0",
        amqp_listen: str = "127.0.0.1:0",
        sqs_listen: str = "127.0.0.1:0",
        http_listen: str = "127.0.0.1:0",
    ) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        binary = ferry_bin()
        if not binary.exists():
            raise ServerError(f"ferry binary not found at {binary} (run `cargo build` or set FERRY_BIN)")
        args = [
            str(binary),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--kafka-listen",
            listen,
            *([] if "--amqp-listen" in self.extra_args else ["--amqp-listen", amqp_listen]),
            *([] if "--sqs-listen" in self.extra_args else ["--sqs-listen", sqs_listen]),
            *([] if "--http-listen" in self.extra_args else ["--http-listen", http_listen]),
            *self.extra_args,
        ]
        self._stopped_on_purpose = False
        env = dict(os.environ)
        env.setdefault("FERRY_LOG", "info")
        env["NO_COLOR"] = "1"
        with open(self.log_path, "ab") as f:
            f.write(f"\n===== ferry start: {' '.join(args)}\n".encode())
            self._log_offset = f.tell()
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=f,
                cwd=str(self.root),
                env=env,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            text = self._log_since_start()
            m = _LISTENING.search(text)
            amqp = _AMQP_LISTENING.search(text)
            sqs = _SQS_LISTENING.search(text)
            http = _HTTP_LISTENING.search(text)
            if m and amqp and sqs and http:
                self.host, self.port = m.group(1), int(m.group(2))
                self.amqp_port = int(amqp.group(2))
                self.sqs_port = int(sqs.group(2))
                self.http_port = int(http.group(2))
                self._probe()
                return
            code = self.proc.poll()
            if code is not None:
                raise ServerError(f"ferry exited with status {code} before listening:\n{self.log}")
            if time.monotonic() > deadline:
                self._kill()
                raise ServerError(
                    f"ferry did not log 'kafka listening on', 'amqp listening on', 'sqs listening on' and 'http listening on' within {STARTUP_TIMEOUT_S:.0f}s:\n{self.log}"
                )
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM, wait, and return the exit status (negative: killed by signal).

        Raises ServerError if the server has to be SIGKILLed."""
        assert self.proc is not None
        if self.proc.poll() is not None and not self._stopped_on_purpose:
            raise ServerError(f"ferry (pid {self.proc.pid}) had already died with status {self.proc.returncode}")
        self._stopped_on_purpose = True
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._kill()
                self.exit_codes.append(-9)
                raise ServerError(f"ferry (pid {self.proc.pid}) ignored SIGTERM for {SHUTDOWN_TIMEOUT_S:.0f}s; killed")
        code = self.proc.returncode
        self.exit_codes.append(code)
        return code

    def restart(self) -> None:
        """Clean stop (must exit 0), then start again on the same data dir.

        The same port is reused when possible, so the bootstrap string usually
        does not change; read `bootstrap` again after calling this anyway."""
        code = self.stop()
        if code != 0:
            raise ServerError(f"ferry exited with status {code} on SIGTERM during restart:\n{self.log}")
        self._start_again()

    def crash_and_restart(self) -> None:
        """SIGKILL, then start again on the same data dir and, when
        possible, the same ports (clients reconnect to the same addresses)."""
        self.kill9()
        self._start_again()

    def _start_again(self) -> None:
        try:
            self.start(
                listen=f"127.0.0.1:{self.port}",
                amqp_listen=f"127.0.0.1:{self.amqp_port}",
                sqs_listen=f"127.0.0.1:{self.sqs_port}",
                http_listen=f"127.0.0.1:{self.http_port}",
            )
        except ServerError:
            if self.proc is not None and self.proc.poll() is None:
                raise
            self.start()

    def kill9(self) -> None:
        """Crash the server (SIGKILL) without a clean shutdown."""
        self._stopped_on_purpose = True
        self._kill()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- internals --------------------------------------------------------

    def _log_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return strip_ansi(f.read().decode(errors="replace"))
        except FileNotFoundError:
            return ""

    def _probe(self) -> None:
        """Checks the broker answers a request at all before clients try."""
        global _probe_failed
        timeout = 1.0 if _probe_failed else 5.0
        try:
            api_versions_v0(self.host, self.port, timeout)
        except (OSError, AssertionError, struct.error) as e:
            _probe_failed = True
            raise ServerError(
                f"ferry at {self.bootstrap} did not answer a raw ApiVersions v0 request within {timeout:.0f}s "
                f"({type(e).__name__}: {e}); no client can work against it.\n{self.log}"
            ) from None

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def pytest_configure(config):
    config.addinivalue_line("markers", "ferry_args(*args): extra `ferry serve` flags for this test's server")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "_ferry_server", None)
    if server is not None and report.failed:
        log = server.log
        if len(log) > 20000:
            log = "... (truncated) ...\n" + log[-20000:]
        report.sections.append((f"ferry server log ({server.log_path})", log))


@pytest.fixture
def ferry(request, tmp_path):
    """A running server; see FerryServer for what it offers."""
    marker = request.node.get_closest_marker("ferry_args")
    extra = list(marker.args) if marker else []
    server = FerryServer(tmp_path, extra)
    request.node._ferry_server = server
    try:
        server.start()
    except ServerError as e:
        if server.is_running():
            server.stop()
        pytest.fail(str(e), pytrace=False)
    yield server

    problems = []
    if server.proc is not None:
        if server.proc.poll() is not None and not server._stopped_on_purpose:
            problems.append(f"ferry (pid {server.pid}) died during the test with status {server.proc.returncode}")
        elif server.proc.poll() is None:
            try:
                server.stop()
            except ServerError as e:
                problems.append(str(e))
    bad_exits = [c for c in server.exit_codes if c != 0]
    if bad_exits:
        problems.append(f"ferry exited with non-zero status on SIGTERM (statuses: {server.exit_codes}, pid {server.pid})")
    log = server.log
    if "panicked at" in log:
        problems.append("ferry logged a panic")
    if problems:
        tail = log[-15000:]
        pytest.fail("; ".join(problems) + f"\n--- ferry log ---\n{tail}", pytrace=False)
