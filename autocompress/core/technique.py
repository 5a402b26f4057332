"""The Technique interface, and the registry that the Space, Candidate, accounting, kernels,
boundary repair, inspect and the front tables loop over.

A technique is one module under ``autocompress/techniques/`` that subclasses ``Technique`` and
registers one instance (in the spirit of torchao's config -> registered handler, and of an Olive
pass that declares its own search space). Everything the rest of the product needs to know about
it is said here, once:

- ``variables``: its decisions for a given analysis (one ``Variable`` per unit it acts on);
- ``neutral_value``: the value meaning "not compressed", which a Candidate may leave out;
- ``apply``: edit a model copy in place;
- ``reshape``: its effect on layer shapes (what accounting and the latency predictor read);
- ``repair_moves``: how the budget walk may change one of its decisions to save latency;
- ``summary`` and ``describe``: a few words for front tables and for ``inspect``.

``registered()`` lists techniques in apply order (their ``order``): each acts on the shapes the
earlier ones leave; a Space lists their variables in the order of their ``position``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

from .modules import is_inside
from .units import LayerUnit, NormUnit

__all__ = ["LayerShape", "ModelShapes", "Technique", "Variable", "layer_mac_share", "read_flag", "register",
           "registered", "technique"]


@dataclass(frozen=True)
class Variable:
    """One decision: its name (``kind/unit``), the unit it acts on and the values it may take."""

    kind: str
    unit: str
    choices: tuple

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.unit}"


@dataclass(frozen=True)
class LayerShape:
    """A Conv2d/Linear layer as a Candidate leaves it: what pruning, kernel choice, rank, bits and
    sparsity make of it. ``sparsity`` is the share of each weight tensor set to zero."""

    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, int]
    bits: int = 32
    rank: int | None = None  # None: not factorized
    sparsity: float = 0.0

    @property
    def fan_in(self) -> int:
        return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]

    def replace(self, **changes) -> "LayerShape":
        # dataclasses.replace re-runs __init__ through its generic machinery; kernels_of_candidate
        # calls this a few hundred times per candidate, so copy the fields directly (no
        # __post_init__ to skip). Unknown names still fail as they would there.
        unknown = changes.keys() - _LAYER_SHAPE_FIELDS
        if unknown:
            raise TypeError(f"LayerShape has no field {', '.join(sorted(unknown))}")
        new = object.__new__(LayerShape)
        new.__dict__.update(self.__dict__, **changes)
        return new


_LAYER_SHAPE_FIELDS = frozenset(LayerShape.__dataclass_fields__)


@dataclass
class ModelShapes:
    """What a Candidate leaves of the analysed model, built by each technique's ``reshape`` in
    registry order: each layer's shape, each norm's channel count, and the modules removed whole.

    ``units`` and ``norms`` describe the layers and norms the model has once its cells are chosen
    (the analysis' own, with a replaced block's swapped for its cell's, in model order);
    ``follows`` maps a cell's new depthwise layer to the layer whose input channels it carries."""

    layers: dict[str, LayerShape]
    norm_channels: dict[str, int]
    removed: list[str] = field(default_factory=list)  # module names removed with all they contain
    units: dict[str, LayerUnit] = field(default_factory=dict)
    norms: dict[str, NormUnit] = field(default_factory=dict)
    follows: dict[str, str] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)  # heads kept by each attention that lost some

    _gone: tuple = field(default=((), frozenset(), ()), repr=False, compare=False)  # ``alive``'s view of ``removed``

    @classmethod
    def of(cls, analysis) -> "ModelShapes":
        """The analysed model as it is. Built once per analysis and copied: the predictor prices
        candidates in an inner loop, and the entries are immutable, so shallow copies suffice."""
        template = analysis.__dict__.get("_shapes_template")
        if template is None:
            template = ({u.name: LayerShape(u.in_channels, u.out_channels, u.groups, u.kernel_size)
                         for u in analysis.layers}, {n.name: n.channels for n in analysis.norms},
                        {u.name: u for u in analysis.layers}, {n.name: n for n in analysis.norms})
            analysis.__dict__["_shapes_template"] = template
        layers, norm_channels, units, norms = template
        return cls(layers=dict(layers), norm_channels=dict(norm_channels), units=dict(units), norms=dict(norms))

    def alive(self, name: str) -> bool:
        if not self.removed:
            return True
        if self._gone[0] != tuple(self.removed):  # one pass of str.startswith over all prefixes at once
            self._gone = (tuple(self.removed), frozenset(self.removed), tuple(gone + "." for gone in self.removed))
        return name not in self._gone[1] and not name.startswith(self._gone[2])

    def replace_blocks(self, swaps: list[tuple[str, tuple, tuple, dict]], block_of: dict | None = None) -> None:
        """Swap every layer and norm inside each ``(block, layers, norms, follows)`` for its cell's,
        where the block's first stood. All blocks in one pass over the entries: one pass per block
        made the predictor's inner loop quadratic in the cells a candidate changes. ``block_of``:
        the block (of any swap the analysis offers) each entry lies in, when those blocks do not
        nest and the entries are still the analysis' own (``blocks_by_entry``); else it is worked out."""
        if not swaps:
            return
        blocks = [block for block, _, _, _ in swaps]
        if block_of is None and _nested(blocks):
            for swap in swaps:  # nested blocks: each swap sees what the one before it left
                self.replace_blocks([swap])
            return
        layers = {block: {u.name: u for u in cell_layers} for block, cell_layers, _, _ in swaps}
        norms = {block: {n.name: n for n in cell_norms} for block, _, cell_norms, _ in swaps}
        self.units = _spliced(self.units, layers, block_of)
        self.norms = _spliced(self.norms, norms, block_of)
        new_layers = {name: u for cell in layers.values() for name, u in cell.items()}
        new_norms = {name: n for cell in norms.values() for name, n in cell.items()}
        self.layers = {name: LayerShape(u.in_channels, u.out_channels, u.groups, u.kernel_size)
                       if name in new_layers else self.layers[name] for name, u in self.units.items()}
        self.norm_channels = {name: new_norms[name].channels if name in new_norms else self.norm_channels[name]
                              for name in self.norms}
        for _, _, _, follows in swaps:
            self.follows.update(follows)


