"""Starting a new season's model from an old one: the deep RNN's weights are copied whole, the
head keeps the rows of the classes both seasons share (matched by class code, not id), new classes
start from the fresh initialisation and dropped ones are removed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cropstar.data.class_table import ClassTable
from cropstar.data.normalisation import Normalisation
from cropstar.errors import InputError, ModelMismatchError
from cropstar.model.architecture import Architecture, build_classifier
from cropstar.model.artifact import LoadedModel
from cropstar.nn import SequenceClassifier

#: Options that only change how weights are initialised (they are copied anyway), so may differ.
INIT_OPTIONS = frozenset({"weight_init", "bias_init", "t_max", "gate_bias"})


@dataclass(frozen=True)
class RetrainPlan:
    """What :func:`init_from` carried over: class codes ``kept`` (head rows copied), ``added`` (fresh
    rows) and ``dropped``; the old model's folder and normalisation (the trainer decides whether to
    keep it)."""

    source: str
    kept: tuple[str, ...]
    added: tuple[str, ...]
    dropped: tuple[str, ...]
    old_normalisation: Normalisation

    def to_dict(self) -> dict[str, Any]:
        """For the new model card's ``training["init_from"]`` and the log."""
        return {
            "source": self.source,
            "kept": list(self.kept),
            "added": list(self.added),
            "dropped": list(self.dropped),
            "old_normalisation": self.old_normalisation.to_dict(),
        }


def _differences(old: Architecture, new: Architecture) -> list[str]:
    """How ``new`` differs from ``old`` beyond the number of classes and the initialisation options."""
    found = [
        f"{name}: old {getattr(old, name)!r}, new {getattr(new, name)!r}"
        for name in ("cell", "input_size", "hidden_size", "num_layers", "head")
        if getattr(old, name) != getattr(new, name)
    ]
    for key in sorted((set(old.options) | set(new.options)) - INIT_OPTIONS):
        if old.options.get(key) != new.options.get(key):
            found.append(f"option {key}: old {old.options.get(key)!r}, new {new.options.get(key)!r}")
    return found


def init_from(
    old: LoadedModel, architecture: Architecture, class_table: ClassTable
) -> tuple[SequenceClassifier, RetrainPlan]:
    """A new classifier for ``architecture`` and ``class_table``, initialised from ``old``.

    Every RNN tensor is copied; head rows (weight row and bias) are copied for the class codes in both
    tables. ``architecture`` must equal the old one apart from ``num_classes`` (= ``len(class_table)``)
    and the initialisation options, else ModelMismatchError names what differs.
    """
    if architecture.num_classes != len(class_table):
        raise InputError(
            f"architecture has {architecture.num_classes} classes but the class table {len(class_table)}"
        )
    if old.card.architecture.members > 1:
        raise ModelMismatchError(
            f"cannot initialise from {old.path}: it is an ensemble of {old.card.architecture.members} "
            "models; initialise from one of its members (the members/ folder of its training run)"
        )
    differences = _differences(old.card.architecture, architecture)
    if differences:
        raise ModelMismatchError(
            f"cannot initialise from {old.path}: the architecture differs ({'; '.join(differences)})"
        )
    model = build_classifier(architecture)
    old_rnn, new_rnn = old.model.rnn.state_dict(), model.rnn.state_dict()
    for name, tensor in new_rnn.items():
        if name not in old_rnn or old_rnn[name].shape != tensor.shape:
            found = tuple(old_rnn[name].shape) if name in old_rnn else "missing"
            raise ModelMismatchError(
                f"cannot initialise from {old.path}: rnn tensor {name!r} is {found} there, "
                f"the new architecture needs {tuple(tensor.shape)}"
            )
    model.rnn.load_state_dict(old_rnn)

    old_table = old.card.class_table
    kept = [code for code in class_table.codes if code in old_table.codes]
    with torch.no_grad():
        old_linear, new_linear = old.model.head.linear, model.head.linear
        for code in kept:
            row, old_row = class_table.id_of(code), old_table.id_of(code)
            new_linear.weight[row] = old_linear.weight[old_row].to(new_linear.weight.device)
            new_linear.bias[row] = old_linear.bias[old_row].to(new_linear.bias.device)
    plan = RetrainPlan(
        source=str(old.path),
        kept=tuple(kept),
        added=tuple(code for code in class_table.codes if code not in old_table.codes),
        dropped=tuple(code for code in old_table.codes if code not in class_table.codes),
        old_normalisation=old.card.normalisation,
    )
    return model, plan
