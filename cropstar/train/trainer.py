"""Training a deep RNN crop classifier on a stored dataset (paper §5.2: STAR, Adam, cross-entropy;
model selection = the epoch with the lowest validation loss).

:func:`train` reads the ``train`` and ``val`` splits of a dataset (DESIGN.md, "Data contracts") into
memory — the crop datasets are small: 26 steps × 54 features × 4 bytes ≈ 5.6 kB per sample — and
draws batches from them with a permutation seeded by (seed, epoch), so an epoch's order depends on
nothing that happened before it. It writes the run folder::

    RUN/config.yaml       the resolved settings (task, head and t_max filled in)
    RUN/log.csv           one row per epoch: epoch, train_loss, train_accuracy, val_loss,
                          val_accuracy, lr, seconds (rewritten atomically after every epoch)
    RUN/tensorboard/      the same scalars for TensorBoard
    RUN/checkpoint.pt     everything to resume, written atomically after every epoch
    RUN/model/            the best epoch's model artifact (cropstar.model.artifact)

Loss: cross-entropy over the labelled targets (label −1 ignored; per time step the (B, T, K) logits
are flattened), optionally weighted by inverse class frequency; the model's mask handles masked
steps. ``resume=True`` continues from ``RUN/checkpoint.pt`` and ends with exactly the weights of an
uninterrupted run. ``init_from`` starts from a trained model (cropstar.train.retrain): its
architecture and its normalisation statistics are kept, so the retrained model reads inputs the
same way; the class table is the dataset's.

Device (``config.device``: auto, cpu, cuda[:N]; recorded in the model card as ``training.device`` and
``device_name``): on a GPU the splits are copied there once when they fit (:meth:`SplitTensors.place`),
else each batch is gathered into pinned memory and copied asynchronously. ``config.amp`` runs the
forward pass under bf16 (or fp16, with a gradient scaler) autocast on CUDA only; the recurrent stack
stays in float32 inside it (:class:`cropstar.nn.stack.DeepRNN`), so autocast reaches the head and loss.

Progress: ``progress(stage, done, total, **metrics)`` is called on rank 0 with
``("train", batch, batches, epoch=e, loss=running mean loss)`` after every training batch and
``("epoch", e, epochs, **row)`` after every epoch (``row`` is the log row, once the checkpoint is
written; raising KeyboardInterrupt there stops a run that ``resume`` can continue).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cropstar.data.dataset import DatasetReader, PatchSequenceDataset, open_dataset
from cropstar.data.normalisation import Normalisation
from cropstar.device import describe_device
from cropstar.device import resolve_device as resolve_torch_device
from cropstar.errors import DataError, InputError
from cropstar.files import write_csv_atomic, write_text_atomic
from cropstar.model.architecture import DEFAULT_HEAD, HEADS, Architecture, build_classifier
from cropstar.train import distributed
from cropstar.train.config import AugmentConfig, EarlyStoppingConfig, ScheduleConfig, TrainConfig
from cropstar.train.distributed import World

log = logging.getLogger(__name__)

#: ``progress(stage, done, total, **metrics)``; see the module docstring.
Progress = Callable[..., None]
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "cropstar-checkpoint"
LOG_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")
#: Settings that may change between a run and its resumption (they do not change the result on one device).
RESUMABLE_CHANGES = ("device", "num_workers")


@dataclass
class TrainResult:
    """What :func:`train` produced: the run and model folders, the selected epoch and its loss
    (validation loss; the training loss when the dataset has no validation split), the log rows."""

    run: Path
    model: Path
    best_epoch: int
    best_loss: float
    history: list[dict[str, Any]]
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any]:
        """The log row of the selected epoch."""
        return self.history[self.best_epoch - 1]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
#: Largest share of a GPU's free memory a split may take to be kept there whole.
DEVICE_SPLIT_SHARE = 0.5


@dataclass
class SplitTensors:
    """One split in memory: x (N, T, C·P·P) normalised, mask (N, T) bool, labels (N,) or (N, T), on the
    CPU; ``on_device`` the same three copied onto a CUDA training device (:meth:`place`), or None."""

    x: Tensor
    mask: Tensor
    labels: Tensor
    on_device: tuple[Tensor, Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x, self.mask, self.labels))

    def place(self, device: torch.device) -> SplitTensors:
        """This split with a copy on ``device`` if it is a GPU with room for it (at most
        :data:`DEVICE_SPLIT_SHARE` of its free memory; the crop sets take 5.6 kB per sample): batches are
        then drawn there, without a copy from the host per batch."""
        if device.type != "cuda" or self.nbytes > DEVICE_SPLIT_SHARE * torch.cuda.mem_get_info(device)[0]:
            return self
        return replace(self, on_device=(self.x.to(device), self.mask.to(device), self.labels.to(device)))

    def batch(self, indices: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The samples ``indices`` (a CPU index tensor) on ``device``: from the copy there if there is one;
        else gathered on the CPU (on the way to a GPU into pinned memory, copied asynchronously)."""
        if self.on_device is not None:
            where = indices.to(device)
            x, mask, labels = (t[where] for t in self.on_device)
        elif device.type == "cuda":
            pinned = (_pinned_rows(t, indices) for t in (self.x, self.mask, self.labels))
            x, mask, labels = (t.to(device, non_blocking=True) for t in pinned)
        else:
            x, mask, labels = (t[indices].to(device) for t in (self.x, self.mask, self.labels))
        return x, mask, labels


