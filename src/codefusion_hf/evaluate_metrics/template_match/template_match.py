"""NL2Bash template match as an `evaluate` metric: `evaluate.load(codefusion_hf.metric_path("template_match"))`."""

import datasets
import evaluate

from codefusion_hf.metrics import template_match


class TemplateMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of Bash predictions whose utilities, flags and structure equal the reference's "
            "(arguments abstracted), as in NL2Bash and CodeFusion.",
            citation="Lin et al., NL2Bash, LREC 2018; Singh et al., CodeFusion, EMNLP 2023.",
            inputs_description="predictions: list of Bash commands; references: list of Bash commands.",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        return {"template_match": sum(map(template_match, predictions, references)) / len(references)}
