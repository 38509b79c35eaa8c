"""Under a real server: Flask on gunicorn (sync worker) and FastAPI on uvicorn, 1 worker each.

For each server and configuration (``bare``, ``ours-1.0``, ``sdk-1.0``; see ``_apps.py``) a
fresh server process is started; a bounded closed-loop load then comes from a separate
process: ``_loadgen.py`` (asyncio streams, keep-alive where the server allows it, fixed
concurrency, warm-up then a fixed duration), and ``wrk`` too when it is installed (same
concurrency, a Lua script alternating plain requests and requests with incoming
``sentry-trace`` + ``baggage``). Reported: requests/s and p50/p99 latency. Our transport
POSTs every sampled transaction to the discarding sink (a third process).

    python benchmarks/bench_server.py [--quick] [--rounds N] [--no-wrk]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import _apps
import _harness as h

SERVERS = {"flask/gunicorn": "flask", "fastapi/uvicorn": "fastapi"}
CONFIGS = ("bare", "ours-1.0", "sdk-1.0")
CONCURRENCY = 8

WRK_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  local path = "/users/" .. (n % 1000)
  if n % 2 == 0 then
    return wrk.format("GET", path)
  end
  return wrk.format("GET", path, {["sentry-trace"] = "@TRACE@", ["baggage"] = "@BAGGAGE@"})
end
"""


def _server_cmd(server: str, port: int) -> list[str]:
    if server == "flask/gunicorn":
        return [
            h.PY,
            "-m",
            "gunicorn",
            "-w",
            "1",
            "-k",
            "sync",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "_apps:served_app()",
        ]
    return [
        h.PY,
        "-m",
        "uvicorn",
        "--factory",
        "_apps:served_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def _start(server: str, config: str, dsn: str) -> tuple[subprocess.Popen[bytes], int]:
    port = h.free_port()
    env = h.child_env(
        {"BENCH_FRAMEWORK": SERVERS[server], "BENCH_CONFIG": config, "BENCH_DSN": dsn}
    )
    proc = subprocess.Popen(
        _server_cmd(server, port),
        cwd=h.HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        h.wait_for_port(port, 30, proc)
    except RuntimeError:
        _stop(proc)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"{server} {config} did not start:\n{err[-3000:]}")
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # gunicorn master + worker: the group we started
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if proc.stderr is not None:
        proc.stderr.close()


def _loadgen(port: int, duration: float, warmup: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            h.PY,
            os.path.join(h.HERE, "_loadgen.py"),
            "--port",
            str(port),
            "--concurrency",
            str(CONCURRENCY),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
        ],
        capture_output=True,
        text=True,
        env=h.child_env(),
        timeout=duration + warmup + 60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(port: int, script: str, duration: float, warmup: float) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/"
    base = ["wrk", "-t1", f"-c{CONCURRENCY}", "-s", script, "--latency"]
    subprocess.run(
        [*base, f"-d{max(1, round(warmup))}s", url], capture_output=True, timeout=warmup + 60
    )
    out = subprocess.run(
        [*base, f"-d{round(duration)}s", url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(value) * _UNITS[unit]
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": lat.get("50", float("nan")),
        "p99_ms": lat.get("99", float("nan")),
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
    }


def run(quick: bool, rounds: int | None = None, use_wrk: bool = True) -> h.Section:
    rounds = rounds or (1 if quick else 2)
    duration, warmup = (2.0, 0.5) if quick else (10.0, 2.0)
    wrk = shutil.which("wrk") if use_wrk and not quick else None
    load_start = h.loadavg()
    t0 = time.monotonic()
    incoming = _apps.incoming_headers(True, 1)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            WRK_SCRIPT.replace("@TRACE@", incoming["sentry-trace"]).replace(
                "@BAGGAGE@", incoming["baggage"]
            )
        )
        script = f.name
    keys = [(s, c) for s in SERVERS for c in CONFIGS]

    def one(key: tuple[str, str]) -> dict[str, Any]:
        proc, port = _start(key[0], key[1], sink.dsn)
        try:
            res: dict[str, Any] = {"loadgen": _loadgen(port, duration, warmup)}
            if wrk:
                res["wrk"] = _wrk(port, script, duration, warmup)
            return res
        finally:
            _stop(proc)

    try:
        with h.Sink() as sink:
            results = h.interleaved(keys, rounds, one, progress=lambda m: h.log(f"server {m}"))
    finally:
        os.unlink(script)
    elapsed = time.monotonic() - t0
    tools = ["loadgen"] + (["wrk"] if wrk else [])
    rows = []
    targets: list[tuple[str, str, bool | None]] = []
    for server in SERVERS:
        for tool in tools:
            st = {
                c: {
                    m: h.Stat.of(r[tool][m] for r in results[(server, c)])
                    for m in ("rps", "p50_ms", "p99_ms")
                }
                for c in CONFIGS
            }
            bare = st["bare"]["rps"].median
            for c in CONFIGS:
                rps = st[c]["rps"].median
                errors = sum(r[tool]["errors"] for r in results[(server, c)])
                cpu = (
                    f"{max(r['loadgen']['client_cpu'] for r in results[(server, c)]) * 100:.0f}%"
                    if tool == "loadgen"
                    else ""
                )
                rows.append(
                    [
                        server,
                        tool,
                        f"`{c}`",
                        st[c]["rps"].fmt(0),
                        "" if c == "bare" else f"{(rps / bare - 1) * 100:+.1f}%",
                        st[c]["p50_ms"].fmt(2),
                        st[c]["p99_ms"].fmt(2),
                        errors,
                        cpu,
                    ]
                )
            ours = st["ours-1.0"]["rps"].median
            targets.append(
                (
                    f"{server} ({tool}): requests/s with ours sampled within 10% of bare",
                    f"{ours:,.0f} vs {bare:,.0f} rps ({(ours / bare - 1) * 100:+.1f}%)",
                    ours >= 0.9 * bare,
                )
            )
    note = (
        ""
        if wrk
        else (
            "\n\n`wrk` was not used ("
            + (
                "quick mode"
                if quick and use_wrk and shutil.which("wrk")
                else "not installed or disabled"
            )
            + "; Debian/Ubuntu: `apt-get install wrk`)."
        )
    )
    body = (
        f"{rounds} round(s) interleaved; each server × configuration started fresh (1 worker), "
        f"{CONCURRENCY} concurrent connections, {warmup:g} s warm-up then {duration:g} s measured; half "
        "the requests carry an incoming sampled `sentry-trace` + `baggage`. gunicorn's sync worker "
        "closes the connection after every response (no keep-alive); uvicorn keeps it alive. "
        "Figures: median (min–max) over rounds; *gen CPU*: the Python load generator's own CPU "
        "(near 100% would mean it, not the server, is the bottleneck). On a 2-core machine the "
        "server, the load generator and the sink share the cores.\n\n"
        + h.md_table(
            [
                "server",
                "load",
                "config",
                "requests/s",
                "vs bare",
                "p50 ms",
                "p99 ms",
                "errors",
                "gen CPU",
            ],
            rows,
        )
        + note
    )
    return h.Section("Under a real server", body, targets, elapsed, load_start, h.loadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--no-wrk", action="store_true")
    args = parser.parse_args()
    section = run(args.quick, args.rounds, not args.no_wrk)
    print(f"## {section.title}\n\n{section.body}\n")
    for target, measured, met in section.targets:
        print(f"- {h.verdict_text(met)}: {target}: {measured}")


if __name__ == "__main__":
    sys.exit(main())
