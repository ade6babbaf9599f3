"""One OpenRouter request's CPU, client and fake server together (both in this process): sent
the way `OpenRouterClient` sends it now (an `httpx.Request` handed to the transport) against
the baseline, an `httpx.Client` around the same transport (cookies, redirects, URL merging),
alternated, on one kept-alive connection to the local fake.

    .venv/bin/python bench/bench_http.py [--requests N] [--rounds N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medians import print_medians  # noqa: E402

from bot.deadline import deadline_transport  # noqa: E402
from bot.openrouter import OpenRouterClient  # noqa: E402
from tests.fake_openrouter import MANAGEMENT_KEY, FakeOpenRouter, running  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with running(FakeOpenRouter()) as fake:
        ours = OpenRouterClient(MANAGEMENT_KEY, fake.base_url)
        baseline = httpx.Client(base_url=fake.base_url, headers=dict(ours._headers),
                                transport=deadline_transport(httpx.Limits(max_connections=4)),
                                timeout=30.0)

        def through_a_client() -> bytes:
            return baseline.request("GET", "/credits").content

        def to_the_transport() -> bytes | bytearray:
            return ours._attempt("GET", "/credits", None, None, True)

        ways = {"baseline: httpx.Client": through_a_client,
                "the transport (now)": to_the_transport}
        assert through_a_client() == to_the_transport()  # the same answer, connections open
        per_request: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, send in ways.items():
                began = time.process_time()
                for _ in range(args.requests):
                    send()
                per_request[name].append((time.process_time() - began) / args.requests)
        baseline.close()
        ours.close()
    print_medians(f"GET /credits, median of {args.rounds} rounds of {args.requests} requests, "
                  "CPU per request (client and fake server):", per_request, 3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
