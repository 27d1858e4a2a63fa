"""CodeFusionRetriever: the nearest pairs of a corpus in both modes, leave-one-out exclusion, saved, loaded and pushed
with the pipeline (and left out with `pipe.retriever = None`), and a ValueError naming each bad input."""

import copy
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PAIRS, TOKEN, USER, make_code_tokenizer, make_pipeline, seeded, tiny_config
from datasets import Dataset

from codefusion_hf import CodeFusionModel, CodeFusionPipeline, CodeFusionRetriever
from codefusion_hf.hub_codefusion import check_pipeline_folder

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_pipeline"
MODES = ["bm25", "dense"]
# Each pair's prompt reworded a little, in PAIRS' order.
NEAR_VERBATIM = ["list all the files", "show the disk usage", "find the python files", "count the lines in a.txt"]


@pytest.fixture
def corpus() -> Dataset:
    return Dataset.from_dict({"prompt": [prompt for prompt, _ in PAIRS], "code": [code for _, code in PAIRS]})


def build(corpus, mode, pipeline, **kwargs) -> CodeFusionRetriever:
    return CodeFusionRetriever.from_dataset(
        corpus, mode=mode, pipeline=pipeline if mode == "dense" else None, **kwargs
    )


def rows(neighbours) -> list[list[int]]:
    return [[pair.row for pair in pairs] for pairs in neighbours]


@pytest.mark.parametrize("mode", MODES)
def test_a_near_verbatim_prompt_finds_its_pair_first(corpus, tiny_pipeline, mode):
    retriever = build(corpus, mode, tiny_pipeline)
    neighbours = retriever.retrieve(NEAR_VERBATIM, k=3, pipeline=tiny_pipeline)
    assert [pairs[0].code for pairs in neighbours] == [code for _, code in PAIRS]
    assert [pairs[0].row for pairs in neighbours] == [0, 1, 2, 3]
    for pairs in neighbours:
        assert len(pairs) == 3 and len({pair.row for pair in pairs}) == 3
        assert [pair.score for pair in pairs] == sorted((pair.score for pair in pairs), reverse=True)
        assert all((pair.prompt, pair.code) == PAIRS[pair.row] for pair in pairs)
    (single,) = retriever.retrieve("show disk usage", k=1, pipeline=tiny_pipeline)
    assert single[0] == (*PAIRS[1], single[0].score, 1)


def test_the_dataset_may_name_its_own_columns_and_carry_others(tiny_pipeline):
    dataset = Dataset.from_dict(
        {"nl": [p for p, _ in PAIRS], "cmd": [c for _, c in PAIRS], "id": list(range(len(PAIRS)))}
    )
    retriever = CodeFusionRetriever.from_dataset(dataset, mode="bm25", prompt_column="nl", code_column="cmd")
    assert retriever.corpus.column_names == ["prompt", "code"] and retriever.num_rows == len(PAIRS)
    assert retriever.retrieve("find the python files", k=1)[0][0].code == PAIRS[2][1]


@pytest.mark.parametrize("mode", MODES)
def test_leave_one_out_never_returns_the_excluded_rows(corpus, tiny_pipeline, mode):
    retriever = build(corpus, mode, tiny_pipeline)
    # The neighbours of corpus rows 0..3 without themselves, as training asks for them.
    all_rows = list(range(len(PAIRS)))
    prompts = retriever.corpus[all_rows]["prompt"]
    neighbours = retriever.retrieve(prompts, k=3, exclude=all_rows, pipeline=tiny_pipeline)
    assert [sorted(found) for found in rows(neighbours)] == [[r for r in all_rows if r != i] for i in all_rows]
    as_numpy = retriever.retrieve(prompts, k=np.int64(3), exclude=np.arange(4), pipeline=tiny_pipeline)
    assert rows(as_numpy) == rows(neighbours)
    # A prompt text leaves out every row with exactly that prompt; entries may be collections; None keeps all.
    exclude = ["list all files", {0, 1}, None, [3, "show disk usage"]]
    neighbours = retriever.retrieve(NEAR_VERBATIM, k=2, exclude=exclude, pipeline=tiny_pipeline)
    for found, skipped in zip(rows(neighbours), [{0}, {0, 1}, set(), {1, 3}]):
        assert not set(found) & skipped
    assert rows(neighbours)[2][0] == 2


