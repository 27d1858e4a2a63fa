"""Retrieval of the training pairs nearest a prompt: BM25 over the prompts' words (bm25s), or the prompt encoder's
pooled states in a FAISS index (datasets), as a pipeline component saved and loaded with the pipeline."""

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import datasets
import numpy as np
import torch
from datasets import Dataset
from diffusers import DiffusionPipeline
from huggingface_hub import snapshot_download

# diffusers' loader looks a component's base class up in its module, among its LOADABLE_CLASSES.
from transformers import FeatureExtractionMixin

from .hub_codefusion import check_readable
from .tokenization_codefusion import vocabulary_sha256

RETRIEVAL_MODES = ("bm25", "dense")
CONFIG_NAME = "retriever_config.json"
CORPUS_FOLDER = "corpus"
BM25_FOLDER = "bm25"
# The files bm25s writes for its default (Lucene) scoring, and the FAISS index of dense mode.
BM25_FILES = ("params.index.json", "vocab.index.json", "data.csc.index.npy", "indices.csc.index.npy")
BM25_FILES += ("indptr.csc.index.npy",)
FAISS_FILE = "embeddings.faiss"
INDEX_NAME = "embeddings"
# English stopwords are dropped from prompts before BM25 scoring (bm25s' list).
BM25_STOPWORDS = "en"
# Weights compared by the dense fingerprint: this many evenly spaced values of each floating-point encoder tensor.
SAMPLES_PER_TENSOR = 8
# A cast to bf16 or fp16 keeps a weight within this tolerance; another or a retrained encoder does not.
WEIGHT_RTOL, WEIGHT_ATOL = 1e-2, 1e-3


class Neighbour(NamedTuple):
    """One retrieved corpus pair: its prompt and code, the retriever's score (BM25, or the cosine similarity of the
    pooled prompt encodings; higher is nearer) and its row in the corpus."""

    prompt: str
    code: str
    score: float
    row: int


