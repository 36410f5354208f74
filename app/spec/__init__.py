"""What Vonage's API reference says, checked: the shapes of callbacks and of requests.

schemas (marshmallow, strict on what we use), intake (a body read into a
model event, or a Rejection with its HTTP answer), definitions (Dispatch's
create-workflow request) and messages_request (the Messages API's failover
request). Imports only app.model.
"""
