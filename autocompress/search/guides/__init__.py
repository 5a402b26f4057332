"""The guides a search can be steered by, registered by name (``--guide``): ``macs`` (nothing
measured), ``sensitivity`` (the damages measured alone) and ``surrogate`` (those, plus what the
fine-tunes teach). See ``base.Guide`` for what a guide decides."""

from __future__ import annotations

from ...errors import AutocompressError
from .base import Guide, NoTunables
from .macs import MacShareGuide
from .sensitivity import SensitivityGuide
from .surrogate import SurrogateConfig, SurrogateGuide

__all__ = ["GUIDES", "Guide", "MacShareGuide", "NoTunables", "SensitivityGuide", "SurrogateConfig", "SurrogateGuide",
           "guide_class", "make_guide"]

GUIDES: dict[str, type[Guide]] = {g.name: g for g in (MacShareGuide, SensitivityGuide, SurrogateGuide)}


def guide_class(name: str) -> type[Guide]:
    if name not in GUIDES:
        raise AutocompressError(f"guide {name!r} is not one of {', '.join(GUIDES)}", parameters=("guide",))
    return GUIDES[name]


def make_guide(name: str, options: dict | None = None) -> Guide:
    """The guide registered as ``name``, its config's fields set from ``options``."""
    cls = guide_class(name)
    try:
        config = cls.Config(**(options or {}))
    except (TypeError, ValueError) as exc:
        raise AutocompressError(f"guide_options {options} for guide {name}: {exc}",
                                parameters=("guide_options",)) from exc
    return cls(config)
