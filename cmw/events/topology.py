"""Every exchange and queue of the message bus, declared in this one module.

Events go to one durable topic exchange keyed by topic (``order.placed``). Each consumer
owns a durable queue bound to the topics it handles. A message that keeps failing is
parked in the dead-letter queue with the reason, for an operator to look at.
"""

from __future__ import annotations

from collections.abc import Iterable

from kombu import Exchange, Queue, binding

EVENTS = Exchange("mercato.events", type="topic", durable=True)
DEAD_LETTER_QUEUE = Queue("mercato.dead", exchange=Exchange(""), routing_key="mercato.dead", durable=True)


def consumer_queue(name: str, topics: Iterable[str]) -> Queue:
    """A durable queue named ``name`` bound to ``topics`` (patterns such as ``order.*``)."""
    return Queue(
        name,
        bindings=[binding(EVENTS, routing_key=topic) for topic in topics],
        durable=True,
    )
