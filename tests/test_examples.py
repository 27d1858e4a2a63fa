"""The example scripts: configs parse, flags override a config file, and each script does what it says."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import PAIRS
from transformers import AutoModel, BertConfig, BertModel

ROOT = Path(__file__).resolve().parents[1]
# Appended, not prepended: examples/evaluate.py must not shadow the `evaluate` package.
sys.path.append(str(ROOT / "examples"))

import common  # noqa: E402

# *_autoregressive.json configure examples/baselines/train_autoregressive.py; tests/test_autoregressive.py parses them.
CONFIGS = sorted(c for c in (ROOT / "examples" / "configs").glob("*.json") if not c.stem.endswith("_autoregressive"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_parses(config, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["script", str(config), "--max_steps", "7"])
    model_args, data_args, training_args = common.parse_args()
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
    model_args, data_args, training_args = common.parse_args()
    assert (data_args.train_file, training_args.output_dir, training_args.learning_rate) == (
        "data.jsonl",
        "out",
        0.002,
    )
    assert common.json_object(model_args.config_overrides, "config_overrides") == {"max_code_length": 32}


def test_config_file_unknown_key(tmp_path, monkeypatch):
    config = tmp_path / "run.json"
    config.write_text('{"train_file": "data.jsonl", "learning_rat": 0.1}')
    monkeypatch.setattr(sys, "argv", ["script", str(config)])
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rat'\]"):
        common.parse_args()


def test_json_object_rejects_non_objects():
    assert common.json_object(None, "config_overrides") == {}
    assert common.json_object('{"a": 1}', "config_overrides") == {"a": 1}
    with pytest.raises(ValueError, match="config_overrides must be a JSON object"):
        common.json_object("[1, 2]", "config_overrides")


def test_missing_training_data(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["script", "--output_dir", "x"])
    with pytest.raises(ValueError, match="--train_file or --dataset_name"):
        common.parse_args()


def test_new_model_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer_name_or_path"):
        common.load_model_and_tokenizers(common.ModelArguments())


def test_config_overrides_change_a_continued_model(tiny_pipeline, tmp_path):
    """Training-time fields of a saved model can be changed when training continues; unknown fields are an error."""
    tiny_pipeline.save_pretrained(tmp_path)
    overrides = '{"dropout": 0.3, "unroll_probability": 0.5}'
    model, _, _ = common.load_model_and_tokenizers(
        common.ModelArguments(model_name_or_path=str(tmp_path), config_overrides=overrides)
    )
    assert model.config.unroll_probability == 0.5
    assert {module.p for module in model.denoiser.modules() if isinstance(module, torch.nn.Dropout)} == {0.3}
    with pytest.raises(ValueError, match="'unroll'"):
        common.load_model_and_tokenizers(
            common.ModelArguments(model_name_or_path=str(tmp_path), config_overrides='{"unroll": 0.5}')
        )


def test_pretrain_then_finetune_scripts(tmp_path, monkeypatch, code_tokenizer):
    """pretrain.py saves a pipeline that finetune.py continues from; a second run resumes from its checkpoint."""
    import json

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
    model_args = common.ModelArguments(model_name_or_path="user/codefusion-phase1")
    data_args = common.DataArguments(dataset_name="user/nl2bash")
    assert common.model_card_fields(model_args, data_args) == {
        "training_data": "user/nl2bash",
        "datasets": "user/nl2bash",
        "base_model": "user/codefusion-phase1",  # continued from a Hub checkpoint
    }
    # A local phase-1 folder and a local file: no Hub ids to record, only the file.
    local = common.model_card_fields(
        common.ModelArguments(model_name_or_path=str(ROOT)), common.DataArguments("a.jsonl")
    )
    assert local == {"training_data": "a.jsonl"}


def test_generate_script_prints_ranked_candidates(tiny_pipeline, tmp_path, monkeypatch, capsys):
    import generate

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    argv = ["x", "--model", str(tmp_path / "pipe"), "list files", "count lines", "-k", "2", "--steps", "3"]
    monkeypatch.setattr(sys, "argv", argv + ["--rounding", "decoder"])
    generate.main()
    lines = capsys.readouterr().out.split("\n")
    for prompt in ("list files", "count lines"):
        ranks = lines[lines.index(prompt) + 1 : lines.index(prompt) + 3]
        assert [line.split(".")[0].strip() for line in ranks] == ["1", "2"] and all("(score -" in r for r in ranks)
    monkeypatch.setattr(sys, "argv", argv + ["--rounding", "round"])
    with pytest.raises(SystemExit):
        generate.main()
    assert "invalid choice: 'round'" in capsys.readouterr().err


def run_evaluate_script(pipeline, tmp_path, monkeypatch, *flags) -> dict:
    """Run examples/evaluate.py on the PAIRS with `pipeline` saved to a folder; return the metrics it wrote."""
    import json

    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "examples" / "evaluate.py")
    evaluate_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_script)
    pipeline.save_pretrained(tmp_path / "pipe")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS))
    argv = ["x", "--model", str(tmp_path / "pipe"), "--test_file", str(data), "--output_dir", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv + list(flags))
    evaluate_script.main()
    rows = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(row)["reference"] for row in rows] == [code for _, code in PAIRS]
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_evaluate_script_with_custom_timesteps(overfit_pipeline, tmp_path, monkeypatch):
    """examples/evaluate.py end to end: a custom schedule is used, recorded, and still regenerates the pairs."""
    timesteps = ["99", "90", "80", "60", "40", "20", "0"]
    flags = ["--num_return_sequences", "1", "--timesteps", *timesteps]
    metrics = run_evaluate_script(overfit_pipeline, tmp_path, monkeypatch, *flags)
    assert metrics["timesteps"] == [int(t) for t in timesteps] and metrics["num_inference_steps"] == 7
    assert metrics["exact_match@1"] == 1.0


def test_evaluate_script_with_commit_tokens(overfit_pipeline, tmp_path, monkeypatch):
    """examples/evaluate.py --commit_tokens samples the mask-predict way, records it, and regenerates the pairs."""
    flags = ["--num_return_sequences", "2", "--commit_tokens", "--device", "cpu"]
    metrics = run_evaluate_script(overfit_pipeline, tmp_path, monkeypatch, *flags)
    assert metrics["commit_tokens"] is True and metrics["rounding"] == "decoder"
    assert metrics["exact_match@1"] == 1.0


def test_compare_predictions_counts_discordant_prompts(tmp_path, monkeypatch, capsys):
    """examples/compare_predictions.py: prompts solved by one model only, and the exact sign test on them (5 against
    0 discordant prompts: two-sided p = 2 / 2**5)."""
    import json

    import compare_predictions

    from codefusion_hf.evaluation_codefusion import write_evaluation

    references = ["ls -l", "df -h", "wc -l a", "pwd", "whoami", "date", "uptime"]
    prompts = [f"p{i}" for i in range(7)]
    baseline = [["ls -l"], ["du"], ["wc"], ["ls"], ["id"], ["cal"], ["uptime"]]
    candidate = [["ls -l"], ["df -h"], ["wc -l b"], ["pwd"], ["whoami"], ["date"], ["uptime"]]
    for name, candidates in (("a", baseline), ("b", candidate)):
        write_evaluation(str(tmp_path / name), prompts, references, candidates, [[0.0]] * 7, {})
    out = tmp_path / "comparison.json"
    argv = ["x", "--baseline", str(tmp_path / "a" / "predictions.jsonl"), "--ks", "1"]
    monkeypatch.setattr(
        sys, "argv", argv + ["--candidate", str(tmp_path / "b" / "predictions.jsonl"), "--output", str(out)]
    )
    compare_predictions.main()
    (result,) = json.loads(out.read_text())["comparisons"]
    assert result["metric"] == "template_match@1" and result["prompts"] == 7
    assert (result["baseline_solved"], result["candidate_solved"]) == (2, 7)
    assert (result["only_baseline"], result["only_candidate"]) == (0, 5)
    assert result["p_value"] == pytest.approx(2 / 2**5)
    with pytest.raises(ValueError, match="same prompts"):
        compare_predictions.compare(
            compare_predictions.read_predictions(str(tmp_path / "a" / "predictions.jsonl")),
            compare_predictions.read_predictions(str(tmp_path / "b" / "predictions.jsonl"))[::-1],
            "template_match",
            1,
        )


def test_rescore_recomputes_metrics_and_keeps_the_run(tmp_path, monkeypatch, capsys):
    """examples/rescore.py: metrics come from the saved candidates under the current rules; run facts stay."""
    import json

    import rescore as rescore_script

    from codefusion_hf.evaluation_codefusion import write_evaluation

    references = ["find . -mtime -7", "ls -l"]
    candidates = [["find /tmp -mtime -30", "ls"], ["ls -a", "ls -l"]]
    stale = {f"{name}@1": 0.0 for name in ("exact_match", "template_match", "bleu", "syntax_valid")}
    stale |= {"machine": "the GPU that generated", "seconds_per_prompt": 0.5}
    write_evaluation(str(tmp_path / "eval"), ["p1", "p2"], references, candidates, [[0, -1], [0, -1]], stale)
    monkeypatch.setattr(sys, "argv", ["x", "--evaluations", str(tmp_path / "eval")])
    rescore_script.main()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["template_match@1"] == 0.5 and metrics["exact_match@1"] == 0.0 and metrics["num_prompts"] == 2
    assert metrics["machine"] == "the GPU that generated" and metrics["seconds_per_prompt"] == 0.5
    assert str(tmp_path / "eval") in capsys.readouterr().out
    with pytest.raises(ValueError, match="predictions.jsonl is missing"):
        rescore_script.rescore(str(tmp_path), "bash")
    with pytest.raises(ValueError, match="give the --language the folder was evaluated with"):
        rescore_script.rescore(str(tmp_path / "eval"), "python")  # would drop template match


def test_benchmark_inference_steps(tiny_pipeline, tmp_path, monkeypatch):
    import json

    import benchmark_inference_steps

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in [("list files", "ls"), ("a", "b")])
    )
    output = tmp_path / "steps.json"
    argv = ["x", "--model", str(tmp_path / "pipe"), "--test_file", str(data), "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv + ["--steps", "1", "3", "--num_return_sequences", "2", "--device", "cpu"])
    benchmark_inference_steps.main()
    runs = json.loads(output.read_text())["runs"]
    assert [run["num_inference_steps"] for run in runs] == [1, 3]
    assert all(run["num_prompts"] == 2 and "template_match@1" in run and run["seconds_per_prompt"] > 0 for run in runs)
    assert not any(run["commit_tokens"] for run in runs)
    monkeypatch.setattr(sys, "argv", argv + ["--steps", "2", "--num_return_sequences", "2", "--commit_tokens"])
    benchmark_inference_steps.main()
    (run,) = json.loads(output.read_text())["runs"]
    assert run["commit_tokens"] and run["num_inference_steps"] == 2 and run["num_prompts"] == 2


def test_results_table_and_plot(tmp_path):
    import plot_results

    results = {
        "AR": {"exact_match@1": 0.1, "exact_match@3": 0.2, "template_match@1": 0.25, "bleu@1": 26.53},
        "CF": {"exact_match@1": 0.0, "exact_match@3": 0.05, "seconds_per_prompt": 0.0125},
    }
    lines = plot_results.markdown_table(results).splitlines()
    assert lines[0].startswith("| model | template@1 | exact@1 | exact@3 | BLEU@1 |")
    assert lines[2].startswith("| AR | 25.0 | 10.0 | 20.0 | 26.5 |")
    assert lines[3].startswith("| CF | – | 0.0 | 5.0 | – |") and lines[3].endswith("| 0.0125 |")
    assert lines[0].endswith("| BLEU@1 | s/prompt |")  # columns no model has are left out
    plot_results.plot_top_k(results, str(tmp_path / "topk.png"))
    assert (tmp_path / "topk.png").stat().st_size > 1000


def test_steps_plot(tmp_path):
    """Rates are plotted in percent, BLEU in its own points; metrics a run lacks are left out."""
    import json

    import plot_results

    runs = [
        {"num_inference_steps": n, "template_match@1": 0.01 * n, "bleu@1": 2.5, "seconds_per_prompt": 0.1 * n}
        for n in (5, 10)
    ]
    (tmp_path / "steps.json").write_text(json.dumps({"runs": runs}))
    figure = plot_results.plot_steps(str(tmp_path / "steps.json"), str(tmp_path / "steps.png"))
    lines = {line.get_label(): list(line.get_ydata()) for line in figure.axes[0].lines}
    assert lines == {"template_match@1": [5.0, 10.0], "bleu@1": [2.5, 2.5]}
    assert list(figure.axes[1].lines[0].get_ydata()) == [0.5, 1.0]
    assert (tmp_path / "steps.png").stat().st_size > 1000


@pytest.mark.parametrize("rounding", [None, "decoder"])
def test_diagnose_reports_every_stage(tiny_pipeline, tmp_path, monkeypatch, rounding):
    import json

    import diagnose

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in [("list files", "ls -l"), ("a", "b")])
    )
    argv = ["x", "--model", str(tmp_path / "pipe"), "--test_file", str(data), "--output", str(tmp_path / "r.json")]
    flags = ["--timesteps", "0", "99", "--refine_from", "50", "--refine_steps", "1", "3", "--num_inference_steps", "4"]
    monkeypatch.setattr(sys, "argv", argv + flags + (["--rounding", rounding] if rounding else []))
    rounded = []
    round_with_decoder = type(tiny_pipeline.model).round_with_decoder
    monkeypatch.setattr(
        type(tiny_pipeline.model),
        "round_with_decoder",
        lambda *a, **k: rounded.append(1) or round_with_decoder(*a, **k),
    )
    diagnose.main()
    report = json.loads((tmp_path / "r.json").read_text())
    for key in (
        "decoder_token_accuracy",
        "denoise@99, shuffled prompts_token_accuracy",
        "refine@50/1 steps, eta 0_token_accuracy",
        "refine@50/3 steps, eta 1_token_accuracy",
        "sampling_token_accuracy",
        "sampling_nearest_embedding_token_accuracy",
        "sampling_clamped_token_accuracy",
    ):
        assert 0 <= report[key] <= 1, key
    assert report["num_rows"] == 2 and report["rounding"] == (rounding or "none")
    assert bool(rounded) == (rounding is not None)  # refinement and sampling round when asked, and only then


def test_force_length():
    from probe_sampling import force_length

    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    logits[..., 1] = 100.0  # pad is the favourite everywhere
    tokens = force_length(logits, torch.tensor([2, 5]), pad_token_id=1).argmax(dim=-1)
    assert (tokens[0, 2:] == 1).all() and (tokens[0, :2] != 1).all() and (tokens[1] != 1).all()


def test_probe_sampling_runs_every_probe(overfit_pipeline, tmp_path, monkeypatch):
    """On memorised pairs: every probe keeps them (the right length, retrieved references refined from t=50)."""
    import json

    import probe_sampling

    overfit_pipeline.save_pretrained(tmp_path / "pipe")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS))
    retrieved = tmp_path / "predictions.jsonl"  # as retrieval.py writes it, here with the right code first
    retrieved.write_text("".join(json.dumps({"prompt": p, "candidates": [c, "ls"]}) + "\n" for p, c in PAIRS))
    argv = ["x", "--model", str(tmp_path / "pipe"), "--test_file", str(data), "--output", str(tmp_path / "p.json")]
    flags = ["--probes", "base", "oracle_length", "guidance", "commit", "renoise", "refine"]
    flags += ["--refine_from", str(retrieved)]
    flags += ["--refine_timestep", "50", "--refine_steps", "5", "--num_return_sequences", "2"]
    monkeypatch.setattr(sys, "argv", argv + flags)
    probe_sampling.main()
    report = json.loads((tmp_path / "p.json").read_text())
    for name in ("base", "oracle_length", "commit", "renoise", "retrieval", "refine@50"):
        assert report[name]["exact_match@1"] == 1.0, name
    assert 0 <= report["guidance"]["template_match@1"] <= 1 and report["guidance"]["num_prompts"] == len(PAIRS)
    assert report["arguments"]["guidance_scale"] == 2.0
    monkeypatch.setattr(sys, "argv", argv + ["--probes", "refine"])
    with pytest.raises(ValueError, match="--refine_from"):
        probe_sampling.main()


def test_offline_bundle_unpacks_and_restores_the_fp32_encoder(tmp_path, code_tokenizer):
    """`offline_bundle.sh unpack` runs first on an offline GPU machine: it must write env.sh and the fp32 encoder."""
    staged = tmp_path / "staged"
    encoder = BertModel(
        BertConfig(
            vocab_size=len(code_tokenizer),
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        )
    )
    encoder.half().save_pretrained(staged / "minilm-fp16")
    code_tokenizer.save_pretrained(staged / "minilm-fp16")
    code_tokenizer.save_pretrained(staged / "nl2bash-tokenizer")
    (staged / "nl2bash").mkdir()
    (staged / "nl2bash" / "train.jsonl").write_text('{"nl": "list files", "bash": "ls"}\n')
    (staged / "site" / "bundled_marker").mkdir(parents=True)
    (staged / "site" / "bundled_marker" / "__init__.py").write_text("VALUE = 7\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    with tarfile.open(bundle / "site-packages.tar.xz", "w:xz") as archive:
        archive.add(staged / "site", arcname=".")
    with tarfile.open(bundle / "models-and-data.tar.xz", "w:xz") as archive:
        for name in ("minilm-fp16", "nl2bash-tokenizer", "nl2bash"):
            archive.add(staged / name, arcname=name)

    work = tmp_path / "work dir"  # a space, and a run from outside the repository: env.sh must still be right
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"PYTHON": sys.executable}

    def bash(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)

    result = bash(str(ROOT / "examples" / "offline_bundle.sh"), "unpack", "bundle", "work dir")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers" in result.stdout and "diffusers" in result.stdout

    show = (
        "import bundled_marker, json, os; print(json.dumps([bundled_marker.VALUE, os.environ['PYTHONPATH'], "
        "os.environ['ENCODER'], os.environ['DATA']]))"
    )
    shown = bash("-c", 'source "$1/env.sh" && "$2" -c "$3"', "-", str(work), sys.executable, show)
    assert shown.returncode == 0, shown.stderr[-3000:]
    value, python_path, encoder_dir, data_dir = json.loads(shown.stdout)
    assert value == 7
    assert python_path.split(os.pathsep) == [str(work / "site"), str(ROOT / "src")]
    assert Path(data_dir, "train.jsonl").is_file()
    restored = AutoModel.from_pretrained(encoder_dir)
    assert restored.dtype == torch.float32
    for name, weight in encoder.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], weight.float())


def test_offline_bundle_rejects_an_unknown_mode(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "offline_bundle.sh"), "build", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "use pack or unpack" in result.stderr
