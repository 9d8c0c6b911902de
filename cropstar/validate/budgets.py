"""The budgets of the validation suites: ``full`` follows the paper's protocols exactly
(DESIGN.md, "The paper's protocols"); ``cpu`` scales data, steps, width and epochs so that a whole
sweep takes about an hour on 2 cores while still showing the depth effect; ``smoke`` runs in about a
minute, for CI."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from cropstar.errors import InputError

BudgetName = Literal["smoke", "cpu", "full"]
BUDGETS: tuple[BudgetName, ...] = ("smoke", "cpu", "full")


@dataclass(frozen=True)
class Budget:
    """What one run of a suite may use.

    ``train`` / ``val`` / ``test``: samples (None: all the data has); ``downsample``: image side
    divisor (pixel MNIST: 28 / d squared steps); ``hidden_size``; ``epochs``; ``batch_size``; ``lr``;
    ``cells`` and ``layers``: the sweep when the command names none; ``scene_size``: the side of the
    synthetic scene of the crops suite (pixels); gestures: ``frames`` and ``size`` of the clips,
    ``filters`` of the conv RNN and ``head_filters`` of its CNN head; ``optimizer`` adam or sgd
    (momentum 0.9), ``weight_decay`` (L2), ``final_lr``: the learning rate decays linearly
    (polynomially, power 1) to it over the epochs (None: constant); ``bias_init`` of the memory gates
    (chrono, zero or constant), ``gate_bias`` (constant's value) and ``t_max`` (chrono's T_max; None:
    the suite's sequence length), as :func:`cropstar.nn.make_rnn` takes them.
    """

    name: BudgetName
    train: int | None
    val: int | None
    test: int | None
    hidden_size: int
    epochs: int
    batch_size: int
    lr: float
    cells: tuple[str, ...]
    layers: tuple[int, ...]
    downsample: int = 1
    scene_size: int = 0
    frames: int = 0
    size: int = 0
    filters: int = 0
    head_filters: tuple[int, ...] = ()
    optimizer: str = "adam"
    weight_decay: float = 0.0
    final_lr: float | None = None
    bias_init: str = "chrono"
    gate_bias: float | None = None
    t_max: int | None = None

    def init_options(self, steps: int) -> dict[str, object]:
        """The initialisation options of a suite's stack on sequences of ``steps`` steps."""
        options: dict[str, object] = {"bias_init": self.bias_init}
        if self.bias_init == "chrono":
            options["t_max"] = self.t_max or steps
        if self.gate_bias is not None:
            options["gate_bias"] = self.gate_bias
        return options

    def init_label(self, steps: int) -> str:
        """``chrono (T_max 26)``, ``zero gate bias``, ``gate bias -1``: for titles and tables."""
        from cropstar.nn.init import describe_bias_init

        return describe_bias_init(self.bias_init, self.t_max or steps, self.gate_bias)


#: Pixel MNIST and pMNIST (paper §5.1: 784 steps, 128 units, Adam 1e-3, batch 100, 100 epochs).
MNIST_BUDGETS: dict[str, Budget] = {
    "full": Budget("full", None, 5000, None, 128, 100, 100, 1e-3,
                   ("star", "lstm", "lstm_wf", "vrnn", "rhn"), (1, 2, 4, 8, 12, 16, 20)),
    "cpu": Budget("cpu", 10000, 2000, 2000, 48, 8, 100, 5e-3,
                  ("star", "lstm", "lstm_wf", "vrnn", "rhn"), (1, 2, 4, 8, 12), downsample=4),
    "smoke": Budget("smoke", 3000, 500, 500, 32, 8, 50, 3e-3, ("star", "lstm"), (1, 2, 4), downsample=7),
}  # fmt: skip

#: Crops (paper §5.2: 128 units, Adam 1e-3, batch 500, 30 epochs; 3 × 3 patches × 6 bands, 26 dates).
#: The paper names no gate-bias initialisation for crops; zero was measured best at depth for STAR
#: (docs/validation.md, "Choosing the gate bias"), and ``--bias-init chrono`` restores the old rows. The
#: cpu budget trains 60 epochs: at 30 nearly every run was still improving at its last epoch.
CROPS_BUDGETS: dict[str, Budget] = {
    "full": Budget("full", None, None, None, 128, 30, 500, 1e-3,
                   ("star", "lstm", "lstm_wf", "vrnn", "rhn", "gru"), (1, 2, 4, 8, 12), scene_size=256,
                   bias_init="zero"),
    "cpu": Budget("cpu", 8000, 2000, 4000, 32, 60, 250, 1e-3,
                  ("star", "lstm", "lstm_wf", "vrnn", "rhn", "gru"), (1, 2, 4, 8, 12), scene_size=192,
                  bias_init="zero"),
    "smoke": Budget("smoke", 1500, 300, 600, 16, 3, 100, 3e-3, ("star", "lstm"), (1, 2), scene_size=64,
                    bias_init="zero"),
}  # fmt: skip

#: Gestures (paper §5.3: 32 frames 112², conv RNN of 3 × 3 kernels and 64 filters, a 4-layer CNN
#: head of 128, 128, 256, 256 filters; SGD momentum 0.9, batch 8, lr 1e-3 decaying polynomially to
#: 1e-6 over 30 epochs, L2 5e-5). The smaller budgets use Adam: SGD at lr 1e-3 barely moves in a few
#: epochs. ``full`` reads all of Jester: its 118,562 training clips, 2,000 of its labelled validation
#: clips for model selection and the other 12,787 as the test split (Jester's own test split has no
#: labels); the moving digits then take :data:`cropstar.validate.suites.MOVING_DIGIT_CLIPS`. The paper
#: names no gate-bias initialisation for the gestures: zero, because with chrono (T_max = the frames)
#: convSTAR and convLSTM failed to train at 8 and 12 layers and with zero both trained
#: (docs/validation.md); ``--bias-init chrono`` gives the former default.
_CONV_CELLS = ("conv_star", "conv_lstm", "conv_lstm_wf")
GESTURE_BUDGETS: dict[str, Budget] = {
    "full": Budget("full", None, 2000, None, 0, 30, 8, 1e-3, _CONV_CELLS, (1, 2, 4, 8, 12, 16), frames=32,
                   size=112, filters=64, head_filters=(128, 128, 256, 256), optimizer="sgd", weight_decay=5e-5,
                   final_lr=1e-6, bias_init="zero"),
    "cpu": Budget("cpu", 1500, 300, 600, 0, 5, 16, 2e-3, _CONV_CELLS, (1, 2, 4, 8, 12), frames=12, size=24,
                  filters=8, head_filters=(8, 8, 16, 16), bias_init="zero"),
    "smoke": Budget("smoke", 900, 150, 300, 0, 4, 16, 3e-3, ("conv_star", "conv_lstm"), (1, 2), frames=8,
                    size=24, filters=8, head_filters=(8, 8, 16, 16), bias_init="zero"),
}  # fmt: skip

SUITE_BUDGETS: dict[str, dict[str, Budget]] = {"mnist": MNIST_BUDGETS, "pmnist": MNIST_BUDGETS,
                                              "crops": CROPS_BUDGETS, "gestures": GESTURE_BUDGETS}  # fmt: skip


def budget_for(suite: str, name: str, **overrides: object) -> Budget:
    """The ``name`` budget of ``suite``, with any field overridden (e.g. ``epochs=2``)."""
    if suite not in SUITE_BUDGETS:
        raise InputError(f"unknown suite {suite!r}; choose one of {', '.join(SUITE_BUDGETS)}")
    if name not in BUDGETS:
        raise InputError(f"unknown budget {name!r}; choose one of {', '.join(BUDGETS)}")
    return replace(SUITE_BUDGETS[suite][name], **{k: v for k, v in overrides.items() if v is not None})


def check_init(budget: Budget) -> None:
    """InputError naming a budget's initialisation that :func:`cropstar.nn.make_rnn` would refuse."""
    from cropstar.nn.init import BIAS_INITS, gate_bias_problem

    if budget.bias_init not in BIAS_INITS:
        raise InputError(f"unknown bias_init {budget.bias_init!r}; choose one of {', '.join(BIAS_INITS)}")
    problem = gate_bias_problem(budget.bias_init, budget.gate_bias)
    if problem:
        raise InputError(problem)
    if budget.t_max is not None and (budget.bias_init != "chrono" or budget.t_max < 2):
        raise InputError(f"t_max (at least 2) goes with bias_init chrono, got t_max {budget.t_max}")
