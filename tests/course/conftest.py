from tests.hub.conftest import setup  # noqa: F401 - the hub process and its simulated room