def _pinned_rows(tensor: Tensor, indices: Tensor) -> Tensor:
    """The rows ``indices`` of a CPU tensor, gathered straight into page-locked memory."""
    rows = torch.empty((len(indices), *tensor.shape[1:]), dtype=tensor.dtype, pin_memory=True)
    return torch.index_select(tensor, 0, indices, out=rows)


def load_split(
    reader: DatasetReader, split: str, normalisation: Normalisation, num_workers: int = 0
) -> SplitTensors | None:
    """The samples of ``split`` through :class:`PatchSequenceDataset`, read shard by shard (None when empty)."""
    dataset = PatchSequenceDataset(reader, split, normalisation=normalisation, cache_shards=2)
    if len(dataset) == 0:
        return None
    loader = DataLoader(dataset, batch_size=reader.shard_size, num_workers=num_workers)
    x, mask, labels = (torch.cat(parts) for parts in zip(*loader))
    return SplitTensors(x, mask, labels)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the samples in ``epoch``: a permutation seeded by (seed, epoch) alone."""
    state = np.random.SeedSequence((seed, epoch)).generate_state(1, np.uint64)[0]
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(state)))


def augment(
    x: Tensor,
    mask: Tensor,
    settings: AugmentConfig,
    seed: int,
    epoch: int,
    batch: int,
    size: int,
    world: World,
) -> tuple[Tensor, Tensor]:
    """Noise on the inputs, dropped steps and time shifts for one training batch (x (B, T, I), mask
    (B, T)), drawn for the global batch of ``size`` samples from a generator seeded by (seed, epoch,
    batch) and cut to this rank's share, so that resumed and distributed runs draw exactly what one
    uninterrupted process draws."""
    part = distributed.rank_share(torch.arange(size), world)
    nothing = settings.noise_std == 0 and settings.drop_steps == 0 and settings.shift_steps == 0
    if nothing or part.numel() != x.shape[0]:
        return x, mask  # (a rank without samples runs a dummy row with zero loss)
    n = size
    state = np.random.SeedSequence((seed, epoch, batch, 1)).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    noise = torch.randn((n, *x.shape[1:]), generator=generator)
    dropped = torch.rand((n, mask.shape[1]), generator=generator) < settings.drop_steps
    x = x + settings.noise_std * noise[part].to(x.device, x.dtype)
    mask = mask & ~dropped[part].to(mask.device)
    if settings.shift_steps:
        shift = torch.randint(-settings.shift_steps, settings.shift_steps + 1, (n,), generator=generator)
        x, mask = shift_in_time(x, mask, shift[part].to(x.device))
    return x, mask


def shift_in_time(x: Tensor, mask: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Each series moved ``shift`` steps later (negative: earlier): step t takes step t − shift; the
    steps that came from outside the series repeat its first or last value and are masked."""
    steps = torch.arange(x.shape[1], device=x.device)
    source = steps.unsqueeze(0) - shift.unsqueeze(1)  # (B, T)
    inside = (source >= 0) & (source < x.shape[1])
    source = source.clamp(0, x.shape[1] - 1)
    moved = x.gather(1, source.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    return moved, mask.gather(1, source) & inside


def balanced_class_weights(labels: Tensor, num_classes: int) -> Tensor:
    """n / (K · n_k) per class over the labelled targets (0 for a class without samples)."""
    counts = torch.bincount(labels[labels >= 0].flatten(), minlength=num_classes).double()
    weights = counts.sum() / (num_classes * counts)
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).float()


