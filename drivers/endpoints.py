"""Device endpoints are URLs; this module parses them into one typed value.

Formats:
- ``socket://HOST:PORT``                       a serial byte stream over TCP (simulators, serial servers)
- ``serial:///dev/ttyUSB0?baud=115200``        a real or pseudo terminal
- ``/dev/pts/7``                               a bare path means ``serial://`` with default settings
- ``modbus-tcp://HOST:PORT?unit=1``            Modbus TCP
- ``modbus-rtu:///dev/ttyUSB1?baud=19200&parity=E&unit=2``   Modbus RTU on a serial line
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

SCHEMES = ("socket", "serial", "modbus-tcp", "modbus-rtu")


class EndpointError(ValueError):
    pass


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""
    baud: int = 115200
    parity: str = "N"
    stopbits: int = 1
    unit: int = 1
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        if not isinstance(url, str) or not url:
            raise EndpointError("endpoint: expected a URL string")
        if url.startswith("/"):
            url = "serial://" + url
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise EndpointError(f"endpoint {url!r}: scheme must be one of {', '.join(SCHEMES)}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            baud = int(query.pop("baud", "19200" if scheme == "modbus-rtu" else "115200"))
            parity = query.pop("parity", "E" if scheme == "modbus-rtu" else "N").upper()
            stopbits = int(query.pop("stopbits", "1"))
            unit = int(query.pop("unit", "1"))
        except ValueError as exc:
            raise EndpointError(f"endpoint {url!r}: {exc}") from None
        if parity not in ("N", "E", "O"):
            raise EndpointError(f"endpoint {url!r}: parity must be N, E or O")
        if not 0 <= unit <= 247:
            raise EndpointError(f"endpoint {url!r}: unit must be 0..247")
        if scheme in ("socket", "modbus-tcp"):
            try:
                port = parts.port
            except ValueError:
                port = None
            if not parts.hostname or not port:
                raise EndpointError(f"endpoint {url!r}: expected {scheme}://HOST:PORT")
            return cls(scheme, host=parts.hostname, port=port, baud=baud, parity=parity,
                       stopbits=stopbits, unit=unit, options=query)
        path = parts.path
        if not path:
            raise EndpointError(f"endpoint {url!r}: expected {scheme}:///dev/NAME")
        return cls(scheme, path=path, baud=baud, parity=parity, stopbits=stopbits, unit=unit,
                   options=query)

    @property
    def serial_url(self) -> str:
        """The URL pyserial's ``serial_for_url`` understands."""
        if self.scheme == "socket":
            return f"socket://{self.host}:{self.port}"
        return self.path

    def __str__(self) -> str:
        if self.scheme == "socket":
            return f"socket://{self.host}:{self.port}"
        if self.scheme == "modbus-tcp":
            return f"modbus-tcp://{self.host}:{self.port}?unit={self.unit}"
        if self.scheme == "modbus-rtu":
            return f"modbus-rtu://{self.path}?baud={self.baud}&parity={self.parity}&unit={self.unit}"
        return f"serial://{self.path}?baud={self.baud}"
