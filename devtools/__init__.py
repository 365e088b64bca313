"""Developer tools: the `ikiro` CLI, the local stack, a simulated agent, the embedded nats-server.

Not part of the production image.
"""
