"""Whitespace-normalised exact match of code as an `evaluate` metric."""

import datasets
import evaluate

from codefusion_hf.metrics import exact_match


class CodeExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of predictions equal to the reference after collapsing runs of whitespace.",
            citation="",
            inputs_description="predictions: list of code strings; references: list of code strings.",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        return {"exact_match": sum(map(exact_match, predictions, references)) / len(references)}
