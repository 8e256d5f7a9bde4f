"""Event records with a PLC handshake (tag map ``events:``, README "Traceability: event records").

Per device with events, one task (``runner.EventRunner``) watches each event's trigger tag every
``interval_ms``; when it fires, it reads the record (``core``: pure trigger rules, record and payload building,
ack value checks), hands it to store-and-forward, and only once the broker has acknowledged it (PUBACK) writes
the ack tag, through its own connection to the PLC (``modbus_link``, ``opcua_link``).
"""
