"""The architecture of a crop classifier as data (stored in ``model.json``), and building the
``SequenceClassifier`` it describes: a deep RNN (paper §4) and a head for task A (per time step)
or task B (per sequence, averaging over valid steps; paper §5.2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cropstar.errors import InputError, ModelMismatchError
from cropstar.nn import CELLS, FinalStateHead, PerSequenceHead, PerTimestepHead, SequenceClassifier, make_rnn
from cropstar.nn.ensemble import EnsembleClassifier

#: Heads by name; the task each serves is the head's ``task``.
HEADS = {"per_timestep": PerTimestepHead, "per_sequence": PerSequenceHead, "final_state": FinalStateHead}
#: The head a task gets unless one is named.
DEFAULT_HEAD = {"per_timestep": "per_timestep", "per_sequence": "per_sequence"}


@dataclass(frozen=True)
class Architecture:
    """What :func:`build_classifier` needs: the cell, the stack's sizes, the head and the cell options
    (``weight_init``, ``bias_init``, ``t_max``, ``recurrence_depth``; see :func:`cropstar.nn.make_rnn`);
    ``use_mask``: whether the validity mask reaches the model (False: it reads every step, gap-filled).

    ``input_size`` = C·P·P features per step; ``num_classes`` = rows of the head; ``members`` > 1:
    an ensemble of that many such classifiers whose class probabilities are averaged.
    """

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    num_classes: int
    head: str = "per_sequence"
    options: dict[str, Any] = field(default_factory=dict)
    use_mask: bool = True
    members: int = 1

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise InputError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        if self.head not in HEADS:
            raise InputError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        for name in ("input_size", "hidden_size", "num_layers", "num_classes", "members"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"architecture {name} must be a positive integer, got {value!r}")

    @property
    def task(self) -> str:
        """``per_timestep`` or ``per_sequence``: the labels this classifier predicts."""
        return HEADS[self.head].task

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Architecture:
        known = {
            "cell",
            "input_size",
            "hidden_size",
            "num_layers",
            "num_classes",
            "head",
            "options",
            "use_mask",
            "members",
        }
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelMismatchError(f"model.json architecture has unknown key(s) {', '.join(unknown)}")
        missing = sorted({"cell", "input_size", "hidden_size", "num_layers", "num_classes"} - set(values))
        if missing:
            raise ModelMismatchError(f"model.json architecture lacks {', '.join(missing)}")
        return cls(**{**values, "options": dict(values.get("options") or {})})


def build_classifier(architecture: Architecture) -> SequenceClassifier | EnsembleClassifier:
    """A freshly initialised classifier: ``make_rnn`` (distinct layers) and the named head; an
    :class:`EnsembleClassifier` of ``members`` of them where there are several."""
    a = architecture

    def single() -> SequenceClassifier:
        rnn = make_rnn(a.cell, a.input_size, a.hidden_size, a.num_layers, **a.options)
        return SequenceClassifier(rnn, HEADS[a.head](a.hidden_size, a.num_classes), use_mask=a.use_mask)

    return single() if a.members == 1 else EnsembleClassifier([single() for _ in range(a.members)])
