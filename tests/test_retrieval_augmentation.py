"""A retrieval-augmented model (`config.num_neighbors`): neighbours' code in the cross-attention memory, leave-one-out
neighbours in training, and the pipeline retrieving them for its prompts."""

import pytest
import torch
from conftest import PAIRS, make_pipeline, tiny_config
from datasets import Dataset
from test_training import make_trainer, training_args

from codefusion_hf import CodeFusionModel, CodeFusionPipeline
from codefusion_hf.data_codefusion import NEIGHBORS_COLUMN, add_neighbors, pad_neighbors, tokenize_dataset
from codefusion_hf.retrieval_codefusion import CodeFusionRetriever

PAIR_DATA = Dataset.from_dict({"prompt": [p for p, _ in PAIRS], "code": [c for _, c in PAIRS]})


def test_neighbours_join_the_memory_every_cross_attention_reads(code_tokenizer):
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, num_neighbors=2)).eval()
    states, mask = torch.randn(2, 3, model.config.hidden_size), torch.tensor([[1, 1, 0], [1, 1, 1]])
    neighbors = pad_neighbors([[[5, 6, 7], [8]], [[9], []]], code_tokenizer.pad_token_id)
    memory, memory_mask = model.add_neighbors(states, mask, *neighbors.values())
    assert memory.shape == (2, 3 + 2 * 3, model.config.hidden_size) and torch.equal(memory[:, :3], states)
    assert memory_mask.tolist() == [[1, 1, 0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0]]
    # The same code as another neighbour reads differently (the neighbour embedding), and the denoiser reads it.
    assert not torch.allclose(memory[0, 3], model.add_neighbors(states, mask, torch.tensor([[[1], [5]]] * 2))[0][0, 4])
    canvas, timesteps = torch.randn(2, 4, model.config.latent_dim), torch.tensor([500, 500])
    with_neighbors = model.denoise(canvas, timesteps, memory, memory_mask)
    assert not torch.allclose(with_neighbors, model.denoise(canvas, timesteps, states, mask))
    with pytest.raises(ValueError, match="at most config.num_neighbors=2 neighbours"):
        model.add_neighbors(states, mask, torch.zeros(2, 3, 1, dtype=torch.long))
    plain = CodeFusionModel(tiny_config(code_tokenizer))
    with pytest.raises(ValueError, match="this model reads no neighbours"):
        plain.add_neighbors(states, mask, *neighbors.values())
    with pytest.raises(ValueError, match="num_neighbors must be a whole number"):
        tiny_config(code_tokenizer, num_neighbors=-1)


def test_training_rows_never_read_their_own_pair(code_tokenizer):
    """Leave-one-out: a row's neighbours never hold its own prompt, so never its own target; rows from elsewhere
    (validation) may read any pair."""
    retriever = CodeFusionRetriever.from_dataset(PAIR_DATA)
    data = tokenize_dataset(PAIR_DATA, code_tokenizer, 16, code_tokenizer, 16)
    trained = add_neighbors(data, retriever, 2, code_tokenizer, 16, leave_one_out=True)
    codes = {code: code_tokenizer(code, add_special_tokens=False)["input_ids"] for _, code in PAIRS}
    for row in trained:
        assert len(row[NEIGHBORS_COLUMN]) == 2 and codes[row["code"]] not in row[NEIGHBORS_COLUMN]
        assert all(ids in codes.values() for ids in row[NEIGHBORS_COLUMN])
    elsewhere = add_neighbors(data, retriever, 1, code_tokenizer, 16, leave_one_out=False)
    assert [row[NEIGHBORS_COLUMN][0] for row in elsewhere] == [codes[code] for _, code in PAIRS]  # itself first


def test_a_retrieval_model_trains_and_saves_with_its_retriever(code_tokenizer, tmp_path):
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, config_overrides={"num_neighbors": 2}, max_steps=3)
    assert NEIGHBORS_COLUMN in trainer.train_dataset.column_names
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["neighbor_code_ids"].shape[:2] == (4, 2) and batch["neighbor_attention_mask"].any()
    assert trainer.train().training_loss > 0
    trainer.save_pipeline(str(tmp_path / "saved"))
    pipe = CodeFusionPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(pipe.retriever, CodeFusionRetriever) and pipe.model.config.num_neighbors == 2
    assert len(pipe("list all files", num_inference_steps=2).code[0]) == 1


