"""`make bench`: the edge command path against a bare aiohttp + NATS baseline, in the same run."""
