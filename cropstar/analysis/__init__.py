"""The paper's gradient analysis: lattice simulation, Jacobian probe, training-time gradient norms,
parameter / compute budget, and their figures."""

from cropstar.analysis.budget import Budget, budget_table, parameter_budget
from cropstar.analysis.jacobian import JacobianSpectrum, jacobian_singular_values
from cropstar.analysis.lattice import GradientSimulation, simulate_gradients
from cropstar.analysis.training_gradients import (
    LayerGradientTrace,
    layer_gradient_norms,
    track_layer_gradients,
)

__all__ = [
    "Budget",
    "GradientSimulation",
    "JacobianSpectrum",
    "LayerGradientTrace",
    "budget_table",
    "jacobian_singular_values",
    "layer_gradient_norms",
    "parameter_budget",
    "simulate_gradients",
    "track_layer_gradients",
]
