"""Socket Mode: acknowledgement latency and reconnection, ours against slack-sdk's `builtin`.

Against the local fake Socket Mode server of the tests (real sockets on loopback):

- acknowledgement of 50 envelopes sent while every answer takes 2 s (the work of a slow
  answer must never delay an acknowledgement);
- time from the server dropping the TCP connection (no close frame) to the new connection,
  and the CPU the process used meanwhile;
- the same after a clean close (a close frame, as Slack sends when it refreshes connections).

The baseline, measured in the same run, is slack-sdk's `builtin` client with the usual listener
pattern (acknowledge, then work in the listener: the SDK's pool of 10 threads).
Run: `.venv/bin/python bench/bench_socket_mode.py` (about a minute: the baseline needs ~30 s
to notice a dropped connection).
"""

from __future__ import annotations

import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slack_sdk import WebClient  # noqa: E402
from slack_sdk.socket_mode.response import SocketModeResponse  # noqa: E402

from bot.interactive.socket import Envelope, SocketListener  # noqa: E402
from tests.fake_slack import _Handler, _Server  # noqa: E402
from tests.fake_socket_mode import FakeSlackApp, wait_for  # noqa: E402
from tests.loopback import serving  # noqa: E402

ENVELOPES = 50
SLOW = 2.0  # seconds each answer takes


def cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


class Builtin:
    """slack-sdk's builtin client, acknowledging and then doing the work on its own thread."""

    def __init__(self, app_token: str, web: WebClient, handle: Callable[[Envelope], None]):
        from slack_sdk.socket_mode.builtin import SocketModeClient

        self.client = SocketModeClient(app_token=app_token, web_client=web, ping_interval=5)

        def listener(client: Any, req: Any) -> None:
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            handle(Envelope(req.envelope_id, req.type, req.payload))

        self.client.socket_mode_request_listeners.append(listener)

    def start(self) -> None:
        self.client.connect()

    def stop(self) -> None:
        self.client.close()


def run(name: str, make: Callable[[FakeSlackApp], Any]) -> dict[str, float]:
    fake = FakeSlackApp()
    out: dict[str, float] = {}
    with serving(_Server(_Handler, fake), poll=0.05) as server:
        fake.base_url = server.root + "/api/"
        client = make(fake)
        client.start()
        socket = fake.socket
        wait_for("the connection", lambda: socket.open_count() == 1, 30)
        ids = [socket.send("slash_commands", {"text": "help"}) for _ in range(ENVELOPES)]
        delays = [socket.ack_delay(i) for i in ids]
        out["ack p50 ms"] = statistics.median(delays) * 1000
        out["ack max ms"] = max(delays) * 1000
        time.sleep(SLOW + 0.5)  # let the slow answers finish
        for how in ("drop", "close"):
            first = socket.current
            started, used = time.monotonic(), cpu()
            getattr(socket, how)()
            wait_for("a new connection", lambda f=first: any(
                c.open and c is not f for c in socket.connections), 120)
            out[f"reconnect after {how} s"] = time.monotonic() - started
            out[f"cpu meanwhile ({how}) s"] = cpu() - used
        client.stop()
    fake.socket.stop()
    print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()), flush=True)
    return out


def main() -> int:
    def slow(_envelope: Envelope) -> None:
        time.sleep(SLOW)

    ours = run("ours (websocket-client flavour + SocketListener)",
               lambda fake: SocketListener(fake.app_token, WebClient(base_url=fake.base_url),
                                           slow, ping_interval=5))
    base = run("baseline (slack-sdk builtin)",
               lambda fake: Builtin(fake.app_token, WebClient(base_url=fake.base_url), slow))
    print("\nratio ours / baseline (lower is better):")
    for key in ours:
        ratio = ours[key] / base[key] if base[key] else float("nan")
        print(f"  {key:28} {ours[key]:9.3f} vs {base[key]:9.3f}  ratio {ratio:.3f}")
    print(f"\n(threads still alive: {threading.active_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
