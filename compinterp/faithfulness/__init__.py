"""Faithfulness: how far an explanation's squares are from commuting, per box and end to end."""

from compinterp.faithfulness.check import check, default_data, interchange
from compinterp.faithfulness.fit import FitResult, fit
from compinterp.faithfulness.report import BoxRow, FaithfulnessReport, Metrics
from compinterp import data

__all__ = ["BoxRow", "FaithfulnessReport", "FitResult", "Metrics", "check", "data", "default_data", "fit", "interchange"]
