"""The site side: every session, alarm and adverse event of every room in PostgreSQL.

``config`` (configs/site.yaml), ``schema`` (versioned SQL migrations under
``migrations/``, applied at start), ``rows`` (an envelope -> the rows it writes),
``writer`` (batches into PostgreSQL with psycopg 3), ``mqtt_link`` (MQTT 5 with manual
acknowledgement, paho-mqtt 2.x), ``gaps`` (missing ``seq`` / event indices filled with the
``events`` verb), ``collector`` (``devicehub collect``), ``readers`` (``devicehub site``).
See docs/site.md.
"""
