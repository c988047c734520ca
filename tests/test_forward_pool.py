"""Upstream connection reuse: fewer handshakes, same delivery semantics."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from relay import forwarder
from tests.conftest import StartRelay, WriteConfig
from tests.support import MESSAGE, Sink, make_message


class CountingSink(Sink):
    """The test sink, also counting the connections it accepts and the QUITs it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.protocols: list[SMTP] = []
        self.quits = 0
        self.resets = 0
        # Answer 421 and hang up at the MAIL FROM after this many on one connection.
        self.closing_after: int | None = None
        self.served: dict[int, int] = {}

    async def start(self) -> CountingSink:
        loop = asyncio.get_running_loop()
        sink = self

        class Counted(SMTP):
            async def smtp_QUIT(self, arg: str) -> None:
                sink.quits += 1
                await super().smtp_QUIT(arg)

            async def smtp_RSET(self, arg: str) -> None:
                sink.resets += 1
                await super().smtp_RSET(arg)

            async def smtp_MAIL(self, arg: str) -> None:
                if sink.closing_after is not None and self in sink.protocols:
                    served = sink.served.get(id(self), 0)
                    sink.served[id(self)] = served + 1
                    if served >= sink.closing_after:
                        # As an upstream that times a session out between commands does.
                        await self.push("421 4.4.2 sink.test Error: timeout exceeded")
                        assert self.transport is not None
                        self.transport.close()
                        return
                await super().smtp_MAIL(arg)

        def factory() -> SMTP:
            protocol = Counted(self.handler, hostname="sink.test", loop=loop)
            self.protocols.append(protocol)
            return protocol

        self._server = await loop.create_server(factory, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop_connections(self) -> None:
        """Hang up on every client, as an upstream does when its idle timeout hits."""
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.close()


@pytest.fixture
async def counting_sink() -> Any:
    sink = await CountingSink().start()
    yield sink
    await sink.stop()


async def test_consecutive_messages_share_one_upstream_connection(
    counting_sink: CountingSink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    relay = await start_relay(write_config(upstream=counting_sink.upstream()))
    bodies = [make_message(body=f"message {i}") for i in range(3)]
    for body in bodies:
        assert (await relay.send(body)).code == 250
    assert [m.data for m in counting_sink.messages] == bodies
    assert len(counting_sink.protocols) == 1
    assert counting_sink.resets == 0  # a transaction the upstream took has reset it already


async def test_connection_the_upstream_dropped_is_replaced_transparently(
    counting_sink: CountingSink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    relay = await start_relay(write_config(upstream=counting_sink.upstream()))
    assert (await relay.send()).code == 250
    counting_sink.drop_connections()
    await asyncio.sleep(0.05)
    reply = await relay.send(make_message(body="after the drop"))
    assert reply.code == 250, reply
    assert len(counting_sink.messages) == 2
    assert len(counting_sink.protocols) == 2


async def test_connection_idle_too_long_is_not_reused(
    counting_sink: CountingSink,
    write_config: WriteConfig,
    start_relay: StartRelay,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forwarder, "POOL_IDLE_SECONDS", 0.0)
    relay = await start_relay(write_config(upstream=counting_sink.upstream()))
    assert (await relay.send()).code == 250
    await asyncio.sleep(0.01)
    assert (await relay.send()).code == 250
    assert len(counting_sink.protocols) == 2


async def test_connection_after_a_failed_transaction_is_not_reused(
    counting_sink: CountingSink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    relay = await start_relay(write_config(upstream=counting_sink.upstream()))
    counting_sink.handler.data_reply = "451 4.3.0 try again later"
    assert (await relay.send()).code == 451
    counting_sink.handler.data_reply = None
    assert (await relay.send()).code == 250
    assert [m.data for m in counting_sink.messages] == [MESSAGE]
    assert len(counting_sink.protocols) == 2


async def test_pooled_connections_get_quit_at_shutdown(
    counting_sink: CountingSink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    relay = await start_relay(write_config(upstream=counting_sink.upstream()))
    assert (await relay.send()).code == 250
    assert counting_sink.quits == 0
    await relay.server.stop(grace=1)
    assert counting_sink.quits == 1


async def test_concurrent_messages_each_get_their_own_connection(
    counting_sink: CountingSink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    counting_sink.handler.data_delay = 0.2
    relay = await start_relay(write_config(upstream=counting_sink.upstream()))
    bodies = [make_message(body=f"parallel {i}") for i in range(4)]
    replies = await asyncio.gather(*(relay.send(body) for body in bodies))
    assert [r.code for r in replies] == [250] * 4
    assert sorted(m.data for m in counting_sink.messages) == sorted(bodies)
    assert len(counting_sink.protocols) == 4
    # Afterwards all four wait in the pool: the next four need no new connection.
    counting_sink.handler.data_delay = 0
    await asyncio.gather(*(relay.send(body) for body in bodies))
    assert len(counting_sink.protocols) == 4


async def test_pooled_connection_closing_at_mail_from_is_replaced_transparently(
    counting_sink: CountingSink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    """The upstream gave up on the idle connection but the relay has not seen it close yet."""
    counting_sink.closing_after = 1
    relay = await start_relay(write_config(upstream=counting_sink.upstream()))
    bodies = [make_message(body=f"message {i}") for i in range(3)]
    for body in bodies:
        assert (await relay.send(body)).code == 250
    assert [m.data for m in counting_sink.messages] == bodies
    assert len(counting_sink.protocols) == 3  # each later message: 421, then a new one


async def test_fresh_connection_answering_421_at_mail_from_is_not_retried(
    counting_sink: CountingSink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    counting_sink.closing_after = 0
    relay = await start_relay(write_config(upstream=counting_sink.upstream()))
    reply = await relay.send()
    assert (reply.code, reply.text.startswith("4.3.0 upstream deferred: 421")) == (451, True)
    assert counting_sink.messages == []
    assert len(counting_sink.protocols) == 1
    [line] = await relay.messages()
    assert line["upstream_reply"] == "421 4.4.2 sink.test Error: timeout exceeded"


async def test_size_announced_at_mail_from_is_each_messages_own(
    counting_sink: CountingSink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    """SIZE= comes from the message DATA then sends, computed once, for each message anew."""
    relay = await start_relay(write_config(upstream=counting_sink.upstream()))
    bodies = [make_message(body="short"), make_message(body="longer\r\n" * 500)]
    for body in bodies:
        assert (await relay.send(body)).code == 250
    assert [m.data for m in counting_sink.messages] == bodies
    assert [m.mail_options for m in counting_sink.messages] == [
        [f"SIZE={len(body)}"] for body in bodies
    ]
    assert len(counting_sink.protocols) == 1
