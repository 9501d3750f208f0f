"""OpenSci: open code, open data, open compute. `opensci.Client` is the Python SDK (imported lazily, so
`import opensci` stays cheap and pulls in nothing of the server)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from opensci.client import Client


def __getattr__(name: str) -> Any:
    if name == "Client":
        from opensci.client import Client

        return Client
    raise AttributeError(f"module 'opensci' has no attribute {name!r}")


__all__ = ["Client", "__version__"]
