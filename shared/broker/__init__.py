"""NATS plumbing: connections, request/reply, JetStream streams and buckets, KV compare-and-set."""
