"""What one model call costs the caller's CPU, by concurrency and by how many SDK clients (and so
connection pools) share the calls — no engine at all, just the openai SDK against the stub.

Why: the floor of every engine here is the SDK. Its client keeps at most 100 idle connections, so
a burst of N > 100 concurrent calls opens N − 100 new ones every time (the stub accepts them one
by one; a real provider adds a TLS handshake each); and httpcore (under httpx2) checks every
pooled connection whenever it assigns a request, so one big pool costs O(N) per call.

    .venv/bin/python -m bench.sdk_floor [--n 500] [--latency-ms 200] [--clients 1,4,16]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time

import openai

from bench.stubs import StubProcess


async def burst(clients: list[openai.AsyncOpenAI], n: int, latency_ms: float) -> tuple[float, float]:
    """n concurrent calls spread round robin over `clients`: (wall s, CPU ms per call)."""
    turn = itertools.cycle(clients)
    body = {"stub": {"latency_ms": latency_ms, "content": "ok"}}

    async def call(client: openai.AsyncOpenAI) -> None:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                             extra_body=body)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(call(next(turn)) for _ in range(n)))
    return time.perf_counter() - wall, (time.process_time() - cpu) / n * 1000


async def main_async(args: argparse.Namespace, base_url: str) -> list[dict[str, float]]:
    rows = []
    for count in args.clients:
        clients = [openai.AsyncOpenAI(api_key="k", base_url=base_url, max_retries=0, http_client=_http(args.keepalive))
                   for _ in range(count)]
        await burst(clients, args.n, args.latency_ms)  # warm the pools
        runs = [await burst(clients, args.n, args.latency_ms) for _ in range(args.repeats)]
        wall, cpu = sorted(runs)[len(runs) // 2]
        rows.append({"clients": count, "keepalive": args.keepalive, "n": args.n, "wall_s": wall, "cpu_ms_per_call": cpu})
        print(f"{count:3d} client(s) keeping {args.keepalive or 100} connections alive, {args.n} concurrent calls at {args.latency_ms:g} ms: "
              f"wall {wall:.3f} s, {cpu:.2f} ms CPU per call", flush=True)
        for client in clients:
            await client.close()
    return rows


def _http(keepalive: int | None) -> openai.DefaultAsyncHttpxClient | None:
    """The SDK's own client, keeping `keepalive` idle connections instead of its default 100."""
    if keepalive is None:
        return None
    import httpx2

    return openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=keepalive))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keepalive", type=int, help="idle connections each client keeps (SDK default: 100)")
    args = parser.parse_args()
    stub = StubProcess("openai")
    try:
        rows = asyncio.run(main_async(args, stub.base_url))
    finally:
        stub.stop()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
