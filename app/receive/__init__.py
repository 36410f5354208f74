"""The webhook URLs: the views, the fast way in (webhooks_fast: one copy of the rules,
with a tripwire test), the authenticity check (auth) and refused deliveries kept and
replayed (rejects).

May import app.read and what is below it (app.pipeline, app.store, app.spec,
app.model) and the shared modules at app's top; never app.send.
"""