def test_a_dense_retriever_over_the_training_pairs_gives_the_neighbours(code_tokenizer, tmp_path):
    """retrieval_mode='dense': the frozen prompt encoder indexes the training pairs, each row reads its nearest
    other pairs (never its own code), and the saved pipeline retrieves with its own encoder."""
    trainer = make_trainer(
        "finetune",
        code_tokenizer,
        tmp_path,
        config_overrides={"num_neighbors": 2},
        max_steps=2,
        retrieval_mode="dense",
        freeze_encoder=True,
    )
    assert trainer.retriever.mode == "dense" and trainer.retriever.num_rows == len(trainer.train_dataset)
    for row in trainer.train_dataset:
        own = code_tokenizer(row["code"], add_special_tokens=False)["input_ids"]
        assert len(row[NEIGHBORS_COLUMN]) == 2 and own not in row[NEIGHBORS_COLUMN]
    trainer.train()
    trainer.save_pipeline(str(tmp_path / "saved"))
    pipe = CodeFusionPipeline.from_pretrained(tmp_path / "saved")
    assert pipe.retriever.mode == "dense" and len(pipe("list all files", num_inference_steps=2).code[0]) == 1
    training_args(tmp_path, retrieval_mode="dense")  # without neighbours, dense mode does nothing: no error
    with pytest.raises(ValueError, match="set freeze_encoder=True"):
        make_trainer(
            "finetune", code_tokenizer, tmp_path, config_overrides={"num_neighbors": 2}, retrieval_mode="dense"
        )
    with pytest.raises(ValueError, match="retrieval_mode must be one of"):
        training_args(tmp_path, retrieval_mode="tfidf")


def test_the_pipeline_reads_its_prompts_neighbours_and_can_do_without(code_tokenizer, monkeypatch):
    torch.manual_seed(0)
    pipe = make_pipeline(CodeFusionModel(tiny_config(code_tokenizer, num_neighbors=2)), code_tokenizer)
    pipe.retriever = CodeFusionRetriever.from_dataset(PAIR_DATA)
    memories = []
    denoise = pipe.model.denoise
    monkeypatch.setattr(pipe.model, "denoise", lambda *a, **k: memories.append(a[2].shape[1]) or denoise(*a, **k))
    kwargs = {"num_inference_steps": 2, "generator": torch.Generator().manual_seed(0), "output_type": "latent"}
    retrieved = pipe(["list all files", "show disk usage"], **kwargs)
    prompt_length = pipe.encode_prompt(["list all files", "show disk usage"], torch.device("cpu"))[0].shape[1]
    longest = max(len(code_tokenizer(code, add_special_tokens=False)["input_ids"]) for _, code in PAIRS)
    assert prompt_length < memories[0] <= prompt_length + 2 * longest
    pipe.retriever = None  # off: the prompt alone
    memories.clear()
    kwargs["generator"] = torch.Generator().manual_seed(0)
    alone = pipe(["list all files", "show disk usage"], **kwargs)
    assert set(memories) == {prompt_length}
    assert not torch.allclose(alone.code, retrieved.code)  # the neighbours changed what was denoised
    states, mask = pipe.encode_prompt(["list all files"], torch.device("cpu"))
    pipe.retriever = CodeFusionRetriever.from_dataset(PAIR_DATA)
    with pytest.raises(ValueError, match="retrieves neighbours by the prompts' text"):
        pipe(prompt_embeds=states, prompt_attention_mask=mask, num_inference_steps=2)


def test_a_call_that_reads_neighbours_and_starts_from_drafts_retrieves_once(code_tokenizer, monkeypatch):
    """num_neighbors=1 and draft_candidates=2: one retrieval of the 2 nearest pairs per prompt serves both (the
    output reports it), and the model's memory holds the first of them only."""
    torch.manual_seed(0)
    pipe = make_pipeline(CodeFusionModel(tiny_config(code_tokenizer, num_neighbors=1)), code_tokenizer)
    pipe.retriever = CodeFusionRetriever.from_dataset(PAIR_DATA)
    calls = []
    retrieve = CodeFusionRetriever.retrieve
    monkeypatch.setattr(
        CodeFusionRetriever, "retrieve", lambda self, p, k, **kw: calls.append(k) or retrieve(self, p, k, **kw)
    )
    kwargs = {"num_inference_steps": 4, "num_return_sequences": 3, "draft_candidates": 2, "output_type": "latent"}
    once = pipe(["list all files", "show disk usage"], generator=torch.Generator().manual_seed(0), **kwargs)
    assert calls == [2]
    found = once.neighbors
    assert [[pair.row for pair in pairs] for pairs in found] == [
        [pair.row for pair in pairs] for pairs in retrieve(pipe.retriever, ["list all files", "show disk usage"], 2)
    ]
    pipe.model.eval()  # no dropout in the memories compared
    memory = pipe.retrieval_memory(found, *pipe.encode_prompt(["list all files", "show disk usage"], pipe.device))
    nearest_only = [pairs[:1] for pairs in found]
    expected = pipe.retrieval_memory(
        nearest_only, *pipe.encode_prompt(["list all files", "show disk usage"], pipe.device)
    )
    assert all(torch.equal(a, b) for a, b in zip(memory, expected))  # the model reads its 1, not the 2 retrieved


