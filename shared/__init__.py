"""The common package of the Ikiro realtime backend, grouped by role.

- `shared.protocol`: the wire (error and close codes, subjects, frames, internal API models).
- `shared.broker`: NATS plumbing (connect, request/reply, streams and buckets, KV compare-and-set).
- `shared.runtime`: what every service process runs on (settings, logs, metrics, task owner,
  rate limits, the socket writer, health and graceful stop).
- `shared.auth`, `shared.supabase`, `shared.client`: the public pieces other code imports.
"""
