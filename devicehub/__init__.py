"""devicehub: drives a scalp-treatment room's devices and runs treatment sessions on them."""

__version__ = "0.1.0"
