"""Events: the transactional outbox, its relay to the message bus, and idempotent consumers."""
