"""The session's states and the only transitions between them, as one table.

The published states are those of shared/mqtt-api.md ("Session states"):
``created -> preflight -> awaiting_confirmation -> running -> completed | aborted |
failed``, ``running -> paused -> running`` and ``paused -> awaiting_confirmation ->
running``. One more state is internal: ``stopping``, entered the moment a pause, an
abort, a failure or the program's end begins (outputs going off, deliveries being
settled) and left for ``paused`` or a final state. The contract has no ``stopping``, so
it is never published or recorded: while stopping, the session shows the state it was
stopping from (:attr:`StateMachine.published`).

An illegal transition is a bug of the runner: :class:`IllegalTransition` is raised
(tests show it), never silently accepted.
"""

from __future__ import annotations

import enum


class SessionState(str, enum.Enum):
    NEW = "new"  # the runner exists; its record is being created
    CREATED = "created"
    PREFLIGHT = "preflight"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"  # internal: never published
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


S = SessionState

FINAL = frozenset({S.COMPLETED, S.ABORTED, S.FAILED})
#: states a client may see (shared/mqtt-api.md)
PUBLISHED = frozenset(S) - {S.NEW, S.STOPPING}

#: state -> the states it may go to
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    S.NEW: frozenset({S.CREATED}),
    S.CREATED: frozenset({S.PREFLIGHT, S.AWAITING_CONFIRMATION, S.RUNNING, S.STOPPING}),
    S.PREFLIGHT: frozenset({S.AWAITING_CONFIRMATION, S.RUNNING, S.STOPPING}),
    S.AWAITING_CONFIRMATION: frozenset({S.RUNNING, S.STOPPING}),
    S.RUNNING: frozenset({S.STOPPING}),
    S.PAUSED: frozenset({S.RUNNING, S.AWAITING_CONFIRMATION, S.STOPPING}),
    S.STOPPING: frozenset({S.PAUSED, *FINAL}),
    S.COMPLETED: frozenset(),
    S.ABORTED: frozenset(),
    S.FAILED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """The runner tried a transition the table does not allow (a bug)."""

    def __init__(self, current: SessionState, new: SessionState) -> None:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none"
        super().__init__(f"illegal session transition {current.value} -> {new.value} (allowed: {allowed})")
        self.current = current
        self.new = new


class StateMachine:
    """The current state, moved only along :data:`TRANSITIONS`."""

    def __init__(self) -> None:
        self.state = S.NEW
        #: the last published state (what clients see while stopping)
        self.published: SessionState | None = None

    def can(self, new: SessionState | str) -> bool:
        return SessionState(new) in TRANSITIONS[self.state]

    def go(self, new: SessionState | str) -> SessionState:
        """Move to ``new``; returns the state left. Raises :class:`IllegalTransition`."""
        new = SessionState(new)
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.state, new)
        previous, self.state = self.state, new
        if new in PUBLISHED:
            self.published = new
        return previous

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def stopping(self) -> bool:
        return self.state is S.STOPPING
