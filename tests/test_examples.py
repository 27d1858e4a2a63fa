"""The example configs parse, and command-line flags override a config file."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import common  # noqa: E402

CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.json"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_parses(config, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["script", str(config), "--max_steps", "7"])
    model_args, data_args, training_args = common.parse_args()
    assert training_args.max_steps == 7  # a flag after the file overrides it
    assert data_args.train_file and training_args.output_dir.startswith("runs/")
    assert model_args.model_name_or_path or model_args.tokenizer_name_or_path


def test_missing_training_data(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["script", "--output_dir", "x"])
    with pytest.raises(ValueError, match="--train_file or --dataset_name"):
        common.parse_args()


def test_new_model_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer_name_or_path"):
        common.load_model_and_tokenizers(common.ModelArguments())