def blocks_by_entry(analysis, blocks) -> dict | None:
    """Each layer and norm of ``analysis`` lying in one of ``blocks`` (the blocks its cells may
    swap), mapped to that block; None when the blocks nest. Cached on the analysis: the predictor
    asks for it with every candidate."""
    key = tuple(sorted(blocks))
    cached = analysis.__dict__.get("_blocks_by_entry")
    if cached is None or cached[0] != key:
        names, lookup = [u.name for u in analysis.layers] + [n.name for n in analysis.norms], dict.fromkeys(key)
        found = None if _nested(key) else {name: block for name in names
                                           if (block := _enclosing(name, lookup)) is not None}
        cached = analysis.__dict__["_blocks_by_entry"] = (key, found)
    return cached[1]


def _spliced(entries: dict, cells: dict[str, dict], block_of: dict | None) -> dict:
    """``entries`` with those inside each block of ``cells`` replaced by the block's cell entries,
    placed where the block's first entry stood (at the end when it had none)."""
    out, placed = {}, set()
    for name, value in entries.items():
        block = _enclosing(name, cells) if block_of is None else block_of.get(name)
        if block not in cells:
            out[name] = value
        elif block not in placed:
            out.update(cells[block])
            placed.add(block)
    for block, cell in cells.items():
        if block not in placed:
            out.update(cell)
    return out


def _nested(blocks) -> bool:
    """Whether one of ``blocks`` lies inside another."""
    return any(is_inside(inner, outer) for outer in blocks for inner in blocks if inner != outer)


def _enclosing(name: str, blocks: dict) -> str | None:
    """The key of ``blocks`` that ``name`` is or lies below (they do not nest), or None."""
    if name in blocks:
        return name
    end = name.find(".")
    while end != -1:
        if name[:end] in blocks:
            return name[:end]
        end = name.find(".", end + 1)
    return None


def layer_mac_share(analysis, macs: int) -> float:
    """``macs`` as a share of all the analysed layers' MACs."""
    return macs / max(1, sum(u.macs for u in analysis.layers))


