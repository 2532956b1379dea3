"""The room's command table: every verb defined once, served by every front end.

``table`` holds the registry (:class:`Verb`, :class:`Caller`, validation, dispatch),
``fields`` the pydantic models of each verb's own members, ``verbs`` the handlers of the
room's verbs, ``room_lock`` the OS lock that makes one process the room's owner.
"""
