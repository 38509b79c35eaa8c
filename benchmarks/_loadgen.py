"""A small closed-loop HTTP/1.1 load generator on raw asyncio streams.

``concurrency`` connections each send ``GET /users/<n>`` and wait for the whole response
before the next request (keep-alive; reconnects when the server answers
``Connection: close``, as gunicorn's sync worker does). Every second request carries an
incoming ``sentry-trace`` + ``baggage``. Requests completed during the warm-up are not
counted. Prints one JSON line: requests/s, latency percentiles, errors, and this process's
CPU use (if it nears 100% of a core, the generator, not the server, is the limit).

    python benchmarks/_loadgen.py --port 8000 [--concurrency 8] [--duration 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import _apps
import _harness as h


def _requests(host: str) -> list[bytes]:
    out = []
    for k in range(1000):
        lines = [
            f"GET /users/{k} HTTP/1.1",
            f"Host: {host}",
            "User-Agent: bench-loadgen",
            "Accept: */*",
        ]
        if k % 2:
            lines += [f"{name}: {value}" for name, value in _apps.incoming_headers(True, k).items()]
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode())
    return out


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    close = False
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"connection":
            close = value.strip().lower() == b"close"
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def _worker(
    port: int,
    reqs: list[bytes],
    offset: int,
    start_at: float,
    end_at: float,
    lat: list[float],
    errors: list[int],
) -> None:
    reader = writer = None
    k = offset
    clock = time.perf_counter
    while True:
        now = clock()
        if now >= end_at:
            break
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            writer.write(reqs[k % len(reqs)])
            k += 1
            status, close = await _read_response(reader)
            done = clock()
            if done >= start_at and done < end_at:
                lat.append(done - now)
                if status != 200:
                    errors[0] += 1
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError):
            if start_at <= clock() < end_at:  # warm-up failures are not the measured run's
                errors[0] += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def load(port: int, concurrency: int, duration: float, warmup: float) -> dict[str, float]:
    reqs = _requests(f"127.0.0.1:{port}")
    lat: list[float] = []
    errors = [0]
    start_at = time.perf_counter() + warmup
    end_at = start_at + duration
    cpu0 = time.process_time()
    await asyncio.gather(
        *(_worker(port, reqs, i * 7, start_at, end_at, lat, errors) for i in range(concurrency))
    )
    cpu = time.process_time() - cpu0
    lat.sort()
    return {
        "requests": len(lat),
        "rps": len(lat) / duration,
        "p50_ms": h.percentile(lat, 50) * 1e3,
        "p99_ms": h.percentile(lat, 99) * 1e3,
        "errors": errors[0],
        "client_cpu": cpu / (duration + warmup),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(load(args.port, args.concurrency, args.duration, args.warmup))))


if __name__ == "__main__":
    main()
