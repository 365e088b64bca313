"""What every suite uses to run and talk to the services from outside: processes, sockets, NATS.

Nothing here imports the product (`shared`, `services`); from `devtools` only the broker launcher.
"""
