"""Chaos under load on a real 3-node NATS JetStream cluster (`make soak`, `python -m soak`).

It proves, from outside the product, that no accepted command is lost or executed twice and that
MiniApp replicas agree, while processes and broker nodes are killed, paused and restarted.
"""
