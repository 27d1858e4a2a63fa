"""CodeFusion (Singh et al., EMNLP 2023) as Hugging Face components."""

from .configuration_codefusion import CodeFusionConfig
from .modelcard_codefusion import create_model_card
from .modeling_codefusion import CodeFusionModel, CodeFusionModelOutput
from .pipeline_codefusion import CodeFusionPipeline, CodeFusionPipelineOutput
from .scheduling_codefusion import CodeFusionScheduler, CodeFusionSchedulerOutput
from .tokenization_codefusion import train_code_tokenizer

__version__ = "0.1.0"

__all__ = [
    "CodeFusionConfig",
    "CodeFusionModel",
    "CodeFusionModelOutput",
    "CodeFusionPipeline",
    "CodeFusionPipelineOutput",
    "CodeFusionScheduler",
    "CodeFusionSchedulerOutput",
    "create_model_card",
    "train_code_tokenizer",
]
