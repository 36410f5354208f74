"""The path of a callback after its checks: capture (one durable insert, commits shared),
apply (claim a batch, fold it with the model's joins, write back), decide (each touched
workflow, and its final report reconciled), and the applier processes that run it;
rebuild replays the whole raw log through the same fold.

Imports app.store, app.spec and app.model; nothing of the web or the commands.
"""
