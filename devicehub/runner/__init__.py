"""The session runner: one session of one program on the room's devices.

- ``session.SessionRunner``: the state machine of shared/mqtt-api.md, pause/resume/abort,
  supervision of every device and the safe state on any fault.
- ``injection``, ``electroporation``, ``exposure``: one module per kind of step.
- ``totals``: what was delivered, and the runtime caps the runner never passes.
"""

from devicehub.runner.session import SessionRunner  # noqa: F401
