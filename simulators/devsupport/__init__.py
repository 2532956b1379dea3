"""Development support shared by the tests and the benchmarks (never by the hub).

- ``processes``: child processes that announce themselves on a line (``devicehub serve``,
  ``devicehub collect``, ``python -m simulators room``) and stopping them.
- ``clinic``: clinic software over MQTT (a follower that sends requests), the technician
  at the chair on the console socket, the simulators' control ports, a session run up
  to the chair's confirmation.
- ``waiting``: polling a condition with a deadline (for what has no event to await).
- ``proxy``: a TCP link that can be cut (and a server that stops answering).
- ``postgres``: a private PostgreSQL server.

The benchmarks import these, not the tests' own modules; the tests import them too.
"""
