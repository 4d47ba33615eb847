"""The Ray Data jobs, one module each, and what they share:

- extract.py:  utterances table -> features table
- predict.py:  features (or utterances) table + checkpoint -> predictions
- stages.py:   the pipelines' own stages (read a task, score a task, the streaming scorer)
- wiring.py:   actor pools sized from the cluster, stage chains, compaction
"""

from .extract import ExtractOptions, ExtractSummary, extract
from .predict import PredictSummary, predict_job

__all__ = ["ExtractOptions", "ExtractSummary", "PredictSummary", "extract", "predict_job"]
