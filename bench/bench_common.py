"""What every benchmark of `make bench` shares: where the services are, /proc readings, Toxiproxy.

The services are the ones `scripts/services.sh` started, found through the same variables
(`WIDELOG_SERVICES_*_PORT`, `WIDELOG_SERVICES_STATE`), so `make bench` can run against a set of
its own on other ports while other people's tests use the default one.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from widelog.stats import percentile

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Services:
    redis_port: int
    kafka_port: int
    mongo_port: int
    state: Path
    cache: Path

    @classmethod
    def from_env(cls) -> Services:
        env = os.environ
        return cls(
            redis_port=int(env.get("WIDELOG_SERVICES_REDIS_PORT", "6379")),
            kafka_port=int(env.get("WIDELOG_SERVICES_KAFKA_PORT", "9092")),
            mongo_port=int(env.get("WIDELOG_SERVICES_MONGO_PORT", "27017")),
            state=Path(env.get("WIDELOG_SERVICES_STATE", "/tmp/widelog-services")),
            cache=Path(
                env.get("WIDELOG_SERVICES_CACHE", str(Path.home() / ".cache/widelog-services"))
            ),
        )

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def mongo_url(self, db: str, *, port: int | None = None) -> str:
        return f"mongodb://127.0.0.1:{port or self.mongo_port}/{db}"

    def pid(self, name: str) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.state / name / f"{name}.pid").read_text().strip())
        return None


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed).

    In this process, Python threads get their `threading` name (the kernel calls them all
    `python`); librdkafka's own threads keep theirs (`rdk:broker1`, `rdk:main`).
    """
    import threading  # noqa: PLC0415

    python_names = (
        {t.native_id: t.name for t in threading.enumerate()} if pid == os.getpid() else {}
    )
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = python_names.get(int(task.name)) or (task / "comm").read_text().strip()
            if name.startswith("asyncio_"):
                name = "asyncio executor"
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def threads_wakeups(pid: int) -> dict[str, int]:
    """Voluntary context switches per thread name: how often each thread blocked and woke up.

    A kernel count, so machine load hardly changes it (unlike CPU seconds): the number of
    wake-ups per event is the steady-rate cost that does not amortise.
    """
    import threading  # noqa: PLC0415

    python_names = (
        {t.native_id: t.name for t in threading.enumerate()} if pid == os.getpid() else {}
    )
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = python_names.get(int(task.name)) or (task / "comm").read_text().strip()
            if name.startswith("asyncio_"):
                name = "asyncio executor"
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    out[name] = out.get(name, 0) + int(line.split()[1])
    return out


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the largest resident set the process had so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def summary(values: list[float], digits: int = 2) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), digits),
        "p99": round(percentile(values, 99), digits),
        "n": len(values),
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median of repetitions and their range, relative to the median."""
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread_pct": round(100 * (max(values) - min(values)) / median, 1) if median else 0.0,
    }


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing answers on 127.0.0.1:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM the process we started (by its pid), then SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def tool(name: str) -> str:
    """The path of a tool `bench/tools.sh` built into the services cache."""
    return subprocess.run(
        [str(BENCH / "tools.sh"), "path", name], check=True, capture_output=True, text=True
    ).stdout.strip()


class Toxiproxy:
    """A Toxiproxy server of our own on loopback; one proxy with a latency toxic to change."""

    def __init__(self, *, api_port: int) -> None:
        self.api = f"http://127.0.0.1:{api_port}"
        self._proc = subprocess.Popen(
            [tool("toxiproxy"), "-host", "127.0.0.1", "-port", str(api_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(api_port)
        self._call("POST", "/reset")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.api + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None

    def proxy(self, name: str, *, listen: int, upstream: int) -> None:
        with contextlib.suppress(Exception):
            self._call("DELETE", f"/proxies/{name}")
        self._call(
            "POST",
            "/proxies",
            {
                "name": name,
                "listen": f"127.0.0.1:{listen}",
                "upstream": f"127.0.0.1:{upstream}",
                "enabled": True,
            },
        )

    def latency(self, name: str, ms: int) -> None:
        """Hold each answer from upstream `ms` (a `latency` toxic, downstream); 0 removes it."""
        with contextlib.suppress(Exception):
            self._call("DELETE", f"/proxies/{name}/toxics/bench_latency")
        if ms:
            self._call(
                "POST",
                f"/proxies/{name}/toxics",
                {
                    "name": "bench_latency",
                    "type": "latency",
                    "stream": "downstream",
                    "attributes": {"latency": ms, "jitter": 0},
                },
            )

    def close(self) -> None:
        stop_process(self._proc)


def machine(services: Services) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.machine(),
        ),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg_at_start": os.getloadavg(),
    }
    klib = sorted(services.cache.glob("kafka-*"))
    info["kafka"] = klib[-1].name.split("-")[1] if klib else "?"
    try:
        import redis  # noqa: PLC0415

        info["redis"] = redis.Redis(port=services.redis_port).info("server")["redis_version"]
    except Exception as exc:  # noqa: BLE001 - a missing version is reported, not fatal
        info["redis"] = f"? ({exc!r})"
    try:
        from pymongo import MongoClient  # noqa: PLC0415

        client: MongoClient[dict[str, Any]] = MongoClient(services.mongo_url("admin"))
        build = client.admin.command("buildInfo")
        ferret = sorted(services.cache.glob("ferretdb-*"))  # embedded: it reports "unknown"
        info["ferretdb"] = ferret[-1].name.split("-")[1] if ferret else build.get("version")
        info["mongo_wire_version"] = build.get("version")
        client.close()
    except Exception as exc:  # noqa: BLE001
        info["ferretdb"] = f"? ({exc!r})"
    for package in ("confluent_kafka", "pymongo", "redis", "uvicorn", "fastapi", "msgspec"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version  # noqa: PLC0415

            info[f"py:{package}"] = version(package.replace("_", "-"))
    with contextlib.suppress(Exception):
        import confluent_kafka  # noqa: PLC0415

        info["librdkafka"] = confluent_kafka.libversion()[0]
    return info


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