class CodeFusionRetriever(FeatureExtractionMixin):
    r"""
    The prompt/code pairs of a corpus nearest each prompt: `mode="bm25"` scores the words of the corpus prompts with
    BM25 (the `bm25s` library); `mode="dense"` compares the pipeline's prompt encoder's mean-pooled states (cosine
    similarity, exact search in a `datasets` FAISS index). Build one with [`~CodeFusionRetriever.from_dataset`];
    as the optional `retriever` component of [`CodeFusionPipeline`] it is saved, loaded and pushed with the pipeline
    (`pipe.retriever = None` leaves it out).

    Why `FeatureExtractionMixin`: diffusers saves and loads a pipeline component only when its class derives from
    one of the base classes its loader knows (`LOADABLE_CLASSES`: diffusers' `ModelMixin`, `SchedulerMixin`, ...,
    transformers' `PreTrainedTokenizer*`, `PreTrainedModel`, `FeatureExtractionMixin`, ...), looked up by name in the
    component's module. A `ConfigMixin` or `huggingface_hub.ModelHubMixin` subclass is left out of the saved folder
    ("cannot be saved"). `FeatureExtractionMixin` is the one of those that is not a `torch.nn.Module` (a `ModelMixin`
    without weights would take part in the pipeline's device and dtype moves) and whose loading gets no
    model-loading arguments: diffusers calls `save_pretrained(folder)` and `from_pretrained(folder)`, which this class
    defines itself. From the mixin it keeps `push_to_hub`.
    """

    def __init__(self, corpus: Dataset, mode: str, index: Any, config: dict[str, Any]):
        """Use [`~CodeFusionRetriever.from_dataset`] or [`~CodeFusionRetriever.from_pretrained`]: `corpus` holds the
        `prompt` and `code` columns, `index` is the bm25s index (BM25 mode; the FAISS index is attached to the corpus
        in dense mode) and `config` what `retriever_config.json` records."""
        super().__init__()
        self.corpus = corpus
        self.mode = mode
        self.index = index
        self.config = config
        self._rows_by_prompt: dict[str, list[int]] | None = None

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        mode: str = "bm25",
        prompt_column: str = "prompt",
        code_column: str = "code",
        pipeline: DiffusionPipeline | None = None,
        batch_size: int = 64,
    ) -> "CodeFusionRetriever":
        """Index the prompt/code pairs of `dataset` (any other column is dropped).

        Args:
            dataset: A `datasets.Dataset` with a prompt and a code column of strings.
            mode: `"bm25"` (sparse, over the prompts' words) or `"dense"` (the prompt encoder of `pipeline`).
            prompt_column, code_column: The columns of the prompts that are searched and of the code returned.
            pipeline: The pipeline whose prompt encoder and prompt tokenizer encode the corpus in dense mode; the
                pipeline that retrieves must have the same ones (checked at each retrieval).
            batch_size: Prompts encoded at a time in dense mode.
        """
        if mode not in RETRIEVAL_MODES:
            raise ValueError(f"mode must be one of {RETRIEVAL_MODES}, got {mode!r}.")
        if not isinstance(dataset, Dataset):
            raise ValueError(
                f"dataset must be a datasets.Dataset of prompt/code pairs, got a {type(dataset).__name__}."
            )
        missing = [column for column in (prompt_column, code_column) if column not in dataset.column_names]
        if missing:
            raise ValueError(
                f"The corpus has no column {' or '.join(map(repr, missing))} (it has {dataset.column_names}): pass "
                "prompt_column= and code_column= to name its prompt and code columns."
            )
        if len(dataset) == 0:
            raise ValueError("The corpus is empty: a retriever needs at least one prompt/code pair.")
        if mode == "dense" and pipeline is None:
            raise ValueError("mode='dense' encodes prompts with a pipeline's prompt encoder: pass pipeline=.")
        prompts, codes = dataset[prompt_column][:], dataset[code_column][:]  # lists: a Column iterates slowly
        for column, values in ((prompt_column, prompts), (code_column, codes)):
            bad = next((row for row, value in enumerate(values) if not isinstance(value, str)), None)
            if bad is not None:
                raise ValueError(
                    f"Column {column!r} must hold strings, but row {bad} is {values[bad]!r}: drop or fill such rows."
                )
        corpus = Dataset.from_dict({"prompt": prompts, "code": codes})
        config = {"mode": mode, "num_rows": len(corpus)}
        if mode == "bm25":
            import bm25s

            tokens = bm25_tokens(prompts)
            if not any(tokens):
                raise ValueError(
                    f"No prompt of the corpus has a word BM25 can score (words of two or more letters or digits, not "
                    f"English stopwords), e.g. {prompts[0]!r}: use mode='dense'."
                )
            index = bm25s.BM25()
            index.index(tokens, show_progress=False)
            config["bm25"] = {"stopwords": BM25_STOPWORDS}
            return cls(corpus, mode, index, config)
        import faiss

        embeddings = pooled_prompt_states(pipeline, prompts, batch_size)
        corpus.add_faiss_index_from_external_arrays(embeddings, INDEX_NAME, metric_type=faiss.METRIC_INNER_PRODUCT)
        config["encoder_fingerprint"] = encoder_fingerprint(pipeline)
        return cls(corpus, mode, None, config)

    @property
    def num_rows(self) -> int:
        return len(self.corpus)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, num_rows={self.num_rows})"

    def to_dict(self) -> dict[str, Any]:
        """What `retriever_config.json` records (the mixin's JSON and repr helpers read this)."""
        return dict(self.config)

    def retrieve(
        self,
        prompts: str | Sequence[str],
        k: int,
        exclude: Sequence[int | str | Iterable[int | str] | None] | None = None,
        pipeline: DiffusionPipeline | None = None,
        batch_size: int = 64,
    ) -> list[list[Neighbour]]:
        """Each prompt's `k` nearest corpus pairs, best first (ties by corpus row).

        Args:
            prompts: A prompt or a list of them.
            k: How many pairs per prompt, 1 to the corpus size (less the rows a prompt excludes).
            exclude: One entry per prompt of the corpus rows it must not see (leave-one-out retrieval): `None`, a
                row index, a prompt text (every row with exactly that prompt) or a collection of those. Training asks
                for the neighbours of corpus rows `rows` without themselves with
                `retrieve(retriever.corpus[rows]["prompt"], k, exclude=rows)`.
            pipeline: Dense mode: the pipeline whose prompt encoder encodes the prompts; it must be the encoder and
                tokenizer the corpus was encoded with.
            batch_size: Prompts encoded at a time in dense mode.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a whole number of at least 1, got {k!r}.")
        if k > self.num_rows:
            raise ValueError(f"k={k} is larger than the corpus, which has {self.num_rows} pairs.")
        excluded = self.excluded_rows(exclude, len(prompts))
        for index, rows in enumerate(excluded):
            if k > self.num_rows - len(rows):
                raise ValueError(
                    f"k={k} is larger than the corpus left to prompt {index} after excluding {len(rows)} of its "
                    f"{self.num_rows} pairs."
                )
        if not prompts:
            return []
        depth = min(self.num_rows, k + max(map(len, excluded)))
        scores, rows = self.search(prompts, depth, pipeline, batch_size)
        kept = []
        for prompt_scores, prompt_rows, skipped in zip(scores.tolist(), rows.tolist(), excluded):
            pairs = [(score, row) for score, row in zip(prompt_scores, prompt_rows) if row >= 0 and row not in skipped]
            kept.append(sorted(pairs, key=lambda pair: (-pair[0], pair[1]))[:k])
        found_rows = sorted({row for pairs in kept for _, row in pairs})
        found, position = self.corpus[found_rows], {row: i for i, row in enumerate(found_rows)}
        return [
            [Neighbour(found["prompt"][position[r]], found["code"][position[r]], score, r) for score, r in pairs]
            for pairs in kept
        ]

    def excluded_rows(self, exclude: Sequence | None, num_prompts: int) -> list[set[int]]:
        """The corpus rows each prompt leaves out, from `retrieve`'s `exclude`."""
        if exclude is None:
            return [set() for _ in range(num_prompts)]
        if isinstance(exclude, (str, int, np.integer)) or len(exclude) != num_prompts:
            raise ValueError(
                f"exclude must hold one entry per prompt ({num_prompts}): None, a corpus row, a prompt text or a "
                f"collection of those; got {exclude!r}."
            )
        excluded = []
        for entry in exclude:
            rows = set()
            single = isinstance(entry, (str, int, np.integer))
            entries = [] if entry is None else [entry] if single else list(entry)
            for item in entries:
                if isinstance(item, str):
                    rows.update(self.rows_by_prompt().get(item, ()))
                elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 0 <= item < self.num_rows:
                    rows.add(int(item))
                else:
                    raise ValueError(
                        f"exclude holds {item!r}: a corpus row (0 to {self.num_rows - 1}) or a prompt text is needed."
                    )
            excluded.append(rows)
        return excluded

    def rows_by_prompt(self) -> dict[str, list[int]]:
        """The corpus rows of each prompt text (built on first use)."""
        if self._rows_by_prompt is None:
            self._rows_by_prompt = {}
            for row, prompt in enumerate(self.corpus["prompt"][:]):
                self._rows_by_prompt.setdefault(prompt, []).append(row)
        return self._rows_by_prompt

    def search(
        self, prompts: list[str], depth: int, pipeline: DiffusionPipeline | None, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `depth` best (scores, corpus rows) of each prompt, `(len(prompts), depth)` arrays, excluding nothing."""
        if self.mode == "bm25":
            rows, scores = self.index.retrieve(bm25_tokens(prompts), k=depth, show_progress=False)
            return np.asarray(scores, dtype=np.float64), np.asarray(rows)
        self.check_pipeline(pipeline)
        queries = pooled_prompt_states(pipeline, prompts, batch_size)
        scores, rows = self.corpus.search_batch(INDEX_NAME, queries, k=depth)
        return np.asarray(scores, dtype=np.float64), np.asarray(rows)

    def check_pipeline(self, pipeline: DiffusionPipeline | None) -> None:
        """Dense mode: raise a `ValueError` unless `pipeline`'s prompt tokenizer has the vocabulary, and its prompt
        encoder the architecture and (within bf16 precision) the weights, of the one the corpus was encoded with."""
        if self.mode != "dense":
            return
        if pipeline is None:
            raise ValueError("A dense retriever encodes prompts with the pipeline's prompt encoder: pass pipeline=.")
        expected, found = self.config["encoder_fingerprint"], encoder_fingerprint(pipeline)
        if found["tokenizer_vocabulary_sha256"] != expected["tokenizer_vocabulary_sha256"]:
            differs = "prompt tokenizer"
        elif found["encoder_architecture_sha256"] != expected["encoder_architecture_sha256"] or not np.allclose(
            found["encoder_weight_samples"], expected["encoder_weight_samples"], rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL
        ):
            differs = "prompt encoder"
        else:
            return
        raise ValueError(
            f"The pipeline's {differs} is not the one this dense retriever was built with: rebuild it for this "
            "pipeline with CodeFusionRetriever.from_dataset(retriever.corpus, mode='dense', pipeline=pipe)."
        )

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Write `retriever_config.json`, the corpus (`corpus/`, as `datasets` saves it) and the index (`bm25/` as
        bm25s saves it, or `embeddings.faiss`) to `save_directory`; with `push_to_hub`, upload them (`repo_id`,
        `token`, ... go to `push_to_hub`)."""
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            kwargs.pop("max_shard_size", None)
            self.push_to_hub(repo_id, **kwargs)
            return
        os.makedirs(save_directory, exist_ok=True)
        # A copy without the attached FAISS index, which datasets does not save with a dataset.
        with no_progress_bars():
            Dataset(self.corpus.data, info=self.corpus.info).save_to_disk(os.path.join(save_directory, CORPUS_FOLDER))
        if self.mode == "bm25":
            self.index.save(os.path.join(save_directory, BM25_FOLDER), show_progress=False)
        else:
            self.corpus.save_faiss_index(INDEX_NAME, os.path.join(save_directory, FAISS_FILE))
        with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
            json.dump(self.config, f, indent=2)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "CodeFusionRetriever":
        """Load a retriever saved by [`save_pretrained`]: a folder, or a Hub repo id (`revision=`, `token=`,
        `cache_dir=` go to the download). A missing or unreadable file raises an `OSError` naming it."""
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            download = {key: kwargs[key] for key in ("revision", "token", "cache_dir") if key in kwargs}
            folder = snapshot_download(folder, **download)
        config_file = os.path.join(folder, CONFIG_NAME)
        if not os.path.isfile(config_file):
            raise OSError(f"{config_file} is missing: {folder} is not a saved CodeFusionRetriever.")
        check_readable(config_file)
        with open(config_file) as f:
            config = json.load(f)
        mode = config.get("mode")
        if mode not in RETRIEVAL_MODES:
            raise OSError(f"{config_file}: 'mode' must be one of {RETRIEVAL_MODES}, got {mode!r}.")
        index_files = [os.path.join(BM25_FOLDER, name) for name in BM25_FILES] if mode == "bm25" else [FAISS_FILE]
        for name in [os.path.join(CORPUS_FOLDER, "state.json"), *index_files]:
            if not os.path.isfile(os.path.join(folder, name)):
                raise OSError(f"{os.path.join(folder, name)} is missing: the {mode} retriever cannot be loaded.")
        corpus = load_corpus(os.path.join(folder, CORPUS_FOLDER))
        if len(corpus) != config.get("num_rows"):
            raise OSError(f"{config_file} says {config.get('num_rows')} rows, but the corpus has {len(corpus)}.")
        if mode == "bm25":
            import bm25s

            try:
                index = bm25s.BM25.load(os.path.join(folder, BM25_FOLDER), show_progress=False)
            except Exception as error:  # numpy or JSON parse errors of a damaged file
                raise OSError(f"{os.path.join(folder, BM25_FOLDER)} holds a damaged bm25s index: {error}") from None
            return cls(corpus, mode, index, config)
        faiss_file = os.path.join(folder, FAISS_FILE)
        try:
            corpus.load_faiss_index(INDEX_NAME, faiss_file)
        except Exception as error:  # faiss raises RuntimeError on a damaged file, datasets ValueError on a size
            raise OSError(f"{faiss_file} is not a FAISS index of the corpus: {error}") from None
        return cls(corpus, mode, None, config)


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """datasets' progress bars off for a save of a few seconds at most, then as they were."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def load_corpus(folder: str) -> Dataset:
    """The saved corpus; an `OSError` names a missing or unreadable file."""
    state_file = os.path.join(folder, "state.json")
    check_readable(state_file)
    with open(state_file) as f:
        data_files = [entry.get("filename") for entry in json.load(f).get("_data_files", [])]
    for name in data_files:
        if not os.path.isfile(os.path.join(folder, name or "")):
            raise OSError(f"{os.path.join(folder, name or '')} is missing: the retriever's corpus cannot be loaded.")
    try:
        corpus = Dataset.load_from_disk(folder)
    except Exception as error:  # arrow's errors on a damaged file
        raise OSError(f"{folder} holds a damaged corpus: {error}") from None
    if not {"prompt", "code"} <= set(corpus.column_names):
        raise OSError(f"{folder} holds a corpus without 'prompt' and 'code' columns ({corpus.column_names}).")
    return corpus


def bm25_tokens(texts: list[str]) -> list[list[str]]:
    """The words BM25 scores: lowercased runs of two or more word characters, English stopwords dropped."""
    import bm25s

    return bm25s.tokenize(texts, stopwords=BM25_STOPWORDS, return_ids=False, show_progress=False)


@torch.no_grad()
def pooled_prompt_states(pipeline: DiffusionPipeline, prompts: list[str], batch_size: int = 64) -> np.ndarray:
    """The L2-normalised mean (over the attention mask) of the pipeline's prompt encoder's last states, as float32
    `(len(prompts), hidden_size)`: prompts tokenized as the pipeline tokenizes them (truncated at
    `max_prompt_length`), encoded in eval mode, batched by length."""
    tokenizer = pipeline.prompt_tokenizer or pipeline.tokenizer
    encoder, max_length = pipeline.model.encoder, pipeline.model.config.max_prompt_length
    device = next(encoder.parameters()).device
    embeddings = np.zeros((len(prompts), encoder.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was_training = encoder.training
    encoder.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            rows = order[start : start + batch_size]
            inputs = tokenizer(
                [prompts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            states = encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(torch.float32)
            pooled = (states.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
            embeddings[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    finally:
        encoder.train(was_training)
    return embeddings


def encoder_fingerprint(pipeline: DiffusionPipeline) -> dict[str, Any]:
    """What identifies a pipeline's prompt encoder for dense retrieval: a sha256 of its tokenizer's vocabulary, one
    of the names and shapes of the encoder's tensors, and a few evenly spaced values of each floating-point tensor
    (compared within a tolerance, so that a cast to fp16 or bf16 keeps the encoder the same)."""
    architecture, samples = hashlib.sha256(), []
    for name, tensor in sorted(pipeline.model.encoder.state_dict().items()):
        architecture.update(f"{name}:{tuple(tensor.shape)};".encode())
        if tensor.is_floating_point() and tensor.numel():
            flat = tensor.detach().reshape(-1)
            positions = torch.linspace(0, flat.numel() - 1, SAMPLES_PER_TENSOR, device=flat.device).long()
            samples += flat[positions].float().cpu().tolist()
    return {
        "tokenizer_vocabulary_sha256": vocabulary_sha256(pipeline.prompt_tokenizer or pipeline.tokenizer),
        "encoder_architecture_sha256": architecture.hexdigest(),
        "encoder_weight_samples": samples,
    }


__all__ = ["CodeFusionRetriever", "Neighbour"]
