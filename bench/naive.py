"""The naive pass-through the benchmark compares against: aiosmtpd in, aiosmtplib out.

This is what a developer writes in an afternoon: every message opens a new upstream
connection, sends the bytes unchanged, and replies with what the upstream said; no scanning,
no pooling, no audit log. Run it as `python -m bench.naive --listen 127.0.0.1:PORT
--upstream 127.0.0.1:PORT`; it prints "ready" once it listens and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session


class PassThrough:
    """aiosmtpd handler: forward each message upstream over a new connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or envelope.content
        try:
            await aiosmtplib.send(
                content,
                sender=envelope.mail_from,
                recipients=envelope.rcpt_tos,
                hostname=self.host,
                port=self.port,
                use_tls=False,
                start_tls=False,
                timeout=60,
            )
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError) as exc:
            return f"451 4.4.1 upstream failed: {type(exc).__name__}"
        return "250 2.0.0 forwarded"


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    handler = PassThrough(*upstream)
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            data_size_limit=64 * 1024 * 1024,
            enable_SMTPUTF8=True,
            hostname="naive.bench.test",
        ),
        *listen,
        backlog=1024,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    parser.add_argument("--upstream", required=True, help="127.0.0.1:PORT")
    args = parser.parse_args()
    asyncio.run(serve(_hostport(args.listen), _hostport(args.upstream)))


if __name__ == "__main__":
    main()
