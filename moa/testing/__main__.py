"""``python -m moa.testing``: serve the loopback server until killed (prints ``PORT <n>``)."""

from __future__ import annotations

import argparse
import threading

from moa.testing.server import LoopbackServer


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible loopback server for tests and benchmarks")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 picks a free one)")
    args = parser.parse_args()
    server = LoopbackServer(latency_s=args.latency, port=args.port).start()
    print(f"PORT {server.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


main()
