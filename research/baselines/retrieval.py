"""The retrieval floor: return the code of the training prompts most similar (TF-IDF cosine) to each test prompt.

    python research/baselines/retrieval.py --train_file data/nl2bash/train.jsonl \
        --test_file data/nl2bash/validation.jsonl --output_dir runs/retrieval/nl2bash-validation

Writes predictions.jsonl (prompt, reference, ranked candidates, scores) and metrics.json. No training.
"""

import json
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from transformers import HfArgumentParser

from codefusion_hf.constants import LANGUAGE_HELP
from codefusion_hf.data_codefusion import load_code_dataset
from codefusion_hf.evaluation_codefusion import score_candidates, write_evaluation


@dataclass
class RetrievalArguments:
    train_file: str = field(metadata={"help": "Rows whose prompts are searched and whose code is returned."})
    test_file: str = field(metadata={"help": "Rows to answer."})
    output_dir: str = field(metadata={"help": "Where predictions.jsonl and metrics.json go."})
    num_candidates: int = field(default=5, metadata={"help": "Distinct code candidates per prompt."})
    language: str = field(default="bash", metadata={"help": LANGUAGE_HELP})


def tfidf_similarities(corpus_prompts: list[str], query_prompts: list[str]) -> np.ndarray:
    """The TF-IDF cosine similarity (word unigrams and bigrams, sublinear term frequency, fitted on the corpus) of
    each query prompt to each corpus prompt, `(len(query_prompts), len(corpus_prompts))`."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    corpus_vectors = vectorizer.fit_transform(corpus_prompts)
    return (vectorizer.transform(query_prompts) @ corpus_vectors.T).toarray()


def main():
    (args,) = HfArgumentParser(RetrievalArguments).parse_args_into_dataclasses()
    train, test = load_code_dataset(args.train_file), load_code_dataset(args.test_file)
    start = time.perf_counter()
    similarities = tfidf_similarities(train["prompt"], test["prompt"])
    candidates, scores = [], []
    for row in similarities:
        codes, code_scores = [], []
        for index in row.argsort()[::-1]:
            if train[int(index)]["code"] not in codes:
                codes.append(train[int(index)]["code"])
                code_scores.append(float(row[index]))
            if len(codes) == args.num_candidates:
                break
        candidates.append(codes)
        scores.append(code_scores)
    seconds = time.perf_counter() - start

    metrics = score_candidates(candidates, test["code"], args.language) | {"seconds_per_prompt": seconds / len(test)}
    write_evaluation(args.output_dir, test["prompt"], test["code"], candidates, scores, metrics)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
