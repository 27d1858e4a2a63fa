"""The research tools (research/): each answers its question on a tiny pipeline or on hand-made evaluations, the
offline GPU bundle unpacks, and the shell scripts find the files they run."""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import PAIRS
from transformers import AutoModel, BertConfig, BertModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # the tools as modules of the repository root: `from research import diagnose`


def test_compare_predictions_counts_discordant_prompts(tmp_path, monkeypatch, capsys):
    """research/compare_predictions.py: prompts solved by one model only, and the exact sign test on them (5 against
    0 discordant prompts: two-sided p = 2 / 2**5)."""
    from codefusion_hf.evaluation_codefusion import write_evaluation
    from research import compare_predictions

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
    """research/rescore.py: metrics come from the saved candidates under the current rules; run facts stay."""
    from codefusion_hf.evaluation_codefusion import write_evaluation
    from research import rescore as rescore_script

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
    from research import benchmark_inference_steps

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
    from research import plot_results

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
    from research import plot_results

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


def test_generation_tradeoff_plot(tmp_path):
    """One point per timed setting and file, at its seconds per prompt; template match in percent."""
    from research import plot_results

    files = []
    for index, options in enumerate([{}, {"stop_when_stable": 2}]):
        setting = "codefusion, commit, 10 steps"
        metrics = {"seconds_per_prompt": 0.5 + index, "bleu@1": 10.0 + index, "template_match@5": 0.02}
        metrics["template_match@1"] = 0.01
        timed = [(2, 1, 0.2, 0.9, None), (1, 32, 9.0, 0.8, 2e12), (2, 32, 3.0, 0.6, 1.5e12)][: 3 - 2 * index]
        results = [
            {
                "threads": threads,
                "prompts": prompts,
                "settings": {setting: {"median_seconds": seconds, "flops": flops}},
                "ratio_to_beam_5": {setting: ratio},
            }
            for threads, prompts, seconds, ratio, flops in timed
        ]
        report = {"pipeline_kwargs": options, "validation": {setting: metrics}, "results": results}
        report |= {"dtype": "torch.bfloat16", "compiled": True} if index else {"dtype": "torch.float32"}
        files.append(str(tmp_path / f"generation_{index}.json"))
        Path(files[-1]).write_text(json.dumps(report))
    table = plot_results.generation_table(files)
    assert table.splitlines()[2:] == [
        "| commit, 10 steps | 0.200 (0.90x) | 3.000 (0.60x) | 1,500 | 1.0 | 2.0 | 10.00 | 0.500 |",
        "| commit, 10 steps, stop_when_stable=2, bf16, compiled | 0.200 (0.90x) | – | – | 1.0 | 2.0 | 11.00 | 1.500 |",
    ]
    figure = plot_results.plot_generation(files, str(tmp_path / "tradeoff.png"))
    points = [collection.get_offsets().tolist()[0] for collection in figure.axes[1].collections]
    assert points == [[0.5, 2.0], [1.5, 2.0]]
    labels = [collection.get_label() for collection in figure.axes[0].collections]
    assert labels == ["commit, 10 steps", "commit, 10 steps, stop_when_stable=2, bf16, compiled"]
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000


