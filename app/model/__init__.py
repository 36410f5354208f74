"""The pure core: the state of messages and workflows, the failover rules, event times.

state (the joins that merge each callback into what is known), failover (how
a workflow is decided from its steps), times (instants across years 1 to
9999). No Flask, no SQL, no clock: imports nothing else of the service
(pyproject.toml's import contracts, tests/test_layout.py).
"""