def read_flag(option: str, value: Any) -> bool:
    """A SpaceOptions value that turns a technique on or off."""
    if not isinstance(value, bool):
        raise ValueError(f"{option} must be True or False, got {value!r}")
    return value


class Technique(ABC):
    """One compression technique. Subclasses set the class attributes and implement ``variables``
    and ``apply``; the other hooks default to "no effect"."""

    kind: ClassVar[str]  # the Candidate field and the variables' prefix: "prune", "bits", ...
    order: ClassVar[int]  # apply order, lowest first: each technique acts on what earlier ones leave
    # Where its variables stand in a Space (and its words in a summary). Stable across releases:
    # a seeded draw walks the variables in this order, so profiles and warm starts reproduce.
    position: ClassVar[int] = 100
    value_type: ClassVar[type]  # how a value is read from Candidate JSON: float, int or bool
    neutral: ClassVar[Any] = None  # the "not compressed" value; None: each variable's first choice
    option: ClassVar[str]  # the SpaceOptions keyword that sets which values its variables take
    default_option: ClassVar[Any]  # that keyword's default
    ordered: ClassVar[bool] = False  # values are ordered numbers: suggested as a stepped float
    # The techniques of the first releases are written into every Candidate JSON, even when empty,
    # so stored candidates (the keys of profile CSVs and studies) keep their exact text.
    in_every_candidate_json: ClassVar[bool] = False
    # Per-layer decisions that a cell's new depthwise layer takes from the 1x1 layer it feeds
    # (``cell_choices.with_followers``): a depthwise-separable conv runs at its conv's bit width.
    follows_layers: ClassVar[bool] = False

    def read_option(self, value: Any) -> Any:
        """Check a SpaceOptions value for this technique; raise ValueError naming it when wrong."""
        return value

    @abstractmethod
    def variables(self, analysis, options) -> list[Variable]:
        """Its decision variables for ``analysis`` under ``options`` (a SpaceOptions)."""

    def neutral_value(self, var: Variable) -> Any:
        return var.choices[0] if self.neutral is None else self.neutral

    @abstractmethod
    def apply(self, model, candidate, context) -> None:
        """Apply the Candidate's decisions of this kind to ``model`` in place. ``context`` is an
        ``ApplyContext``: the analysis, an example input and the target's quantization rules."""

    def reshape(self, analysis, candidate, shapes: ModelShapes) -> None:
        """Change ``shapes`` as this technique's decisions change the model (default: no effect)."""

    def mac_share(self, analysis, unit: str) -> float:
        """The share of the model's MACs a decision on ``unit`` touches (the budget walk's proxy
        of accuracy damage). Default: the MACs of the layer named ``unit``."""
        return layer_mac_share(analysis, sum(u.macs for u in analysis.layers if u.name == unit))

    def repair_moves(self, var: Variable, value: Any, share: float) -> Iterator[tuple[Any, float]]:
        """(new value, accuracy-damage proxy) for each change of ``var`` from ``value`` that may
        save latency. Default: none (a technique that leaves latency alone)."""
        return iter(())

    def summary(self, values: dict) -> str | None:
        """A few words on a Candidate's decisions of this kind, for front tables; None: nothing."""
        return None

    def describe(self, var: Variable) -> str:
        """How ``inspect`` names this variable."""
        return f"{self.kind} {{" + ",".join(str(c) for c in var.choices) + "}"


_REGISTRY: dict[str, Technique] = {}


def register(instance: Technique) -> Technique:
    """Add a technique; registering the same kind again replaces it."""
    if not isinstance(instance, Technique):
        raise TypeError(f"register() takes a Technique instance, got {type(instance).__name__}")
    _REGISTRY[instance.kind] = instance
    return instance


def registered(*, in_space_order: bool = False) -> list[Technique]:
    """Every registered technique, in apply order (or in the order of their ``position``)."""
    return sorted(_REGISTRY.values(), key=lambda t: t.position if in_space_order else t.order)


def technique(kind: str) -> Technique:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"no technique {kind!r}; registered: {sorted(_REGISTRY)}") from None
