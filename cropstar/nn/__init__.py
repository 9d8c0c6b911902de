"""Recurrent cells of the paper, deep stacks, initialisers and classifier heads."""

from cropstar.nn.cell import RecurrentCell
from cropstar.nn.cells import GRUCell, LSTMCell, LSTMwfCell, RHNCell, STARCell, VRNNCell
from cropstar.nn.conv_cells import ConvLSTMCell, ConvLSTMwfCell, ConvSTARCell
from cropstar.nn.heads import FinalStateHead, PerSequenceHead, PerTimestepHead, SequenceClassifier
from cropstar.nn.stack import CELLS, DeepRNN, make_rnn

__all__ = [
    "CELLS",
    "ConvLSTMCell",
    "ConvLSTMwfCell",
    "ConvSTARCell",
    "DeepRNN",
    "FinalStateHead",
    "GRUCell",
    "LSTMCell",
    "LSTMwfCell",
    "PerSequenceHead",
    "PerTimestepHead",
    "RHNCell",
    "RecurrentCell",
    "STARCell",
    "SequenceClassifier",
    "VRNNCell",
    "make_rnn",
]
