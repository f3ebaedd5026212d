"""aio-pika (asyncio, on aiormq) against Ferry's AMQP listener: pipelined
publisher confirms, competing consumers, RPC over direct reply-to, and
pika's asyncio adapter for a work queue."""

from __future__ import annotations

import asyncio

import aio_pika
import pika
from pamqp.commands import Basic
from pika.adapters.asyncio_connection import AsyncioConnection


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_pipelined_confirms_with_multiple_acks(ferry):
    async def main():
        # Not connect_robust: its channels cache declare-ok results.
        conn = await aio_pika.connect(ferry.amqp_url)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue("aio-confirms", durable=True)
            n = 500
            # All in flight at once: Ferry confirms them as their fsyncs
            # complete, batching with `multiple`.
            confirms = await asyncio.gather(
                *(
                    ch.default_exchange.publish(
                        aio_pika.Message(f"m{i}".encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key="aio-confirms",
                    )
                    for i in range(n)
                )
            )
            assert len(confirms) == n
            assert all(isinstance(c, Basic.Ack) for c in confirms), {type(c) for c in confirms}
            declared = await ch.declare_queue("aio-confirms", passive=True)
            assert declared.declaration_result.message_count == n
            got = []
            async with q.iterator() as it:
                async for msg in it:
                    async with msg.process():
                        got.append(msg.body)
                    if len(got) == n:
                        break
            assert got == [f"m{i}".encode() for i in range(n)]

    run(main())


def test_competing_consumers_and_rpc(ferry):
    async def main():
        server = await aio_pika.connect_robust(ferry.amqp_url)
        client = await aio_pika.connect_robust(ferry.amqp_url)
        async with server, client:
            sch = await server.channel()
            await sch.set_qos(prefetch_count=5)
            q = await sch.declare_queue("aio-rpc")
            handled = {0: 0, 1: 0, 2: 0}

            def make_handler(k):
                async def on_request(msg: aio_pika.abc.AbstractIncomingMessage):
                    async with msg.process():
                        handled[k] += 1
                        await sch.default_exchange.publish(
                            aio_pika.Message(
                                str(int(msg.body) * 2).encode(),
                                correlation_id=msg.correlation_id,
                            ),
                            routing_key=msg.reply_to,
                        )

                return on_request

            for k in range(3):
                await q.consume(make_handler(k))

            cch = await client.channel()
            futures: dict[str, asyncio.Future] = {}
            reply_q = await cch.get_queue("amq.rabbitmq.reply-to", ensure=False)

            async def on_reply(msg: aio_pika.abc.AbstractIncomingMessage):
                futures.pop(msg.correlation_id).set_result(msg.body)

            await reply_q.consume(on_reply, no_ack=True)
            loop = asyncio.get_running_loop()
            for i in range(60):
                futures[f"r{i}"] = loop.create_future()
            waits = {k: f for k, f in futures.items()}
            for i in range(60):
                await cch.default_exchange.publish(
                    aio_pika.Message(str(i).encode(), correlation_id=f"r{i}", reply_to="amq.rabbitmq.reply-to"),
                    routing_key="aio-rpc",
                )
            results = {k: await asyncio.wait_for(f, 20) for k, f in waits.items()}
            assert results == {f"r{i}": str(i * 2).encode() for i in range(60)}
            assert sum(handled.values()) == 60
            assert all(v > 0 for v in handled.values()), handled

    run(main())


def test_pika_asyncio_adapter_work_queue(ferry):
    """pika's asyncio adapter: publish 50, consume and ack all of them."""

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        received: list[bytes] = []
        params = pika.URLParameters(ferry.amqp_url)

        def on_open(conn):
            conn.channel(on_open_callback=on_channel)

        def on_channel(ch):
            def declared(_frame):
                for i in range(50):
                    ch.basic_publish("", "async-work", f"w{i}".encode())
                ch.basic_qos(prefetch_count=10, callback=lambda _f: ch.basic_consume("async-work", on_message))

            def on_message(c, method, props, body):
                received.append(body)
                c.basic_ack(method.delivery_tag)
                if len(received) == 50 and not done.done():
                    done.set_result(True)

            ch.queue_declare("async-work", callback=declared)

        def on_error(conn, err):
            if not done.done():
                done.set_exception(RuntimeError(f"connection failed: {err}"))

        conn = AsyncioConnection(params, on_open_callback=on_open, on_open_error_callback=on_error, custom_ioloop=loop)
        try:
            await asyncio.wait_for(done, 30)
        finally:
            conn.close()
        assert received == [f"w{i}".encode() for i in range(50)]

    run(main())
