"""The validation suites: the paper's depth experiments at smoke, CPU and full budgets."""

from cropstar.validate.budgets import BUDGETS, Budget, budget_for
from cropstar.validate.depth_sweep import RunResult, sweep, train_run
from cropstar.validate.report import accuracy_table, write_report
from cropstar.validate.suites import SUITES, SuiteData, load_suite

__all__ = [
    "BUDGETS",
    "SUITES",
    "Budget",
    "RunResult",
    "SuiteData",
    "accuracy_table",
    "budget_for",
    "load_suite",
    "sweep",
    "train_run",
    "write_report",
]