def test_a_prompt_text_excludes_all_its_rows(tiny_pipeline):
    duplicated = Dataset.from_dict(
        {"prompt": ["list all files", "list all files", "show disk usage"], "code": ["ls -la", "ls -a", "df -h"]}
    )
    retriever = CodeFusionRetriever.from_dataset(duplicated)
    assert rows(retriever.retrieve(["list all files"], k=1, exclude=["list all files"])) == [[2]]
    with pytest.raises(ValueError, match="k=2 is larger than the corpus left to prompt 0 after excluding 2"):
        retriever.retrieve(["list all files"], k=2, exclude=["list all files"])


@pytest.mark.parametrize("mode", MODES)
def test_saved_loaded_with_the_pipeline(corpus, tiny_pipeline, tmp_path, mode):
    """Assigned to a pipeline built without one, the retriever is recorded in model_index.json, saved under
    retriever/ and loaded back by from_pretrained, retrieving the same pairs with the same scores."""
    retriever = build(corpus, mode, tiny_pipeline)
    tiny_pipeline.retriever = retriever
    tiny_pipeline.save_pretrained(tmp_path, model_card=False)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["retriever"] == ["codefusion_hf.retrieval_codefusion", "CodeFusionRetriever"]
    index_file = "bm25/params.index.json" if mode == "bm25" else "embeddings.faiss"
    for name in ("retriever_config.json", "corpus/state.json", index_file):
        assert (tmp_path / "retriever" / name).is_file()
    check_pipeline_folder(str(tmp_path), CodeFusionPipeline)
    loaded = CodeFusionPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.retriever, CodeFusionRetriever) and loaded.retriever.mode == mode
    expected = retriever.retrieve(
        NEAR_VERBATIM, k=3, exclude=[0, None, "find python files", None], pipeline=tiny_pipeline
    )
    found = loaded.retriever.retrieve(
        NEAR_VERBATIM, k=3, exclude=[0, None, "find python files", None], pipeline=loaded
    )
    assert rows(found) == rows(expected)
    scores = [[pair.score for pair in pairs] for pairs in (*found, *expected)]
    assert scores[: len(found)] == [pytest.approx(prompt_scores) for prompt_scores in scores[len(found) :]]
    # The loaded pipeline generates as the saved one did.
    loaded.set_progress_bar_config(disable=True)
    assert seeded(loaded, "list all files").code == seeded(tiny_pipeline, "list all files").code


def test_retriever_none_turns_it_off_and_saves_none(corpus, tiny_model, code_tokenizer, tmp_path):
    pipe = CodeFusionPipeline(
        model=tiny_model,
        scheduler=make_pipeline(tiny_model, code_tokenizer).scheduler,
        tokenizer=code_tokenizer,
        retriever=CodeFusionRetriever.from_dataset(corpus),
    )
    assert pipe.config.retriever == ("codefusion_hf.retrieval_codefusion", "CodeFusionRetriever")
    pipe.retriever = None
    pipe.save_pretrained(tmp_path, model_card=False)
    assert not (tmp_path / "retriever").exists()
    assert json.loads((tmp_path / "model_index.json").read_text())["retriever"] == [None, None]
    assert CodeFusionPipeline.from_pretrained(tmp_path).retriever is None


def test_a_pipeline_saved_before_retrievers_loads_and_generates_as_before():
    """The legacy folder's model_index.json has no 'retriever' entry at all."""
    assert "retriever" not in json.loads((LEGACY / "model_index.json").read_text())
    expected = json.loads((LEGACY / "expected_outputs.json").read_text())
    pipe = CodeFusionPipeline.from_pretrained(LEGACY)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.retriever is None
    name = next(name for name, call in sorted(expected["calls"].items()) if not call["kwargs"])
    output = pipe(
        expected["prompts"],
        num_inference_steps=expected["num_inference_steps"],
        num_return_sequences=expected["num_return_sequences"],
        generator=torch.Generator().manual_seed(expected["seed"]),
    )
    assert output.code == expected["calls"][name]["code"]


