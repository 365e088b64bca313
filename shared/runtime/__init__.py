"""What every service process runs on: settings, logs, metrics, tasks, limits, sockets, lifecycle."""
