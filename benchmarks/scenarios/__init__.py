"""The four scenarios; each `run(bench)` returns its `ScenarioResult`."""