# huggingface_hub's LFS upload passes `data=` to httpx2: not actionable here.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
def test_pushed_and_downloaded_with_the_pipeline(hub, corpus, tiny_pipeline, tmp_path):
    tiny_pipeline.retriever = CodeFusionRetriever.from_dataset(corpus)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_pipeline.push_to_hub(f"{USER}/cf-retriever", token=TOKEN)
    assert not [warning for warning in caught if "data file" in str(warning.message)]
    loaded = CodeFusionPipeline.from_pretrained(f"{USER}/cf-retriever", cache_dir=tmp_path / "cache")
    assert rows(loaded.retriever.retrieve(NEAR_VERBATIM, k=1)) == [[0], [1], [2], [3]]


def remove(name):
    return lambda folder: (folder / "retriever" / name).unlink()


def garble(name):
    return lambda folder: (folder / "retriever" / name).write_bytes(b"\x00not an index")


@pytest.mark.parametrize(
    "mode, damage, file",
    [
        ("bm25", remove("retriever_config.json"), "retriever_config.json"),
        ("bm25", garble("retriever_config.json"), "retriever_config.json"),
        ("bm25", remove("corpus/state.json"), "state.json"),
        ("bm25", remove("corpus/data-00000-of-00001.arrow"), "data-00000-of-00001.arrow"),
        ("bm25", remove("bm25/params.index.json"), "params.index.json"),
        ("bm25", garble("bm25/data.csc.index.npy"), "bm25"),
        ("dense", remove("embeddings.faiss"), "embeddings.faiss"),
        ("dense", garble("embeddings.faiss"), "embeddings.faiss"),
    ],
)
def test_a_damaged_retriever_folder_names_the_file(corpus, tiny_pipeline, tmp_path, mode, damage, file):
    tiny_pipeline.retriever = build(corpus, mode, tiny_pipeline)
    tiny_pipeline.save_pretrained(tmp_path, model_card=False)
    damage(tmp_path)
    with pytest.raises(OSError, match=file):
        CodeFusionPipeline.from_pretrained(tmp_path)


def test_own_corpus_swapped_in_without_retraining(tmp_path, tiny_pipeline):
    """The retriever a user points at their own pairs replaces the saved one; nothing else changes."""
    saved = Dataset.from_dict({"prompt": ["say hi"], "code": ["echo hi"]})
    tiny_pipeline.retriever = CodeFusionRetriever.from_dataset(saved)
    tiny_pipeline.save_pretrained(tmp_path, model_card=False)
    pipe = CodeFusionPipeline.from_pretrained(tmp_path)
    mine = Dataset.from_dict({"prompt": ["print the date", "who am i"], "code": ["date", "whoami"]})
    pipe.retriever = CodeFusionRetriever.from_dataset(mine, mode="dense", pipeline=pipe)
    assert pipe.retriever.retrieve("print the current date", k=1, pipeline=pipe)[0][0].code == "date"


