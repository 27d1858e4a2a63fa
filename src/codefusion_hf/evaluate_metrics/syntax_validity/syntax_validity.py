"""Share of syntactically valid programs (Python, Bash or Excel CF rules) as an `evaluate` metric."""

import datasets
import evaluate

from codefusion_hf.metrics import is_valid_syntax


class SyntaxValidity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of predictions that parse: Python with ast, Bash with bashlex, Excel conditional "
            "formatting rules with the benchmark's rule grammar. Pass language='python' | 'bash' | 'excel'.",
            citation="",
            inputs_description="predictions: list of code strings; language: python, bash or excel.",
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, language="bash"):
        return {"syntax_validity": sum(is_valid_syntax(code, language) for code in predictions) / len(predictions)}
