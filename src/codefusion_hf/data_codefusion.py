"""Training data for CodeFusion: loading (prompt, code) files, tokenizing them onto the canvas, CPD masking of
identifiers and keywords, and the collators of both training phases."""

import csv
import io
import json
import os
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bashlex
import torch
import torch.nn.functional as F
from datasets import Array2D, Dataset, load_dataset
from datasets.exceptions import DatasetGenerationError
from datasets.fingerprint import Hasher
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

logger = logging.get_logger(__name__)

DATA_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# The column of a frozen encoder's cached prompt states (see `add_encoder_states`), and the model input it feeds.
ENCODER_STATES_COLUMN = "encoder_last_hidden_state"
NEIGHBORS_COLUMN = "neighbor_code_ids"


def load_code_dataset(
    data: str,
    split: str = "train",
    prompt_column: str | None = "prompt",
    code_column: str = "code",
    max_samples: int | None = None,
) -> Dataset:
    """Load (prompt, code) rows, or code-only rows with `prompt_column=None`, from a local JSON Lines / CSV / Parquet
    file or a Hub dataset id. Columns are renamed to `prompt` / `code`; rows whose values are not non-empty strings
    are dropped and counted. `max_samples` keeps only the first N usable rows."""
    columns = {code_column: "code"} | ({prompt_column: "prompt"} if prompt_column else {})
    suffix = Path(data).suffix.lower()
    if os.path.isfile(data):
        if suffix not in DATA_FORMATS:
            raise ValueError(f"{data}: unsupported file type {suffix!r}; use one of {sorted(DATA_FORMATS)}.")
        dataset = read_data_file(data, suffix, list(columns))
    elif suffix in DATA_FORMATS:
        raise ValueError(f"Data file {data} does not exist.")
    else:
        dataset = load_dataset(data, split=split)

    for column in columns:
        if column not in dataset.column_names:
            raise ValueError(f"{data} has no column {column!r}; its columns are {dataset.column_names}.")
    dataset = dataset.select_columns(list(columns)).rename_columns({k: v for k, v in columns.items() if k != v})
    total = len(dataset)
    dataset = dataset.filter(lambda row: all(isinstance(row[c], str) and row[c].strip() for c in columns.values()))
    if len(dataset) < total:
        logger.warning(
            f"{data}: skipped {total - len(dataset)} of {total} rows whose prompt or code is not a non-empty string."
        )
    if len(dataset) == 0:
        raise ValueError(f"{data} has no usable rows (need non-empty strings in {list(columns)}).")
    return dataset.select(range(min(max_samples, len(dataset)))) if max_samples else dataset


def read_data_file(path: str, suffix: str, columns: list[str]) -> Dataset:
    """A local data file as a `datasets` table; an empty or malformed file fails naming the file, the `columns` it
    should hold and, for JSON Lines and CSV, the first bad line, instead of with the builder's generic error. A CSV
    row with more fields than the header is refused up front: the builder would take its extra fields as an index
    and read the wrong ones as the columns."""
    try:
        ragged = first_ragged_csv_line(path) if suffix == ".csv" else None
        if ragged is not None:
            raise ValueError(ragged)
        return load_dataset(DATA_FORMATS[suffix], data_files=path, split="train")
    except (DatasetGenerationError, ValueError, StopIteration) as error:
        # A file of zero bytes: the JSON builder's schema inference calls next() on no batches at all.
        with open(path, "rb") as f:
            if not any(line.strip() for line in f):
                raise ValueError(f"{path} is empty: it holds no rows.") from None
        cause = str(error.__cause__ or error).rstrip(". \n")
        if suffix == ".jsonl":
            cause = first_invalid_json_line(path) or cause
        raise ValueError(
            f"{path} could not be read as {suffix[1:]}: {cause}. Its rows need the columns {columns}."
        ) from None


def first_invalid_json_line(path: str) -> str | None:
    """Where a JSON Lines file stops being JSON Lines, in words, or None; also a file of empty objects (`{}`), which
    has rows but no columns."""
    has_columns = False
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        return f"line {number} is not valid JSON ({error.msg}, column {error.colno})"
                    if not isinstance(row, dict):
                        return f"line {number} is a JSON {type(row).__name__}, not an object of columns"
                    has_columns = has_columns or bool(row)
    except UnicodeDecodeError as error:
        return f"it is not UTF-8 text (byte {error.start} of the file)"
    return None if has_columns else "every line is an empty object ({}), with no columns"


