"""Model cards: the README.md that `save_pretrained`, `push_to_hub` and the trainers write. The metadata must parse
back as the Hub reads it, the usage snippet must run, and evaluation results must reach the `model-index`."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import USER
from huggingface_hub import ModelCard
from test_training import make_trainer

from codefusion_hf import CodeFusionPipeline, SamplingOptions, create_model_card
from codefusion_hf.modelcard_codefusion import GENERATED_MARKER, hub_model_id

CARD_FIELDS = {
    "base_model": "Salesforce/codet5-small",
    "datasets": ["user/nl2bash"],
    "language": "bash",
    "training_summary": {"steps": 1234, "batch size": 32},
}
# What `codefusion evaluate` writes (values from a real run, trimmed).
METRICS = {
    "exact_match@1": 0.001984126984126984,
    "exact_match@3": 0.002976190476190476,
    "template_match@1": 0.13293650793650794,
    "template_match@3": 0.2013888888888889,
    "bleu@1": 35.27094496345354,
    "syntax_valid@1": 0.9930555555555556,
    "syntax_valid_all": 0.9888888888888889,
    "distinct_1": 0.6017153196425921,
    "non_empty_rate": 1.0,
    "num_prompts": 1008,
    "machine": "x86_64, 2 CPUs, torch threads 1",
    "num_return_sequences": 3,
    "num_inference_steps": 20,
    "seconds_per_prompt": 0.0025,
    "model": "runs/nl2bash-finetune",
    "test_file": "../shared/data/nl2bash/validation.jsonl",
}


def python_block(text: str) -> str:
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return block


def write_metrics(tmp_path: Path, metrics: dict = METRICS) -> Path:
    path = tmp_path / "eval" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
    return path


def test_saved_card_metadata_parses_back(tiny_pipeline, tmp_path):
    folder = tmp_path / "cf-saved"
    tiny_pipeline.save_pretrained(folder, model_card=CARD_FIELDS)
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "codefusion-hf"
    assert data.pipeline_tag == "text-generation"
    assert data.license == "mit"
    assert data.base_model == "Salesforce/codet5-small"
    assert data.datasets == ["user/nl2bash"]
    assert data.tags == ["codefusion", "diffusion", "code-generation", "nl2code", "bash"]
    assert data.language == ["en", "code"]
    assert data.eval_results is None and data.metrics is None  # no evaluation given: no claims

    text = card.text
    assert text.lstrip().startswith(GENERATED_MARKER)
    num_parameters = sum(p.numel() for p in tiny_pipeline.model.parameters())
    assert f"| Parameters | {num_parameters:,} " in text
    assert "| Canvas | 16 code tokens" in text and "T = 100 steps, `sqrt` noise schedule" in text
    assert "mean token log-probability" in text and "never looks at a reference" in text
    assert "- steps: 1234\n- batch size: 32" in text
    # The snippet of a local save loads the folder it was saved to.
    assert f"CodeFusionPipeline.from_pretrained({json.dumps(str(folder))})" in python_block(text)
    # The README does not get in the way of loading.
    loaded = CodeFusionPipeline.from_pretrained(folder).model.state_dict()
    for name, tensor in tiny_pipeline.model.state_dict().items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)


def test_usage_snippet_runs_and_prints_the_pipelines_ranked_candidates(tiny_pipeline, tmp_path):
    folder = tmp_path / "cf-snippet"
    tiny_pipeline.save_pretrained(folder, model_card={"repo_id": f"{USER}/cf-snippet", "language": "bash"})
    snippet = python_block((folder / "README.md").read_text())
    assert f'from_pretrained("{USER}/cf-snippet")' in snippet
    snippet = snippet.replace(f'"{USER}/cf-snippet"', json.dumps(str(folder)))

    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # The snippet as written, then one line that reports what it produced (code may span lines).
    report = '\nimport json\nprint("\\nOUTPUT", json.dumps({"code": output.code[0], "scores": output.scores[0]}))\n'
    result = subprocess.run(
        [sys.executable, "-c", snippet + report], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed, reported = result.stdout.rsplit("\nOUTPUT ", 1)
    reported = json.loads(reported)
    assert printed.startswith(f"{reported['scores'][0]:.3f}  {reported['code'][0]}")

    # The same call in this process gives the same ranked candidates.
    prompt = re.search(r'output = pipe\(\n\s+("[^"]*")', snippet).group(1)
    output = tiny_pipeline(
        json.loads(prompt), num_return_sequences=3, num_inference_steps=20, generator=torch.Generator().manual_seed(0)
    )
    assert reported["code"] == output.code[0]
    assert reported["scores"] == pytest.approx(output.scores[0], abs=1e-4)
    assert output.scores[0] == sorted(output.scores[0], reverse=True)


def test_eval_results_reach_the_model_index(tiny_pipeline, tmp_path):
    folder = tmp_path / "cf-evaluated"
    tiny_pipeline.save_pretrained(folder, model_card=CARD_FIELDS | {"eval_results_file": write_metrics(tmp_path)})
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "cf-evaluated"
    assert card.data.metrics == ["exact_match", "template_match", "bleu", "syntax_valid"]
    results = {result.metric_name: result for result in card.data.eval_results}
    assert list(results) == [
        "exact match@1",
        "exact match@3",
        "template match@1",
        "template match@3",
        "bleu@1",
        "syntax valid@1",
    ]  # syntax_valid_all, distinct_1, ... are not top-k accuracies
    for name, key in [("exact match@3", "exact_match@3"), ("template match@1", "template_match@1")]:
        assert results[name].metric_value == pytest.approx(METRICS[key], abs=1e-4)
    bleu = results["bleu@1"]
    assert (bleu.metric_type, bleu.metric_value, bleu.metric_args) == ("bleu", 35.2709, {"k": 1})
    for result in results.values():
        assert (result.task_type, result.dataset_name, result.dataset_type, result.dataset_split) == (
            "text-generation",
            "nl2bash",
            "nl2bash",
            "validation",
        )
    assert "On `nl2bash` (split `validation`, 1008 prompts, 3 candidates per prompt, 20 denoising steps)" in card.text
    assert "| template match@3 | 0.2014 |" in card.text and "| bleu@1 | 35.27 |" in card.text

    # The data can be named explicitly (a Hub dataset id, a split the file name does not say).
    card = create_model_card(
        tiny_pipeline, eval_results_file=write_metrics(tmp_path), eval_dataset="user/nl2bash", eval_split="test"
    )
    result = card.data.eval_results[0]
    assert (result.dataset_type, result.dataset_split) == ("user/nl2bash", "test")


def test_model_index_from_a_real_evaluation(tiny_pipeline, tmp_path):
    """The metrics.json that `evaluate_file` (`codefusion evaluate`) writes, as it is."""
    from codefusion_hf.evaluation_codefusion import evaluate_file

    folder = tmp_path / "cf-tiny"
    tiny_pipeline.save_pretrained(folder)
    data = tmp_path / "nl2bash" / "test.jsonl"
    data.parent.mkdir()
    rows = [("list all files", "ls -la"), ("show disk usage", "df -h"), ("count lines in a.txt", "wc -l a.txt")]
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in rows))
    sampling = SamplingOptions(num_return_sequences=3, num_inference_steps=3)
    metrics = evaluate_file(str(folder), str(data), str(tmp_path / "eval"), sampling=sampling, device="cpu")
    card = create_model_card(tiny_pipeline, eval_results_file=tmp_path / "eval" / "metrics.json")
    results = {result.metric_name: result for result in card.data.eval_results}
    expected = {"exact match@1", "exact match@3", "template match@1", "template match@3", "bleu@1", "syntax valid@1"}
    assert set(results) == expected
    for name, result in results.items():
        key = name.replace(" ", "_")
        assert result.metric_value == pytest.approx(metrics[key], abs=1e-4)
        assert (result.dataset_name, result.dataset_split) == ("nl2bash", "test")
    assert f"{len(rows)} prompts, 3 candidates per prompt, 3 denoising steps" in card.text


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json", "is not a readable JSON file"),
        (json.dumps({"num_prompts": 3, "test_file": "a/test.jsonl"}), "has no top-k metrics"),
        (json.dumps({"exact_match@1": 0.5}), "has no 'test_file'"),
    ],
)
def test_bad_eval_file_is_an_error_naming_it(tiny_pipeline, tmp_path, content, message):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    folder = tmp_path / "cf-bad"
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*{re.escape(message)}"):
        tiny_pipeline.save_pretrained(folder, model_card={"eval_results_file": path})
    assert not folder.exists()  # checked before anything is written


def test_readme_policy(tiny_pipeline, tmp_path):
    folder = tmp_path / "cf-policy"
    tiny_pipeline.save_pretrained(folder, model_card={"training_summary": "first run"})
    assert "first run" in (folder / "README.md").read_text()

    # A generated card follows the pipeline: saving again regenerates it.
    tiny_pipeline.save_pretrained(folder, model_card={"training_summary": "second run"})
    assert "second run" in (folder / "README.md").read_text()

    # A card a person wrote (or edited, deleting the marker) is kept.
    edited = (folder / "README.md").read_text().replace(GENERATED_MARKER, "").replace("second run", "my notes")
    (folder / "README.md").write_text(edited)
    tiny_pipeline.save_pretrained(folder, model_card={"training_summary": "third run"})
    assert (folder / "README.md").read_text() == edited

    # The card the transformers Trainer writes on push is generated too: replaced.
    trainer_card = "---\ntags:\n- generated_from_trainer\n---\n<!-- This model card has been generated automatically according to the information the Trainer had access to. -->\n"  # noqa: E501
    (folder / "README.md").write_text(trainer_card)
    tiny_pipeline.save_pretrained(folder)
    assert ModelCard.load(folder / "README.md").data.library_name == "codefusion-hf"

    # model_card=False writes none and leaves an existing one alone.
    tiny_pipeline.save_pretrained(tmp_path / "cf-no-card", model_card=False)
    assert not (tmp_path / "cf-no-card" / "README.md").exists()
    (folder / "README.md").write_text(trainer_card)
    tiny_pipeline.save_pretrained(folder, model_card=False)
    assert (folder / "README.md").read_text() == trainer_card

    with pytest.raises(ValueError, match="model_card must be True, False or a dict"):
        tiny_pipeline.save_pretrained(tmp_path / "cf-typo", model_card="yes")


def test_trainer_save_pipeline_records_the_run(code_tokenizer, tmp_path):
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=2)
    # What a finished `train()` leaves behind (no training here), and an encoder that came from the Hub.
    trainer.state.global_step, trainer.state.epoch = 2, 0.5
    trainer.state.log_history.append({"train_runtime": 90.0, "train_loss": 1.23456, "step": 2})
    trainer.model.config.encoder_config._name_or_path = "Salesforce/codet5-small"
    trainer.save_pipeline(training_data="user/nl2bash", datasets="user/nl2bash")

    card = ModelCard.load(Path(trainer.args.output_dir) / "README.md")
    assert card.data.base_model == "Salesforce/codet5-small"
    assert card.data.datasets == ["user/nl2bash"]
    assert "bash" in card.data.tags
    for line in [
        "- phase: 2, fine-tuning on (prompt, code) pairs",
        "- training data: user/nl2bash",
        f"- training rows: {len(trainer.train_dataset)}",
        "- steps: 2",
        "- epochs: 0.5",
        "- training time: 1.5 minutes on cpu",
        "- mean training loss: 1.2346",
    ]:
        assert line in card.text
    assert CodeFusionPipeline.from_pretrained(trainer.args.output_dir).tokenizer is not None


def test_hub_model_id(tmp_path):
    assert hub_model_id("Salesforce/codet5-small") == "Salesforce/codet5-small"
    (tmp_path / "encoder").mkdir()
    assert hub_model_id(str(tmp_path / "encoder")) is None  # a local folder
    assert hub_model_id("") is None and hub_model_id(None) is None and hub_model_id("a/b/c") is None
