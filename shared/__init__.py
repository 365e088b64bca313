"""Common package of the Ikiro realtime backend: wire models, subjects, auth, config, metrics."""
