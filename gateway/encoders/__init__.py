"""Output encodings: an ``Encoder`` turns encoder-neutral samples and link changes into MQTT messages.

``base`` holds the protocols and ``Message``; ``uns_json`` is the UNS JSON encoding (README "Topics and
payloads").
"""