#: The warm-up starts at lr / WARMUP_DIVISOR (torch's OneCycleLR's div_factor).
WARMUP_DIVISOR = 25.0


def lr_at(schedule: ScheduleConfig, lr: float, step: int, steps: int) -> float:
    """The learning rate of (0-based) optimisation ``step`` of ``steps`` (see :class:`ScheduleConfig`)."""
    warmup = round(schedule.warmup * steps)
    start = lr / WARMUP_DIVISOR
    if step < warmup:
        ramp = step / warmup
        if schedule.name == "one_cycle":
            return start + (lr - start) * 0.5 * (1 - math.cos(math.pi * ramp))
        return start + (lr - start) * ramp
    progress = (step - warmup) / max(steps - warmup, 1)
    if schedule.name == "polynomial":
        return schedule.final_lr + (lr - schedule.final_lr) * (1 - progress) ** schedule.power
    if schedule.name in ("cosine", "one_cycle"):
        return schedule.final_lr + (lr - schedule.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


def epochs_for(config: TrainConfig, train_samples: int) -> int:
    """The epochs a run makes: ``config.epochs``, or with a ``steps`` budget as many as it takes to
    make that many updates of ``batch_size`` samples."""
    if config.steps is None:
        return config.epochs
    return max(1, math.ceil(config.steps / math.ceil(train_samples / config.batch_size)))


# ---------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------
def loss_terms(logits: Tensor, labels: Tensor, class_weights: Tensor | None) -> Tensor:
    """Sums over the labelled targets of one batch: [cross-entropy, weight, correct, count] (float64).

    logits (B, K) or (B, T, K); labels (B,) or (B, T), −1 = ignore. The weight of a target is its
    class weight (1 without weights), so the mean loss is cross-entropy / weight.
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    ce = F.cross_entropy(logits, labels, weight=class_weights, ignore_index=-1, reduction="sum")
    valid = labels >= 0
    weight = target_weight(labels, class_weights)
    correct = ((logits.argmax(dim=-1) == labels) & valid).sum()
    return torch.stack([ce.double(), weight.double(), correct.double(), valid.sum().double()])


def target_weight(labels: Tensor, class_weights: Tensor | None) -> Tensor:
    """The summed weight of the labelled targets in ``labels``."""
    valid = labels[labels >= 0]
    return (
        valid.new_tensor(valid.numel())
        if class_weights is None
        else class_weights.to(valid.device)[valid].sum()
    )


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def train(
    config: TrainConfig,
    data: Path | str,
    out: Path | str,
    *,
    init_from: Path | str | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    world: World | None = None,
    refit: bool = False,
) -> TrainResult:
    """Train a classifier on the dataset ``data`` and write the run folder ``out`` (module docstring).

    ``init_from``: a model artifact to start from (retraining); ``resume``: continue ``out``'s
    checkpoint; ``world``: the process's place under torchrun (None: read from the environment by
    :meth:`World.from_env`; one process when not launched by torchrun). ``refit``: then train again
    on the training and validation samples together, for the epochs validation selected, keeping the
    last epoch (``out/refit``; its result is returned).
    """
    world = world or World.from_env()
    distributed.per_rank_batch(config.batch_size, world)
    device = resolve_device(config.device, world)
    created = distributed.start(world, device)
    start = Path(init_from) if init_from is not None else None
    try:
        reader = open_dataset(data)
        run = _Run(config, reader, Path(out), device, world, progress)
        run.prepare(start, resume)
        result = run.fit()
        if not refit:
            return result
        refit_config = config.model_copy(
            update={"epochs": result.best_epoch, "steps": None, "early_stopping": EarlyStoppingConfig()}
        )
        again = _Run(refit_config, reader, Path(out) / "refit", device, world, progress, refit=True)
        again.prepare(start, resume and (Path(out) / "refit" / CHECKPOINT).is_file())
        return again.fit()
    finally:
        distributed.stop(created)


def resolve_device(name: str, world: World) -> torch.device:
    """``auto`` → CUDA when available (device ``LOCAL_RANK`` under torchrun), else CPU
    (:func:`cropstar.device.resolve_device`)."""
    return resolve_torch_device(name, option="device", local_rank=world.local_rank)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the model's initialisation draws from torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_config(config: TrainConfig, reader: DatasetReader) -> TrainConfig:
    """``config`` with the task, the head and chrono's t_max taken from the dataset where unset, and
    the epochs a ``steps`` budget needs on its training split."""
    if config.task is not None and config.task != reader.task:
        raise InputError(
            f"task {config.task} asked for, but {reader.path} is labelled {reader.task}; "
            f"write a {config.task} dataset (cropstar dataset) or drop the task setting"
        )
    head = config.model.head or DEFAULT_HEAD[reader.task]
    if HEADS[head].task != reader.task:
        raise InputError(f"head {head} predicts {HEADS[head].task}, the dataset is labelled {reader.task}")
    if config.augment.shift_steps and reader.task != "per_sequence":
        raise InputError(f"augment.shift_steps shifts the inputs but not per-time-step labels; {reader.path} "
                         f"is labelled {reader.task}: set it to 0")  # fmt: skip
    t_max = config.model.t_max or (reader.shape[1] if config.model.bias_init == "chrono" else None)
    if t_max is not None and t_max < 2:
        raise InputError(f"chrono initialisation needs at least 2 time steps, {reader.path} has {t_max}")
    model = config.model.model_copy(update={"head": head, "t_max": t_max})
    epochs = epochs_for(config, reader.splits["train"])
    return config.model_copy(update={"task": reader.task, "model": model, "epochs": epochs})


def architecture_for(config: TrainConfig, reader: DatasetReader) -> Architecture:
    """The architecture a resolved ``config`` describes for ``reader``'s inputs and classes."""
    m = config.model
    options: dict[str, Any] = {"weight_init": m.weight_init, "bias_init": m.bias_init}
    if m.t_max is not None:
        options["t_max"] = m.t_max
    if m.gate_bias is not None:
        options["gate_bias"] = m.gate_bias
    _, _, c, p, _ = reader.shape
    head = m.head or DEFAULT_HEAD[reader.task]
    return Architecture(
        m.cell, c * p * p, m.hidden_size, m.num_layers, len(reader.class_table), head, options, m.use_mask
    )


