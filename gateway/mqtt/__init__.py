"""Our asyncio MQTT 3.1.1 / 5.0 client: ``wire`` (pure packet codec), ``options`` and ``connection``.

It knows nothing of the spool or of payload formats: callers hand it messages (with an opaque handle where
they want to hear the outcome) and it reports deliveries and refusals back.
"""
