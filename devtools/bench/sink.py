"""A minimal, fast HTTP callback receiver for benchmarks (asyncio, keep-alive, 200 to all, after
--delay-ms if given: a receiver that takes its time).

Records (task id, attempt, arrival time) per request; on SIGTERM/SIGINT writes them as JSON
lines to --out and exits. Runs in its own process so its CPU is not the engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Recorder:
    def __init__(self) -> None:
        self.arrivals: list[tuple[int, int, float]] = []


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, recorder: Recorder, delay: float = 0.0
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            arrived = time.time()
            length = int(_header(head, b"content-length") or 0)
            if length:
                await reader.readexactly(length)
            task_id = int(_header(head, b"x-at-task-id") or 0)
            attempt = int(_header(head, b"x-at-attempt") or 0)
            recorder.arrivals.append((task_id, attempt, arrived))
            if delay:
                await asyncio.sleep(delay)
            writer.write(_RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass  # the client went away, or the sink is stopping
    finally:
        writer.close()


async def main_async(port: int, out: str, ready_file: str | None, delay: float = 0.0) -> None:
    recorder = Recorder()
    server = await asyncio.start_server(
        lambda r, w: serve_connection(r, w, recorder, delay), "127.0.0.1", port, backlog=1024
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready_file:
        with open(ready_file, "w") as handle:
            handle.write(str(server.sockets[0].getsockname()[1]))
    await stop.wait()
    server.close()
    with open(out, "w") as handle:
        for task_id, attempt, arrived in recorder.arrivals:
            handle.write(json.dumps([task_id, attempt, arrived]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ready-file")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(main_async(args.port, args.out, args.ready_file, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
