"""A package's public names, imported on first use (PEP 562), as pydantic does.

Importing a subpackage imports its parents first: with eager re-exports,
``import cds.measures.pose`` in a video worker would load the web service
and FHIR models it never uses (about 1.2 s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose names live in ``homes``
    (name -> module, relative to the package)."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{home}"), name)

    def __dir__() -> list[str]:
        return sorted(homes)

    return __getattr__, __dir__
