"""The technician's console (``devicehub console``): a Textual app over the room's daemon.

``link`` talks to the daemon's console socket, ``state`` folds what it says, ``render``
draws it with rich, ``app`` and ``screens`` are the Textual side (one screen per stage of
a session: room, new session, preflight, running, ended). See docs/console.md.
"""
