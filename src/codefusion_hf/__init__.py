"""CodeFusion (Singh et al., EMNLP 2023) as Hugging Face components.

The names below are imported on first use (PEP 562), as transformers and diffusers import theirs, so that
`codefusion --help` and the metrics (`codefusion_hf.metrics`, the shipped `evaluate` modules) do not load torch and
diffusers. Importing `CodeFusionConfig` registers it with `AutoConfig`; importing `CodeFusionModel` (or anything that
uses it, such as the pipeline) registers it with `AutoModel`.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module of this package that defines it.
_EXPORTS = {
    "CodeFusionConfig": "configuration_codefusion",
    "CodeFusionModel": "modeling_codefusion",
    "CodeFusionModelOutput": "modeling_codefusion",
    "CodeFusionPipeline": "pipeline_codefusion",
    "CodeFusionPipelineOutput": "pipeline_output_codefusion",
    "CodeFusionRetriever": "retrieval_codefusion",
    "CodeFusionCommitScheduler": "scheduling_codefusion_commit",
    "CodeFusionCommitSchedulerOutput": "scheduling_codefusion_commit",
    "CodeFusionScheduler": "scheduling_codefusion",
    "SamplingOptions": "sampling_options_codefusion",
    "CodeFusionSchedulerOutput": "scheduling_codefusion",
    "create_model_card": "modelcard_codefusion",
    "train_code_tokenizer": "tokenization_codefusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; `X as X` marks a re-export
    from .configuration_codefusion import CodeFusionConfig as CodeFusionConfig
    from .modelcard_codefusion import create_model_card as create_model_card
    from .modeling_codefusion import CodeFusionModel as CodeFusionModel
    from .modeling_codefusion import CodeFusionModelOutput as CodeFusionModelOutput
    from .pipeline_codefusion import CodeFusionPipeline as CodeFusionPipeline
    from .pipeline_output_codefusion import CodeFusionPipelineOutput as CodeFusionPipelineOutput
    from .retrieval_codefusion import CodeFusionRetriever as CodeFusionRetriever
    from .sampling_options_codefusion import SamplingOptions as SamplingOptions
    from .scheduling_codefusion import CodeFusionScheduler as CodeFusionScheduler
    from .scheduling_codefusion import CodeFusionSchedulerOutput as CodeFusionSchedulerOutput
    from .scheduling_codefusion_commit import CodeFusionCommitScheduler as CodeFusionCommitScheduler
    from .scheduling_codefusion_commit import CodeFusionCommitSchedulerOutput as CodeFusionCommitSchedulerOutput
    from .tokenization_codefusion import train_code_tokenizer as train_code_tokenizer