def test_drafted_rows_start_from_their_neighbour_towards_their_own_code(code_tokenizer):
    """draft_probability: a drafted row's noisy canvas is its nearest neighbour's code noised to the row's timestep,
    and its target the noise that separates that canvas from the row's own code; other rows are as before."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, num_neighbors=1, draft_probability=1.0)).train()
    labels = torch.tensor([[5, 6, 7]])
    neighbors = torch.tensor([[[9, 8]]])
    seen = {}
    denoise_states = model._denoiser_states

    def recording(noisy, *args, **kwargs):
        seen["noisy"] = noisy
        return denoise_states(noisy, *args, **kwargs)

    model._denoiser_states = recording
    noise, timesteps = torch.randn(1, 4, model.config.latent_dim), torch.tensor([30])
    states = torch.randn(1, 2, model.config.hidden_size)
    model(encoder_hidden_states=states, labels=labels, neighbor_code_ids=neighbors, noise=noise, timesteps=timesteps,
          canvas_length=4)  # fmt: skip
    draft = model.embed_code(torch.tensor([[9, 8, code_tokenizer.pad_token_id, code_tokenizer.pad_token_id]]))
    torch.testing.assert_close(seen["noisy"], model.noise_scheduler.add_noise(draft, noise, timesteps))
    model.config.draft_probability = 0.0  # off: the row's own code, noised
    model(encoder_hidden_states=states, labels=labels, neighbor_code_ids=neighbors, noise=noise, timesteps=timesteps,
          canvas_length=4)  # fmt: skip
    own = model.embed_code(torch.tensor([[5, 6, 7, code_tokenizer.pad_token_id]]))
    torch.testing.assert_close(seen["noisy"], model.noise_scheduler.add_noise(own, noise, timesteps))
    with pytest.raises(ValueError, match="set num_neighbors too"):
        tiny_config(code_tokenizer, draft_probability=0.5)


def test_draft_candidates_start_from_the_nearest_pairs_code_and_are_ranked_with_the_others(overfit_pipeline):
    """draft_candidates=m: the last m candidates of each prompt start from its nearest pairs' code, run the end of
    the schedule (`strength`), and are ranked with the candidates drawn from noise; without a retriever, an error."""
    pipe = CodeFusionPipeline(**overfit_pipeline.components)
    pipe.set_progress_bar_config(disable=True)
    steps = []
    with pytest.raises(ValueError, match="give the pipeline a retriever"):
        pipe("list all files", num_inference_steps=10, num_return_sequences=3, draft_candidates=1)
    pipe.retriever = CodeFusionRetriever.from_dataset(PAIR_DATA)

    def record(pipe, step_index, timestep, callback_kwargs):
        steps.append((step_index, timestep, len(callback_kwargs["latents"])))
        return callback_kwargs

    kwargs = {"num_inference_steps": 10, "num_return_sequences": 3, "generator": torch.Generator().manual_seed(0)}
    output = pipe(["list all files", "show disk usage"], draft_candidates=1, callback_on_step_end=record, **kwargs)
    assert output.settings.draft_candidates == 1 and output.settings.strength == 0.6
    schedule = pipe.scheduler.timestep_schedule(10).tolist()
    assert [t for _, t, rows in steps if rows == 4] == schedule  # the 4 candidates from noise: every step
    assert [(i, t) for i, t, rows in steps if rows == 2] == list(enumerate(schedule))[4:]  # drafts: the last 6
    for (prompt, code), candidates, scores in zip(PAIRS, output.code, output.scores):
        assert code in candidates and scores == sorted(scores, reverse=True)
    with pytest.raises(ValueError, match="draft_candidates must be an integer from 0 to num_return_sequences=3"):
        pipe("list all files", num_inference_steps=10, num_return_sequences=3, draft_candidates=4)
    with pytest.raises(ValueError, match="init_code and draft_candidates both"):
        pipe("list all files", num_return_sequences=3, draft_candidates=1, init_code="ls")
