"""Regenerate docs/img/layer_gradients_mnist.png: the paper's Fig. 3 on real pixel MNIST.

12-layer classifiers of each cell, per-layer gradient norms at initialisation and over the first
training steps (Adam 1e-3, batch 100, chrono initialisation, prediction from the final state), with `track_layer_gradients`.
Scaled for a 2-core CPU: images averaged to 14×14 (196 steps), 32 hidden units, 60 steps.

    python docs/scripts/layer_gradients_mnist.py ../shared/data/mnist docs/img/layer_gradients_mnist.png
    python docs/scripts/layer_gradients_mnist.py ../shared/data/mnist docs/img/layer_gradients_mnist_zero_bias.png zero

The optional third argument is the gate-bias initialisation (chrono, the paper's, or zero).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from cropstar.analysis import track_layer_gradients
from cropstar.analysis.plots import plot_layer_gradients
from cropstar.nn import FinalStateHead, SequenceClassifier, make_rnn
from cropstar.validate.mnist import load_mnist, pixel_sequences

CELLS = ("star", "lstm", "lstm_wf", "gru", "vrnn", "rhn")
LAYERS, HIDDEN, STEPS, BATCH, DOWNSAMPLE = 12, 32, 60, 100, 2


def main(mnist_root: Path, out: Path, bias_init: str = "chrono") -> None:
    split = load_mnist(mnist_root, "train")
    x = pixel_sequences(split.images[: STEPS * BATCH], downsample=DOWNSAMPLE)
    y = torch.from_numpy(split.labels[: STEPS * BATCH])
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    traces = {}
    for cell in tqdm(CELLS, desc="cells"):
        torch.manual_seed(0)
        rnn = make_rnn(cell, 1, HIDDEN, LAYERS, t_max=x.shape[1], bias_init=bias_init)
        model = SequenceClassifier(rnn, FinalStateHead(HIDDEN, 10))
        traces[cell] = track_layer_gradients(model, batches, STEPS)
    plot_layer_gradients(traces, out)
    summary = {c: {"at_init": t.at_init.tolist(), "loss_first": float(t.loss[0]), "loss_last": float(t.loss[-1])}
               for c, t in traces.items()}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
