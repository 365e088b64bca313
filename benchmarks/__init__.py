"""The benchmark suite: the product's services against bare aiohttp + nats-py baselines, in the same run.

Scenarios (`scenarios/`): the edge command path, MiniApp fan-out, idle-socket capacity and a
reconnect storm. The orchestrator (`suite`, `stack`, `procs`) starts every process, samples CPU
and memory from `/proc` and prints `report` tables; the load comes from separate generator
processes (`edge_agents`, `edge_submitter`, `miniapp_clients`) driven over stdin/stdout
(`control`); the baselines are `bare_edge_relay` and `bare_fanout`.
"""
