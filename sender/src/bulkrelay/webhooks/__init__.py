"""Webhooks: the delivery-events outbox POSTed, signed, to the application's URLs.

``settings`` (webhooks.toml), ``signing`` (the signature header), ``delivery`` (the loop),
``status`` (what is left to deliver) and ``cli`` (`bulkrelay webhooks`).
"""