def first_ragged_csv_line(path: str) -> str | None:
    """The first CSV row whose number of fields is not the header's, in words, or None (blank lines are skipped, as
    the builder skips them)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            for row in reader:
                if row and len(row) != len(header):
                    return (
                        f"line {reader.line_num} has {len(row)} fields but the header {header} has {len(header)}; "
                        "quote fields that hold commas"
                    )
    except UnicodeDecodeError as error:
        return f"it is not UTF-8 text (byte {error.start} of the file)"
    except csv.Error as error:
        return f"line {reader.line_num} is not valid CSV ({error})"
    return None


def tokenize_dataset(
    dataset: Dataset,
    code_tokenizer: PreTrainedTokenizerBase,
    max_code_length: int,
    prompt_tokenizer: PreTrainedTokenizerBase | None = None,
    max_prompt_length: int | None = None,
) -> Dataset:
    """Add `labels` (code ids, truncated to the canvas) and, when the rows have prompts, `input_ids` /
    `attention_mask` (the prompt, tokenized by `prompt_tokenizer`). Truncated code is counted and reported once."""
    if "prompt" in dataset.column_names and prompt_tokenizer is None:
        raise ValueError("The dataset has a 'prompt' column: pass prompt_tokenizer (the prompt encoder's tokenizer).")

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        labels = code_tokenizer(batch["code"], add_special_tokens=False)["input_ids"]
        features = {
            "labels": [ids[:max_code_length] for ids in labels],
            "code_truncated": [len(ids) > max_code_length for ids in labels],
        }
        if "prompt" in batch:
            prompts = prompt_tokenizer(batch["prompt"], truncation=True, max_length=max_prompt_length)
            features |= {"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"]}
        return features

    dataset = dataset.map(tokenize, batched=True, desc="Tokenizing")
    truncated = sum(dataset["code_truncated"])
    if truncated:
        logger.warning(
            f"{truncated} of {len(dataset)} code snippets are longer than the {max_code_length}-token canvas and were "
            "truncated (raise max_code_length to keep them whole)."
        )
    return dataset.remove_columns("code_truncated")


def add_neighbors(
    dataset: Dataset,
    retriever: Any,
    num_neighbors: int,
    code_tokenizer: PreTrainedTokenizerBase,
    max_code_length: int,
    leave_one_out: bool,
    batch_size: int = 256,
    pipeline: Any = None,
) -> Dataset:
    """Add `neighbor_code_ids`, the code token ids (truncated to the canvas) of each row's `num_neighbors` nearest
    pairs in the corpus of `retriever` (a [`CodeFusionRetriever`]; in dense mode `pipeline` encodes the prompts), for
    a retrieval-augmented model (`config.num_neighbors`). With `leave_one_out`, for a dataset drawn from that corpus
    (the training data), a row never reads a pair with its own prompt, so never its own target (REDCODER's
    leave-one-out)."""
    if "prompt" not in dataset.column_names:
        raise ValueError("add_neighbors retrieves by prompt: the dataset has no 'prompt' column.")
    rows = []
    for start in range(0, len(dataset), batch_size):
        prompts = dataset[start : start + batch_size]["prompt"]
        exclude = prompts if leave_one_out else None
        found = retriever.retrieve(prompts, num_neighbors, exclude=exclude, pipeline=pipeline)
        rows += tokenize_neighbors(found, code_tokenizer, max_code_length)
    return dataset.add_column(NEIGHBORS_COLUMN, rows)


def tokenize_neighbors(
    neighbors: list[list[Any]], code_tokenizer: PreTrainedTokenizerBase, max_code_length: int
) -> list[list[list[int]]]:
    """The code token ids of each prompt's retrieved neighbours (each with a `code`), truncated to the canvas."""
    codes = [neighbor.code for row in neighbors for neighbor in row]
    ids = iter(ids[:max_code_length] for ids in code_tokenizer(codes, add_special_tokens=False)["input_ids"])
    return [[next(ids) for _ in row] for row in neighbors]