def test_packed_canvas_ab_times_both_layouts_and_restores_the_model(tiny_pipeline, tmp_path, monkeypatch):
    from codefusion_hf import modeling_codefusion
    from research import packed_canvas_ab

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    output = tmp_path / "ab.json"
    argv = ["x", "--pipeline", str(tmp_path / "pipe"), "--lengths", "6", "3", "--calls", "2", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    packed_canvas_ab.main()
    report = json.loads(output.read_text())
    assert report["positions"] == {"own": 9, "padded": 12}
    assert set(report["milliseconds"]) == {"packed", "padded"}
    assert all(times["median"] > 0 for times in report["milliseconds"].values())
    assert modeling_codefusion.CodeFusionPackedCanvas is not packed_canvas_ab.PaddedCanvas


@pytest.mark.parametrize("rounding", [None, "decoder"])
def test_diagnose_reports_every_stage(tiny_pipeline, tmp_path, monkeypatch, rounding):
    from research import diagnose

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in [("list files", "ls -l"), ("a", "b")])
    )
    argv = ["x", "--model", str(tmp_path / "pipe"), "--test_file", str(data), "--output", str(tmp_path / "r.json")]
    flags = ["--timesteps", "0", "99", "--refine_from", "50", "--refine_steps", "1", "3", "--num_inference_steps", "4"]
    monkeypatch.setattr(sys, "argv", argv + flags + (["--rounding", rounding] if rounding else []))
    roundings = []  # the rounding of every x0 estimate the sampler pulls onto tokens
    round_estimate = type(tiny_pipeline.model).round_estimate
    monkeypatch.setattr(
        type(tiny_pipeline.model),
        "round_estimate",
        lambda self, estimate, rounding, *a, **k: (
            roundings.append(rounding) or round_estimate(self, estimate, rounding, *a, **k)
        ),
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
    assert report["noised@0_nearest_embedding_token_accuracy"] == 1.0  # almost no noise: every token is its own
    assert report["noised@99_nearest_embedding_token_accuracy"] < 1.0  # the last step of 100: almost pure noise
    assert report["num_rows"] == 2 and report["rounding"] == (rounding or "none")
    # Refinement and sampling round with the decoder when asked, and only then (the clamped run rounds to "nearest").
    assert ("decoder" in roundings) == (rounding is not None)


def test_force_length():
    from research.probe_sampling import force_length

    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    logits[..., 1] = 100.0  # pad is the favourite everywhere
    tokens = force_length(logits, torch.tensor([2, 5]), pad_token_id=1).argmax(dim=-1)
    assert (tokens[0, 2:] == 1).all() and (tokens[0, :2] != 1).all() and (tokens[1] != 1).all()


def test_probe_sampling_runs_every_probe(overfit_pipeline, tmp_path, monkeypatch):
    """On memorised pairs: every probe keeps them (the right length, retrieved references refined from t=50)."""
    from research import probe_sampling

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

    result = bash(str(ROOT / "research" / "offline_bundle.sh"), "unpack", "bundle", "work dir")
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
        ["bash", str(ROOT / "research" / "offline_bundle.sh"), "build", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "use pack or unpack" in result.stderr


# A repository path a shell script names, from the root or from `$root`: a script, a config, a data or docs file
# (`${...}` ends it; `$data/train.jsonl` is a variable's folder, not the repository's data/).
REPOSITORY_PATH = re.compile(r"(?:(?<=\$root/)|(?<![\w./$-]))(?:examples|research|docs|data)/[\w./-]*\w")
SHELL_SCRIPTS = sorted(ROOT.glob("research/*.sh")) + sorted(ROOT.glob("examples/*/*.sh"))


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=[script.name for script in SHELL_SCRIPTS])
def test_shell_scripts_name_files_that_exist(script):
    """The scripts find each other by their place in the repository: a move must update them."""
    missing = sorted({path for path in REPOSITORY_PATH.findall(script.read_text()) if not (ROOT / path).exists()})
    assert not missing, f"{script.relative_to(ROOT)} names {missing}"


def test_refine_drafts_reports_each_strength_beside_the_drafts(overfit_pipeline, tmp_path):
    from research import refine_drafts

    overfit_pipeline.save_pretrained(tmp_path / "pipe")
    drafts = tmp_path / "predictions.jsonl"
    drafts.write_text("".join(json.dumps({"prompt": p, "reference": c, "candidates": [c]}) + "\n" for p, c in PAIRS))
    common = ["--model", str(tmp_path / "pipe"), "--drafts", str(drafts), "--output", str(tmp_path / "out.json")]
    summary = refine_drafts.main(
        [*common, "--strengths", "0.5", "1.0", "--num_return_sequences", "1", "--num_inference_steps", "4"]
    )
    assert summary["drafts"]["exact_match@1"] == 1.0
    assert set(summary["refined"]) == {"0.5", "1.0"}
    assert all(metrics["strength"] in (0.5, 1.0) and metrics["init_code"] for metrics in summary["refined"].values())
    assert summary["refined"]["0.5"]["top1_copies_its_draft"] == 1.0  # the memorised code, from its own draft
    assert json.loads((tmp_path / "out.json").read_text()) == summary
    with pytest.raises(ValueError, match="--strengths must lie in"):
        refine_drafts.main([*common, "--strengths", "0"])
    drafts.write_text('{"prompt": "ls"}\n')
    with pytest.raises(ValueError, match="must hold prompt, reference and candidates"):
        refine_drafts.main(common)


def test_summarize_ab_collects_every_arm(tmp_path):
    """research/summarize_ab.py: each arm's steps and last eval loss, its metrics, its sign tests, and extra
    evaluations of an arm with their own sign tests; a folder with no arm is an error."""
    from research import summarize_ab

    for name, loss in (("control", 3.0), ("clip", 2.5)):
        (tmp_path / name).mkdir()
        history = [{"loss": 4.0, "step": 5}, {"eval_loss": loss + 1, "step": 5}, {"eval_loss": loss, "step": 10}]
        (tmp_path / name / "trainer_state.json").write_text(json.dumps({"global_step": 10, "log_history": history}))
        (tmp_path / f"eval-{name}").mkdir()
        (tmp_path / f"eval-{name}" / "metrics.json").write_text(json.dumps({"template_match@1": loss / 100}))
    (tmp_path / "eval-control-cedi").mkdir()
    (tmp_path / "eval-control-cedi" / "metrics.json").write_text(json.dumps({"template_match@1": 0.5}))
    (tmp_path / "eval-control-cedi.log").write_text("a log, not an evaluation")
    (tmp_path / "control-cedi_vs_control.json").write_text(json.dumps({"comparisons": [{"p_value": 0.5}]}))
    (tmp_path / "clip_vs_control.json").write_text(json.dumps({"comparisons": [{"p_value": 0.04}]}))
    arms = summarize_ab.summarize(tmp_path)
    assert arms["clip"] == {
        "steps": 10,
        "eval_loss": 2.5,
        "validation": {"template_match@1": 0.025},
        "extra_evaluations": {},
        "sign_tests": {"control": [{"p_value": 0.04}]},
    }
    assert arms["control"]["extra_evaluations"] == {
        "cedi": {"validation": {"template_match@1": 0.5}, "sign_tests": [{"p_value": 0.5}]}
    }
    with pytest.raises(SystemExit, match="no arm"):
        summarize_ab.summarize(tmp_path / "control")


def test_summarize_full_budget_collects_training_evaluations_and_sign_tests(tmp_path, monkeypatch, capsys):
    """research/summarize_full_budget.py: both models' steps and best eval loss, every evaluation's metrics and
    every sign test, the predictions gzipped; a folder without both models is an error."""
    import gzip

    from research import summarize_full_budget

    for folder, losses in (("cf", []), ("ar/lr1e-3", [3.0, 2.5, 2.7])):
        (tmp_path / folder).mkdir(parents=True)
        history = [{"loss": 4.0, "step": 5}] + [{"eval_loss": loss, "step": 10} for loss in losses]
        state = {"global_step": 30, "log_history": history, "best_model_checkpoint": None}
        (tmp_path / folder / "trainer_state.json").write_text(json.dumps(state))
    for name in ("cf-validation", "ar-test"):
        (tmp_path / f"eval-{name}").mkdir()
        (tmp_path / f"eval-{name}" / "metrics.json").write_text(json.dumps({"template_match@1": 0.1}))
        (tmp_path / f"eval-{name}" / "predictions.jsonl").write_text(f'{{"prompt": "{name}"}}\n')
    (tmp_path / "eval-cf-test.log").write_text("a log, not an evaluation")
    (tmp_path / "cf_vs_ar-test.json").write_text(json.dumps({"comparisons": [{"p_value": 0.5}]}))
    summary = summarize_full_budget.summarize(tmp_path)
    assert summary["training"]["autoregressive"] == {
        "steps": 30,
        "eval_losses": 3,
        "best_eval_loss": 2.5,
        "best_model_checkpoint": None,
    }
    assert summary["training"]["codefusion"]["best_eval_loss"] is None
    assert set(summary["evaluations"]) == {"cf-validation", "ar-test"}
    assert summary["sign_tests"] == {"cf_vs_ar-test": [{"p_value": 0.5}]}
    output, predictions = tmp_path / "summary.json", tmp_path / "predictions"
    argv = ["x", str(tmp_path), "--command", "c", "--machine", "m", "--date", "d", "--output", str(output)]
    monkeypatch.setattr("sys.argv", [*argv, "--predictions", str(predictions)])
    summarize_full_budget.main()
    assert json.loads(output.read_text())["date"] == "d"
    assert gzip.decompress((predictions / "ar-test.jsonl.gz").read_bytes()) == b'{"prompt": "ar-test"}\n'
    with pytest.raises(SystemExit, match="no trainer_state.json in cf"):
        summarize_full_budget.summarize(tmp_path / "ar")


def test_retrieval_recall_counts_the_reference_among_the_neighbours(tmp_path, monkeypatch):
    """research/retrieval_recall.py on both splits' layout: each verbatim prompt's own command is its nearest pair
    for every retriever; a reworded command of the same template counts for template recall only."""
    from research import retrieval_recall

    train = [{"prompt": prompt, "code": code} for prompt, code in PAIRS]
    queries = [
        {"prompt": "list all files", "code": "ls -la"},
        {"prompt": "count lines in a.txt", "code": "wc -l b.txt"},
    ]
    (tmp_path / "grouped_split").mkdir()
    for folder in ("", "grouped_split/"):
        for name, rows in (("train", train), ("validation", queries), ("test", queries)):
            (tmp_path / f"{folder}{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "recall.json"
    monkeypatch.setattr("sys.argv", ["x", "--data_dir", str(tmp_path), "--output", str(output)])
    retrieval_recall.main()
    results = json.loads(output.read_text())
    assert set(results["splits"]) == {"codefusion/validation", "codefusion/test", "grouped/validation", "grouped/test"}
    for entry in results["splits"].values():
        assert entry["reference_in_corpus"] == {"exact": 0.5, "template": 1.0}
        for method in ("tfidf", "bm25", "dense"):
            scores = entry["methods"][method]
            assert scores["exact"]["recall@1"] == 0.5 and scores["template"]["recall@1"] == 1.0
            assert scores["template"]["distinct_recall@20"] == 1.0
    expected = {f"{kind}recall@{k}": float(k > 1) for k in (1, 5, 10, 20) for kind in ("", "distinct_")}
    assert retrieval_recall.recall([[0, 1, 2]], ["a", "a", "b"], ["b"]) == expected


@pytest.mark.parametrize("method", ["tfidf", "bm25"])
def test_the_retrieval_floor_returns_the_nearest_pairs_distinct_commands(method, tmp_path, monkeypatch):
    """research/baselines/retrieval.py: a prompt of the corpus gets its own command first, then other distinct
    commands, best first; metrics.json says which retriever ranked them."""
    from research.baselines import retrieval

    rows = [*PAIRS, (PAIRS[0][0] + " now", PAIRS[0][1])]  # a second pair with the first one's command
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in rows))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS[:2]))
    argv = ["x", "--train_file", str(train), "--test_file", str(test), "--output_dir", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", [*argv, "--method", method, "--num_candidates", "3"])
    retrieval.main()
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    for (prompt, code), row in zip(PAIRS, predictions):
        assert row["candidates"][0] == code and len(set(row["candidates"])) == len(row["candidates"]) == 3
        assert row["scores"] == sorted(row["scores"], reverse=True)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["exact_match@1"] == 1.0
