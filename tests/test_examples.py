"""The text-to-code example (examples/text_to_code/): configs parse, flags override a config file, and the training
scripts do what they say."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "text_to_code"
sys.path.append(str(EXAMPLE))  # the scripts import training_setup from their own folder, as they do when run

import training_setup  # noqa: E402

CONFIGS = sorted((EXAMPLE / "configs").glob("*.json"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_reads_the_repository_data_or_the_benchmark_folder(config):
    """NL2Bash's splits are in data/nl2bash; what the repository does not hold (the pre-training snippets, CoNaLa,
    Excel CF) is read from ../shared/data beside it, as the README says."""
    values = json.loads(config.read_text())
    for key in ("train_file", "validation_file"):
        path = values[key]
        assert (ROOT / path).is_file() or path.startswith("../shared/data/"), f"{key}: {path}"
        assert not path.startswith("../shared/data/") or not (ROOT / path.removeprefix("../shared/")).is_file()


def test_readme_lists_every_config():
    readme = (EXAMPLE / "README.md").read_text()
    assert [config.name for config in CONFIGS if f"configs/{config.name}" not in readme] == []


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_parses(config, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["script", str(config), "--max_steps", "7"])
    model_args, data_args, training_args = training_setup.parse_args()
    assert training_args.max_steps == 7  # a flag after the file overrides it
    assert data_args.train_file and training_args.output_dir.startswith("runs/")
    assert model_args.model_name_or_path or model_args.tokenizer_name_or_path


def test_yaml_config_file(tmp_path, monkeypatch):
    """A YAML file may give config_overrides as a mapping; a flag after the file overrides the file."""
    config = tmp_path / "run.yaml"
    config.write_text(
        "train_file: data.jsonl\noutput_dir: out\nlearning_rate: 0.001\nconfig_overrides:\n  max_code_length: 32\n"
    )
    monkeypatch.setattr(sys, "argv", ["script", str(config), "--learning_rate", "0.002"])
    model_args, data_args, training_args = training_setup.parse_args()
    assert (data_args.train_file, training_args.output_dir, training_args.learning_rate) == (
        "data.jsonl",
        "out",
        0.002,
    )
    assert training_setup.json_object(model_args.config_overrides, "config_overrides") == {"max_code_length": 32}


def test_config_file_unknown_key(tmp_path, monkeypatch):
    config = tmp_path / "run.json"
    config.write_text('{"train_file": "data.jsonl", "learning_rat": 0.1}')
    monkeypatch.setattr(sys, "argv", ["script", str(config)])
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rat'\]"):
        training_setup.parse_args()


def test_json_object_rejects_non_objects():
    assert training_setup.json_object(None, "config_overrides") == {}
    assert training_setup.json_object('{"a": 1}', "config_overrides") == {"a": 1}
    with pytest.raises(ValueError, match="config_overrides must be a JSON object"):
        training_setup.json_object("[1, 2]", "config_overrides")
    # A shell that ate the double quotes: named, with how to quote it.
    with pytest.raises(ValueError, match="config_overrides is not valid JSON .*double-quoted keys.*'{a:1}'"):
        training_setup.json_object("{a:1}", "config_overrides")


def test_missing_training_data(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["script", "--output_dir", "x"])
    with pytest.raises(ValueError, match="--train_file or --dataset_name"):
        training_setup.parse_args()


def test_new_model_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer_name_or_path"):
        training_setup.load_model_and_tokenizers(training_setup.ModelArguments())


def test_init_layers_from_encoder_needs_a_new_model_and_an_encoder(tmp_path):
    with pytest.raises(ValueError, match="give --encoder_name_or_path"):
        training_setup.load_model_and_tokenizers(
            training_setup.ModelArguments(tokenizer_name_or_path=str(tmp_path), init_layers_from_encoder=True)
        )
    with pytest.raises(ValueError, match="a continued one \\(--model_name_or_path\\) has trained layers"):
        training_setup.load_model_and_tokenizers(
            training_setup.ModelArguments(model_name_or_path=str(tmp_path), init_layers_from_encoder=True)
        )


def test_config_overrides_change_a_continued_model(tiny_pipeline, tmp_path):
    """Training-time fields of a saved model can be changed when training continues; unknown fields are an error."""
    tiny_pipeline.save_pretrained(tmp_path)
    overrides = '{"dropout": 0.3, "unroll_probability": 0.5}'
    model, _, _ = training_setup.load_model_and_tokenizers(
        training_setup.ModelArguments(model_name_or_path=str(tmp_path), config_overrides=overrides)
    )
    assert model.config.unroll_probability == 0.5
    assert {module.p for module in model.denoiser.modules() if isinstance(module, torch.nn.Dropout)} == {0.3}
    with pytest.raises(ValueError, match="'unroll'"):
        training_setup.load_model_and_tokenizers(
            training_setup.ModelArguments(model_name_or_path=str(tmp_path), config_overrides='{"unroll": 0.5}')
        )


def test_pretrain_then_finetune_scripts(tmp_path, monkeypatch, code_tokenizer):
    """pretrain.py saves a pipeline that finetune.py continues from; a second run resumes from its checkpoint."""
    import finetune
    import pretrain

    code_tokenizer.save_pretrained(tmp_path / "tokenizer")
    rows = [{"prompt": "list all files", "code": "ls -la"}, {"prompt": "show disk usage", "code": "df -h"}] * 4
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common_flags = [
        "--train_file",
        str(data),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--use_cpu",
        "True",
        "--disable_tqdm",
        "True",
    ]
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "pretrain.py",
            "--tokenizer_name_or_path",
            str(tmp_path / "tokenizer"),
            "--preset",
            "tiny",
            "--output_dir",
            str(tmp_path / "phase1"),
            *common_flags,
        ],
    )
    pretrain.main()
    assert (tmp_path / "phase1" / "model_index.json").is_file()
    finetune_argv = [
        "finetune.py",
        "--model_name_or_path",
        str(tmp_path / "phase1"),
        "--output_dir",
        str(tmp_path / "phase2"),
        "--save_steps",
        "2",
        *common_flags,
    ]
    monkeypatch.setattr(sys, "argv", finetune_argv)
    trainer = finetune.main()
    assert trainer.state.global_step == 2 and (tmp_path / "phase2" / "checkpoint-2").is_dir()
    monkeypatch.setattr(sys, "argv", [*finetune_argv, "--max_steps", "3"])
    assert finetune.main().state.global_step == 3  # resumed from checkpoint-2, one more step
    card = (tmp_path / "phase2" / "README.md").read_text()
    assert f"- training data: {data}" in card and "- phase: 2, fine-tuning" in card


def test_model_card_fields_of_the_scripts():
    model_args = training_setup.ModelArguments(model_name_or_path="user/codefusion-phase1")
    data_args = training_setup.DataArguments(dataset_name="user/nl2bash")
    assert training_setup.model_card_fields(model_args, data_args) == {
        "training_data": "user/nl2bash",
        "datasets": "user/nl2bash",
        "base_model": "user/codefusion-phase1",  # continued from a Hub checkpoint
    }
    # A local phase-1 folder and a local file: no Hub ids to record, only the file.
    local = training_setup.model_card_fields(
        training_setup.ModelArguments(model_name_or_path=str(ROOT)), training_setup.DataArguments("a.jsonl")
    )
    assert local == {"training_data": "a.jsonl"}