def make_optimiser(config: TrainConfig, parameters: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    o = config.optimiser
    if o.name == "sgd":
        return torch.optim.SGD(parameters, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    kind = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return kind(parameters, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def stale_epochs(losses: list[float], min_delta: float) -> int:
    """Epochs since the loss last fell below the best so far by more than ``min_delta``."""
    best, stale = math.inf, 0
    for loss in losses:
        if loss < best - min_delta:
            best, stale = loss, 0
        else:
            stale += 1
    return stale


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with ``weights_only`` (tensors and plain Python values only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a cropstar training checkpoint")
    return state


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            **np_state,
            "state": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"]},
        },
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    key = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**np_state, "state": {"key": key, "pos": np_state["state"]["pos"]}})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _plain(value: Any) -> Any:
    """Tuples and paths → JSON types (for the checkpoint and the model card)."""
    return json.loads(json.dumps(value, default=str))


class _Run:
    """The state of one training run and its steps; :func:`train` drives it."""

    def __init__(
        self,
        config: TrainConfig,
        reader: DatasetReader,
        out: Path,
        device: torch.device,
        world: World,
        progress: Progress | None,
        refit: bool = False,
    ) -> None:
        self.config = resolve_config(config, reader)
        #: trained on the training and validation samples, the last epoch kept
        self.refit = refit
        self.reader, self.out, self.device, self.world = reader, out, device, world
        self.progress = progress if world.is_main else None
        self.notes: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.best_epoch, self.best_loss, self.best_state = 0, math.inf, None
        self.stopped_early = False
        self.init_info: dict[str, Any] | None = None

    # ---- setting up -------------------------------------------------------------------------
    def prepare(self, init_from: Path | None, resume: bool) -> None:
        checkpoint_path = self.out / CHECKPOINT
        if resume and not checkpoint_path.is_file():
            raise InputError(f"nothing to resume: {checkpoint_path} does not exist")
        if not resume and checkpoint_path.exists():
            raise InputError(
                f"{self.out} already holds a training run ({CHECKPOINT}); pass --resume to continue it "
                "or choose a new run folder"
            )
        checkpoint = load_checkpoint(checkpoint_path) if resume else None
        if checkpoint is not None:
            self._check_resumable(checkpoint, init_from)
            self.architecture = Architecture.from_dict(checkpoint["architecture"])
            self.normalisation = Normalisation.from_dict(checkpoint["normalisation"])
            self.init_info = checkpoint["init_from"]
            self.module = build_classifier(self.architecture)
        else:
            seed_everything(self.config.seed)
            self._build(init_from)
        self.module.to(self.device)
        self.model = distributed.wrap(self.module, self.world, self.device)
        if self.config.compile:
            self.model = torch.compile(self.model)
        self.optimiser = make_optimiser(self.config, self.module.parameters())
        self._set_up_amp()
        self.train_data = load_split(self.reader, "train", self.normalisation, self.config.num_workers)
        if self.train_data is None:
            raise InputError(f"{self.reader.path} has no training samples (split 'train')")
        self.val_data = load_split(self.reader, "val", self.normalisation, self.config.num_workers)
        if self.refit and self.val_data is not None:
            both = (self.train_data, self.val_data)
            self.train_data = SplitTensors(
                *(torch.cat([getattr(d, k) for d in both]) for k in ("x", "mask", "labels"))
            )
            self.val_data = None
            self._note(
                f"refit on the training and validation samples for {self.config.epochs} epochs, the last kept"
            )
        elif self.val_data is None:
            self._note(
                "the dataset has no validation split: the model is selected by the lowest training loss"
            )
        self.train_data = self.train_data.place(self.device)
        if self.val_data is not None:
            self.val_data = self.val_data.place(self.device)
        self.class_weights = self.host_class_weights = None  # host: a batch's weight without a GPU sync
        if self.config.class_weights == "balanced":
            weights = balanced_class_weights(self.train_data.labels, self.architecture.num_classes)
            self.host_class_weights, self.class_weights = weights, weights.to(self.device)
        if checkpoint is not None:
            self._restore(checkpoint)
        distributed.barrier(self.world)  # every rank has checked the run folder before rank 0 writes

    def _build(self, init_from: Path | None) -> None:
        if init_from is None:
            self.architecture = architecture_for(self.config, self.reader)
            self.normalisation = self.reader.normalisation
            self.module = build_classifier(self.architecture)
            return
        from cropstar.model.artifact import check_dataset, load_artifact
        from cropstar.train.retrain import init_from as init_from_model

        old = load_artifact(init_from)
        check_dataset(old.card, self.reader, like=str(init_from))
        self.architecture = replace(old.card.architecture, num_classes=len(self.reader.class_table))
        self.normalisation = old.card.normalisation
        self.module, plan = init_from_model(old, self.architecture, self.reader.class_table)
        self.init_info = _plain(
            {
                "path": str(init_from),
                "name": old.card.name,
                "version": old.card.version,
                "plan": plan.to_dict(),
            }
        )
        self._note(
            f"retraining from {init_from}: its architecture and normalisation are kept (model settings unused)"
        )

    def _set_up_amp(self) -> None:
        use_amp = self.config.amp and self.device.type == "cuda"
        if self.config.amp and not use_amp:
            self._note("amp applies to CUDA only and is ignored on the CPU")
        self.amp_dtype = getattr(torch, self.config.amp_dtype) if use_amp else None
        fp16 = use_amp and self.config.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    def _check_resumable(self, checkpoint: dict[str, Any], init_from: Path | None) -> None:
        if checkpoint["dataset_fingerprint"] != self.reader.fingerprint:
            raise InputError(
                f"cannot resume {self.out}: dataset {self.reader.path} (fingerprint "
                f"{self.reader.fingerprint[:12]}…) is not the one trained on "
                f"({checkpoint['dataset']}, {checkpoint['dataset_fingerprint'][:12]}…)"
            )
        old, new = checkpoint["config"], self._comparable_config()
        default = type(self.config)().model_dump(mode="json", exclude=set(RESUMABLE_CHANGES))
        changed = sorted(_changed_keys(old, new, default))
        if changed:
            details = ", ".join(f"{k}: {_lookup(old, k)!r} → {_lookup(new, k)!r}" for k in changed)
            raise InputError(
                f"cannot resume {self.out}: the settings differ from the checkpoint's ({details})"
            )
        recorded = (checkpoint["init_from"] or {}).get("path")
        if init_from is not None and str(init_from) != recorded:
            raise InputError(f"cannot resume {self.out}: it was started from {recorded}, not {init_from}")

    def _comparable_config(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json", exclude=set(RESUMABLE_CHANGES))

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.module.load_state_dict(checkpoint["model"])
        self.optimiser.load_state_dict(checkpoint["optimiser"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.rows = list(checkpoint["rows"])
        self.best_epoch, self.best_loss = checkpoint["best_epoch"], checkpoint["best_loss"]
        self.best_state = checkpoint["best_model"]
        self.stopped_early = checkpoint["stopped_early"]
        self.notes = list(dict.fromkeys([*checkpoint["notes"], *self.notes]))
        _set_rng_state(checkpoint["rng"])

    def _note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            if self.world.is_main:
                log.warning(message)

    # ---- the loop ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        writer = self._open_tensorboard()
        try:
            if self.world.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.out / "config.yaml", self.config.to_yaml())
            for epoch in range(len(self.rows), self.config.epochs):
                if self.stopped_early:
                    break
                row = self._epoch(epoch)
                self._record(row, writer)
        finally:
            if writer is not None:
                writer.close()
        if self.world.is_main:
            self._save_model()
        distributed.barrier(self.world)
        return TrainResult(
            self.out,
            self.out / "model",
            self.best_epoch,
            self.best_loss,
            self.rows,
            self.stopped_early,
            self.notes,
        )

    def _open_tensorboard(self) -> Any:
        if not self.world.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(
            str(self.out / "tensorboard"), purge_step=len(self.rows) + 1 if self.rows else None
        )

    def _lr(self, step: int) -> float:
        """Set and return the learning rate of optimisation ``step`` (0-based, over the whole run)."""
        steps_per_epoch = math.ceil(len(self.train_data) / self.config.batch_size)
        lr = lr_at(
            self.config.lr_schedule, self.config.optimiser.lr, step, self.config.epochs * steps_per_epoch
        )
        for group in self.optimiser.param_groups:
            group["lr"] = lr
        return lr

    def _epoch(self, epoch: int) -> dict[str, Any]:
        started = time.perf_counter()
        lr = self._lr(epoch * math.ceil(len(self.train_data) / self.config.batch_size))  # the epoch's first
        train_loss, train_accuracy = self._train_epoch(epoch)
        val_loss, val_accuracy = self._evaluate(self.val_data) if self.val_data is not None else (None, None)
        return {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": lr,
            "seconds": round(time.perf_counter() - started, 3),
        }

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        self.model.train()
        data, world = self.train_data, self.world
        batches = torch.split(epoch_order(len(data), self.config.seed, epoch), self.config.batch_size)
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        for done, batch in enumerate(batches, start=1):
            self._lr(epoch * len(batches) + done - 1)
            share = distributed.rank_share(batch, world)
            # every rank must run forward/backward; a rank without samples contributes zero loss
            scale = world.world_size / max(
                float(target_weight(data.labels[batch], self.host_class_weights)), 1e-12
            )
            if share.numel() == 0:
                share, scale = batch[:1], 0.0
            x, mask, labels = data.batch(share, self.device)
            x, mask = augment(x, mask, self.config.augment, self.config.seed, epoch, done, len(batch), world)
            with self._autocast():
                logits = self.model(x, mask)
            terms = loss_terms(logits, labels, self.class_weights)
            self.optimiser.zero_grad(set_to_none=True)
            self.scaler.scale(terms[0].float() * scale).backward()
            self._step()
            if scale:
                totals += terms.detach()
            if self.progress is not None:
                self.progress("train", done, len(batches), epoch=epoch + 1, loss=float(totals[0] / totals[1]))
        totals = distributed.all_sum(totals, world)
        return float(totals[0] / totals[1]), float(totals[2] / totals[3])

    def _step(self) -> None:
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimiser)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.config.clip_grad_norm)
        self.scaler.step(self.optimiser)
        self.scaler.update()

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def _evaluate(self, data: SplitTensors) -> tuple[float, float]:
        """Mean loss and accuracy over ``data``, each rank taking a share (reduced over ranks)."""
        self.module.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        share = distributed.rank_share(torch.arange(len(data)), self.world)
        for batch in torch.split(share, self.config.batch_size):
            x, mask, labels = data.batch(batch, self.device)
            with self._autocast():
                logits = self.module(x, mask)
            totals += loss_terms(logits, labels, self.class_weights)
        totals = distributed.all_sum(totals, self.world)
        return float(totals[0] / totals[1]), float(totals[2] / totals[3])

    # ---- bookkeeping ------------------------------------------------------------------------
    def _record(self, row: dict[str, Any], writer: Any) -> None:
        """Select, stop early, then write log, TensorBoard, model and checkpoint (rank 0)."""
        self.rows.append(row)
        loss = row["val_loss"] if row["val_loss"] is not None else row["train_loss"]
        improved = loss < self.best_loss or self.refit
        if improved:
            self.best_epoch, self.best_loss = row["epoch"], loss
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        patience = self.config.early_stopping.patience
        losses = [r["val_loss"] if r["val_loss"] is not None else r["train_loss"] for r in self.rows]
        stale = stale_epochs(losses, self.config.early_stopping.min_delta)
        # stopped early: epochs were left to run (patience running out in the last one stops nothing)
        if patience is not None and stale >= patience and len(self.rows) < self.config.epochs:
            self.stopped_early = True
        if not self.world.is_main:
            return
        write_csv_atomic(
            self.out / "log.csv", [{k: ("" if v is None else v) for k, v in r.items()} for r in self.rows]
        )
        self._write_scalars(writer, row)
        if improved:
            self._save_model()
        save_atomic(self._checkpoint(), self.out / CHECKPOINT)
        if self.progress is not None:
            self.progress("epoch", row["epoch"], self.config.epochs, **row)

    @staticmethod
    def _write_scalars(writer: Any, row: dict[str, Any]) -> None:
        for name in ("loss", "accuracy"):
            for split in ("train", "val"):
                if row[f"{split}_{name}"] is not None:
                    writer.add_scalar(f"{name}/{split}", row[f"{split}_{name}"], row["epoch"])
        writer.add_scalar("lr", row["lr"], row["epoch"])
        writer.flush()

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "config": self._comparable_config(),
            "dataset": str(self.reader.path),
            "dataset_fingerprint": self.reader.fingerprint,
            "architecture": self.architecture.to_dict(),
            "normalisation": self.normalisation.to_dict(),
            "init_from": self.init_info,
            "model": self.module.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rows": self.rows,
            "best_epoch": self.best_epoch,
            "best_loss": self.best_loss,
            "best_model": self.best_state,
            "stopped_early": self.stopped_early,
            "notes": self.notes,
            "rng": _rng_state(),
        }

    def _save_model(self) -> None:
        from cropstar.model.artifact import card_for_dataset, save_artifact

        if self.best_state is None:
            raise DataError(
                f"training diverged: the loss was not finite in any of the {len(self.rows)} epochs"
            )
        best = self.rows[self.best_epoch - 1]
        training = {
            "dataset": str(self.reader.path.resolve()),
            "config": self.config.model_dump(mode="json"),
            "seed": self.config.seed,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.rows),
            "stopped_early": self.stopped_early,
            "selected_by": "last epoch (refit)"
            if self.refit
            else "val_loss"
            if self.val_data is not None
            else "train_loss",
            "world_size": self.world.world_size,
            "device": str(self.device),
            "device_name": describe_device(self.device),
            "init_from": self.init_info,
            "notes": self.notes,
        }
        metrics = {k: best[k] for k in LOG_COLUMNS[:5]}
        card = card_for_dataset(
            self.reader,
            self.architecture,
            normalisation=self.normalisation,
            training=training,
            metrics=metrics,
        )
        model = build_classifier(self.architecture)
        model.load_state_dict(self.best_state)
        save_artifact(self.out / "model", model, card)


def _changed_keys(old: dict[str, Any], new: dict[str, Any], default: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ; a key the ``old`` settings lack (a setting added to
    cropstar since) counts as changed only where the ``new`` value is not its ``default``."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b, d = old.get(key), new.get(key), default.get(key) if isinstance(default, dict) else None
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, d if isinstance(d, dict) else {}, f"{prefix}{key}.")
        elif key not in old and b == d:
            continue
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values