@pytest.mark.parametrize(
    "dataset, kwargs, message",
    [
        ({"text": ["a"], "code": ["b"]}, {}, r"no column 'prompt' \(it has \['text', 'code'\]\)"),
        ({"prompt": ["a"], "cmd": ["b"]}, {}, "no column 'code'"),
        ({"prompt": ["a"], "code": ["b"]}, {"prompt_column": "nl", "code_column": "bash"}, "no column 'nl' or 'bash'"),
        ({"prompt": [], "code": []}, {}, "corpus is empty"),
        ({"prompt": ["a", None], "code": ["b", "c"]}, {}, "Column 'prompt' must hold strings, but row 1 is None"),
        ({"prompt": ["a"], "code": ["b"]}, {"mode": "tfidf"}, "mode must be one of"),
        ({"prompt": ["a"], "code": ["b"]}, {"mode": "dense"}, "mode='dense' .* pass pipeline="),
        ({"prompt": ["a", "of the"], "code": ["b", "c"]}, {}, "No prompt of the corpus has a word BM25 can score"),
    ],
)
def test_a_bad_corpus_is_refused(dataset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CodeFusionRetriever.from_dataset(Dataset.from_dict(dataset), **kwargs)
    with pytest.raises(ValueError, match="must be a datasets.Dataset"):
        CodeFusionRetriever.from_dataset(PAIRS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "k, exclude, message",
    [
        (5, None, "k=5 is larger than the corpus, which has 4 pairs"),
        (0, None, "k must be a whole number of at least 1, got 0"),
        (-1, None, "k must be a whole number of at least 1"),
        (1.5, None, "k must be a whole number of at least 1"),
        (4, [0], "k=4 is larger than the corpus left to prompt 0 after excluding 1"),
        (1, [0, 1], r"exclude must hold one entry per prompt \(1\)"),
        (1, [4], r"exclude holds 4: a corpus row \(0 to 3\)"),
        (1, [[1.5]], "exclude holds 1.5"),
    ],
)
def test_a_bad_k_or_exclusion_is_refused(corpus, tiny_pipeline, mode, k, exclude, message):
    retriever = build(corpus, mode, tiny_pipeline)
    with pytest.raises(ValueError, match=message):
        retriever.retrieve(["list all files"], k=k, exclude=exclude, pipeline=tiny_pipeline)


def test_a_dense_retriever_needs_the_encoder_and_tokenizer_it_was_built_with(corpus, tiny_pipeline, code_tokenizer):
    retriever = CodeFusionRetriever.from_dataset(corpus, mode="dense", pipeline=tiny_pipeline)
    with pytest.raises(ValueError, match="encodes prompts with the pipeline's prompt encoder: pass pipeline="):
        retriever.retrieve("list all files", k=1)
    torch.manual_seed(1)
    other_weights = make_pipeline(CodeFusionModel(tiny_config(code_tokenizer)), code_tokenizer)
    with pytest.raises(ValueError, match="prompt encoder is not the one this dense retriever was built with"):
        retriever.retrieve("list all files", k=1, pipeline=other_weights)
    other_tokenizer = make_code_tokenizer().train_new_from_iterator(["echo hello world", "cat a b"], vocab_size=300)
    other_vocabulary = make_pipeline(CodeFusionModel(tiny_config(other_tokenizer)), other_tokenizer)
    with pytest.raises(ValueError, match="prompt tokenizer is not the one this dense retriever was built with"):
        retriever.retrieve("list all files", k=1, pipeline=other_vocabulary)
    # The same encoder cast to bf16 is the same encoder.
    cast = make_pipeline(copy.deepcopy(tiny_pipeline.model).to(torch.bfloat16), code_tokenizer)
    assert retriever.retrieve("show the disk usage", k=1, pipeline=cast)[0][0].row == 1


def test_repr_and_config(corpus, tiny_pipeline, tmp_path):
    retriever = CodeFusionRetriever.from_dataset(corpus, mode="dense", pipeline=tiny_pipeline)
    assert repr(retriever) == "CodeFusionRetriever(mode='dense', num_rows=4)"
    retriever.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "retriever_config.json").read_text())
    assert config["mode"] == "dense" and config["num_rows"] == 4
    assert set(config["encoder_fingerprint"]) == {
        "tokenizer_vocabulary_sha256",
        "encoder_architecture_sha256",
        "encoder_weight_samples",
    }
    loaded = CodeFusionRetriever.from_pretrained(tmp_path)
    assert rows(loaded.retrieve(NEAR_VERBATIM, k=1, pipeline=tiny_pipeline)) == [[0], [1], [2], [3]]
    shutil.rmtree(tmp_path / "corpus")
    with pytest.raises(OSError, match="state.json is missing"):
        CodeFusionRetriever.from_pretrained(tmp_path)