def pad_neighbors(neighbors: list[list[list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Each row's neighbours' code ids padded with `pad_token_id` to `(rows, k, longest)`, with the mask of their
    tokens: the model's `neighbor_code_ids` and `neighbor_attention_mask`."""
    k = max(len(row) for row in neighbors)
    longest = max(1, max((len(ids) for row in neighbors for ids in row), default=0))
    code_ids = torch.full((len(neighbors), k, longest), pad_token_id)
    mask = torch.zeros(len(neighbors), k, longest, dtype=torch.long)
    for i, row in enumerate(neighbors):
        for j, ids in enumerate(row):
            code_ids[i, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, j, : len(ids)] = 1
    return {"neighbor_code_ids": code_ids, "neighbor_attention_mask": mask}


def add_encoder_states(
    dataset: Dataset,
    encoder: PreTrainedModel,
    prompt_tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 64,
    autocast_dtype: torch.dtype | None = None,
) -> Dataset:
    """Add `encoder_last_hidden_state`, the frozen prompt encoder's output for each row's `input_ids` (float32, one
    `(prompt_length, hidden_size)` array per row), so that training runs the encoder once per dataset instead of at
    every step, as diffusers' DreamBooth and SDXL scripts precompute text embeddings. The encoder runs in eval mode,
    as a frozen encoder trains (no dropout), so the states are the ones training would compute. The result is
    cached by `datasets` under a fingerprint of the dataset and the encoder's weights, and returned in torch format
    for that column."""
    device = next(encoder.parameters()).device
    weights = sum(parameter.double().sum().item() for parameter in encoder.parameters())
    fingerprint = Hasher.hash([dataset._fingerprint, encoder.config.to_dict(), weights, str(autocast_dtype)])
    features = dataset.features.copy()
    features[ENCODER_STATES_COLUMN] = Array2D((None, encoder.config.hidden_size), "float32")
    pads_left = prompt_tokenizer.padding_side == "left"

    def encode(batch: dict[str, list]) -> dict[str, list]:
        # A prompt repeated in the batch is encoded once (distilled data gives every prompt two targets, next to each
        # other), and prompts of similar length share an encoder batch, so little of it is padding.
        prompts = [(tuple(ids), tuple(mask)) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        first_row = {}
        for i, prompt in enumerate(prompts):
            first_row.setdefault(prompt, i)
        lengths = [len(ids) for ids in batch["input_ids"]]
        order = sorted(first_row.values(), key=lengths.__getitem__)
        states = {}
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            padded = prompt_tokenizer.pad(
                [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i]} for i in rows],
                return_tensors="pt",
            ).to(device)
            with (
                torch.inference_mode(),
                torch.autocast(device.type, autocast_dtype, enabled=autocast_dtype is not None),
            ):
                encoded = encoder(**padded).last_hidden_state.float().cpu().numpy()
            for i, state in zip(rows, encoded):
                states[i] = state[-lengths[i] :] if pads_left else state[: lengths[i]]
        return {ENCODER_STATES_COLUMN: [states[first_row[prompt]] for prompt in prompts]}

    was_training = encoder.training
    encoder.eval()
    try:
        dataset = dataset.map(
            encode,
            batched=True,
            batch_size=16 * batch_size,
            features=features,
            new_fingerprint=fingerprint,
            desc="Encoding prompts",
        )
    finally:
        encoder.train(was_training)
    return dataset.with_format("torch", columns=[ENCODER_STATES_COLUMN], output_all_columns=True)


def mask_spans(code: str, language: str) -> list[tuple[int, int]]:
    """Character spans of the identifiers and built-in keywords of `code`, the units CPD pre-training masks.

    Python: NAME tokens of `tokenize` (identifiers and keywords). Bash: the words `bashlex` finds (utilities, flags,
    arguments). Other languages, or code that does not parse: identifier-like words."""
    if language == "python":
        try:
            lines = code.splitlines(keepends=True)
            starts = [0]
            for line in lines:
                starts.append(starts[-1] + len(line))
            spans = []
            for token in tokenize.generate_tokens(io.StringIO(code).readline):
                if token.type == tokenize.NAME:  # identifiers and keywords alike
                    (row, col), (end_row, end_col) = token.start, token.end
                    spans.append((starts[row - 1] + col, starts[end_row - 1] + end_col))
            return spans
        except (tokenize.TokenError, IndentationError, SyntaxError):
            pass
    elif language == "bash":
        try:
            spans = []

            class WordVisitor(bashlex.ast.nodevisitor):
                def visitword(self, node, word):
                    spans.append(tuple(node.pos))

            for tree in bashlex.parse(code):
                WordVisitor().visit(tree)
            return sorted(set(spans))
        except Exception:  # bashlex raises many error types on unsupported syntax
            pass
    return [match.span() for match in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", code)]


def mask_code(code: str, language: str, mask_rate: float, mask_token: str, generator: torch.Generator) -> str:
    """Replace each identifier/keyword span of `code` by `mask_token` with probability `mask_rate`."""
    pieces, last = [], 0
    for start, end in mask_spans(code, language):
        if start < last:  # nested spans (e.g. a word inside a substitution): keep the outer decision
            continue
        if torch.rand((), generator=generator).item() < mask_rate:
            pieces += [code[last:start], mask_token]
            last = end
    return "".join(pieces) + code[last:]


@dataclass
class CodeFusionDataCollator:
    """Pads prompts with the prompt tokenizer and code with `<pad>` (the model pads code to the full canvas). Rows
    with cached encoder states (`add_encoder_states`) give those, padded as the prompts, instead of `input_ids`."""

    prompt_tokenizer: PreTrainedTokenizerBase
    pad_token_id: int

    def pad_labels(self, features: list[dict[str, Any]]) -> torch.Tensor:
        longest = max(len(f["labels"]) for f in features)
        return torch.tensor([f["labels"] + [self.pad_token_id] * (longest - len(f["labels"])) for f in features])

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = self.prompt_tokenizer.pad(
            [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features],
            return_tensors="pt",
        )
        batch = {"attention_mask": prompts["attention_mask"], "labels": self.pad_labels(features)}
        if NEIGHBORS_COLUMN in features[0]:
            batch |= pad_neighbors([f[NEIGHBORS_COLUMN] for f in features], self.pad_token_id)
        if ENCODER_STATES_COLUMN not in features[0]:
            return batch | {"input_ids": prompts["input_ids"]}
        length = prompts["input_ids"].shape[1]
        pads_left = self.prompt_tokenizer.padding_side == "left"
        states = [
            F.pad(state, (0, 0, length - len(state), 0) if pads_left else (0, 0, 0, length - len(state)))
            for state in (f[ENCODER_STATES_COLUMN] for f in features)
        ]
        return batch | {ENCODER_STATES_COLUMN: torch.stack(states)}


@dataclass
class CodeFusionPretrainingCollator(CodeFusionDataCollator):
    """Phase 1 batches: every row gets a task, unconditional generation (`unconditional=True`) or CPD, whose encoder
    input is the snippet with identifiers and keywords masked (fresh masks every time a row is drawn)."""

    language: str = "bash"
    mask_rate: float = 0.3
    unconditional_probability: float = 0.5
    max_prompt_length: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.prompt_tokenizer.mask_token is None:
            raise ValueError("prompt_tokenizer has no mask_token: CPD pre-training needs one to mask code.")
        self.generator = torch.Generator().manual_seed(self.seed)
        self.worker_seed = None

    def draw_generator(self) -> torch.Generator:
        """The generator of this process. A DataLoader worker holds a copy of the collator with the main process's
        generator state, so every worker, and every epoch, would repeat the same masks and tasks: a worker reseeds
        from its own seed (different per worker and per epoch) before its first batch."""
        worker = torch.utils.data.get_worker_info()
        if worker is not None and self.worker_seed != worker.seed:
            self.generator.manual_seed(worker.seed)
            self.worker_seed = worker.seed
        return self.generator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        generator = self.draw_generator()
        masked = [
            mask_code(f["code"], self.language, self.mask_rate, self.prompt_tokenizer.mask_token, generator)
            for f in features
        ]
        prompts = self.prompt_tokenizer(
            masked, padding=True, truncation=True, max_length=self.max_prompt_length, return_tensors="pt"
        )
        unconditional = torch.rand(len(features), generator=generator) < self.unconditional_probability
        return {
            "input_ids": prompts["input_ids"],
            "attention_mask": prompts["attention_mask"],
            "labels": self.pad_labels(features),
            "unconditional": unconditional,
        }


__all__ = [
    "ENCODER_STATES_COLUMN",
    "CodeFusionDataCollator",
    "CodeFusionPretrainingCollator",
    "add_encoder_states",
    "load_code_dataset",
    "mask_code",
    "mask_spans",
    "tokenize_dataset",
]
