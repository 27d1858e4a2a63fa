"""Recompute the derived numbers of the Benchmarks page and of the Sampling page's speed section (ratios, gaps,
counts, FLOPs, run-to-run ranges) from the committed results files under research/results/, each ratio from the raw
counts or times of one file and one run.

    python research/benchmark_numbers.py
"""

import argparse
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "research" / "results"
FULL = "nl2bash_full_budget_2026-12-02.json"
BEAM, COMMIT = "autoregressive, beam 5", "codefusion, commit, 10 steps"


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def solved(metrics: dict, key: str) -> int:
    return round(metrics[key] * metrics["num_prompts"])


def row(results: list[dict], threads: int, prompts: int) -> dict:
    (found,) = [r for r in results if r["threads"] == threads and r["prompts"] == prompts]
    return found


def full_budget() -> None:
    data = load(FULL)
    tests = {test["metric"]: test for test in data["sign_tests"]["cf_vs_ar-test"]}
    top1, top5 = tests["template_match@1"], tests["template_match@5"]
    print(f"[{FULL}, sign_tests cf_vs_ar-test] test, 2,522 prompts:")
    cf1, ar1, cf5, ar5, n = (top1["candidate_solved"], top1["baseline_solved"], top5["candidate_solved"],
                             top5["baseline_solved"], top1["prompts"])  # fmt: skip
    print(f"  top-1: CodeFusion {cf1}, baseline {ar1} prompts: {100 * cf1 / ar1:.2f}% of the baseline's top-1")
    print(f"  top-5: CodeFusion {cf5}, baseline {ar5} prompts: {100 * cf5 / ar5:.2f}% of it, "
          f"{100 * (ar5 - cf5) / n:.2f} points below")  # fmt: skip
    for split in ("test", "validation"):
        retrieval = data["evaluations"][f"retrieval-{split}"]
        baseline = data["evaluations"][f"ar-{split}"]
        counts = [(solved(baseline, f"template_match@{k}"), solved(retrieval, f"template_match@{k}")) for k in (1, 5)]
        print(f"[{FULL}, evaluations ar-{split} / retrieval-{split}] baseline against the floor, template match "
              f"solved at top-1 {counts[0][0]} : {counts[0][1]}, "
              f"at top-5 {counts[1][0]} : {counts[1][1]}")  # fmt: skip
        sign_tests_from_predictions(split)


def sign_tests_from_predictions(split: str) -> None:
    """The baseline against the floor, prompt by prompt, from the gzipped predictions beside the results file."""
    sys.path.insert(0, str(ROOT))
    from research.compare_predictions import compare

    folder = RESULTS / FULL.removesuffix(".json")

    def read(name: str) -> list[dict]:
        with gzip.open(folder / f"{name}-{split}.jsonl.gz", "rt") as f:
            return [json.loads(line) for line in f if line.strip()]

    floor, baseline = read("retrieval"), read("ar")
    for k in (1, 5):
        test = compare(floor, baseline, "template_match", k)
        print(f"  sign test, predictions in {folder.name}/: top-{k} floor {test['baseline_solved']}, baseline "
              f"{test['candidate_solved']}; only floor {test['only_baseline']} : only baseline "
              f"{test['only_candidate']}, p = {test['p_value']:.2g}")  # fmt: skip


def cpu_levers() -> None:
    name, tuned_name = "nl2bash_distillation_ab_2026-12-02.json", "nl2bash_autoregressive_lr_sweep2_2026-12-02.json"
    tuned = load(tuned_name)["arms"]["lr1e-3"]["validation"]
    t1, t5 = solved(tuned, "template_match@1"), solved(tuned, "template_match@5")
    print(f"[{tuned_name}, arms lr1e-3] tuned baseline, validation: {t1} / {t5} of {tuned['num_prompts']} prompts "
          f"({100 * t1 / tuned['num_prompts']:.2f}% / {100 * t5 / tuned['num_prompts']:.2f}%)")  # fmt: skip
    for arm, result in load(name)["arms"].items():
        metrics = result["validation"]
        c1, c5, n = solved(metrics, "template_match@1"), solved(metrics, "template_match@5"), metrics["num_prompts"]
        print(f"[{name}, arms {arm}] {c1} / {c5} of {n} ({100 * c1 / n:.2f}% / {100 * c5 / n:.2f}%), below the tuned "
              f"baseline by {100 * (t1 - c1) / n:.2f} / {100 * (t5 - c5) / n:.2f} points")  # fmt: skip


def gpu_sweep() -> None:
    name = "nl2bash_gpu_sweep4_2026-11-26.json"
    data = load(name)
    baseline = data["autoregressive/eval-test-beam"]
    b1 = solved(baseline, "template_match@1")
    for variant in ("x0-selfcond-later3-unroll50", "x0-selfcond-later3-unroll50-commit50"):
        metrics = data[f"{variant}/eval-test-commit"]
        c1, c5 = solved(metrics, "template_match@1"), solved(metrics, "template_match@5")
        print(f"[{name}, {variant}/eval-test-commit] {c1} / {c5} of {metrics['num_prompts']}: "
              f"{100 * c1 / metrics['num_prompts']:.2f}% / {100 * c5 / metrics['num_prompts']:.2f}%, top-1 "
              f"{100 * c1 / b1:.1f}% of AR-small's ({b1})")  # fmt: skip
    floor = load("nl2bash_gpu_sweep_2026-11-26.json")
    print(f"[nl2bash_gpu_sweep_2026-11-26.json] holds the retrieval rows: {'retrieval/test' in floor}; "
          f"[{name}] holds them: {any(key.startswith('retrieval') for key in data)}")  # fmt: skip


def speed() -> None:
    same = "nl2bash_full_budget_generation_2026-12-03b.json"
    results = load(same)["runs"]["bf16"]["results"]
    for threads in (2, 1):
        for prompts in (1, 32):
            settings = row(results, threads, prompts)["settings"]
            cf, ar = settings[COMMIT], settings[BEAM]
            print(f"[{same}, runs bf16] {threads} threads, {prompts} prompts: "
                  f"CodeFusion {cf['median_seconds']:.3f} s, "
                  f"beam {ar['median_seconds']:.3f} s: {cf['median_seconds'] / ar['median_seconds']:.2f}x; "
                  f"{cf['flops'] / 1e9:.1f} against {ar['flops'] / 1e9:.1f} GFLOP: "
                  f"{cf['flops'] / ar['flops']:.2f}x")  # fmt: skip
    tradeoff = "nl2bash_full_budget_generation_tradeoff_2026-12-03.json"
    fp32 = row(load(tradeoff)["runs"]["commit10"]["results"], 2, 32)["settings"]
    print(f"[{tradeoff}, runs commit10, fp32] 32 prompts: {fp32[COMMIT]['flops'] / 1e9:.1f} against "
          f"{fp32[BEAM]['flops'] / 1e9:.1f} GFLOP: {fp32[COMMIT]['flops'] / fp32[BEAM]['flops']:.2f}x")  # fmt: skip
    print("one run-to-run range, bf16, uncompiled, committing sampler, 10 steps, 2 threads:")
    runs = [(same, load(same)["runs"]["bf16"]["results"]),
            (tradeoff, load(tradeoff)["runs"]["commit10_bf16"]["results"]),
            ("nl2bash_full_budget_generation_2026-12-03.json",
             load("nl2bash_full_budget_generation_2026-12-03.json")["results"])]  # fmt: skip
    for prompts in (1, 32):
        for file, results in runs:
            settings = row(results, 2, prompts)["settings"]
            cf, ar = settings[COMMIT], settings[BEAM]
            print(f"  [{file}] {prompts} prompts: {cf['median_seconds'] / ar['median_seconds']:.2f}x (CodeFusion "
                  f"{cf['median_seconds']:.3f} s over {len(cf['seconds'])} calls, {min(cf['seconds']):.3f}-"
                  f"{max(cf['seconds']):.3f}; beam {ar['median_seconds']:.3f} s, {min(ar['seconds']):.3f}-"
                  f"{max(ar['seconds']):.3f}; {cf['flops'] / 1e9:.1f} GFLOP)")  # fmt: skip


def bf16_against_fp32() -> None:
    """bf16's speed-up over fp32 for one model's 32-prompt call with 2 threads, each from one file."""
    for name, fp32, bf16 in (
        ("nl2bash_quickstart_generation_amx_2026-12-02.json", "commit10", "commit10_bf16"),
        ("nl2bash_quickstart_generation_2026-12-02.json", "commit10", "commit10_bf16"),
        ("nl2bash_full_budget_generation_tradeoff_2026-12-03.json", "commit10", "commit10_bf16"),
    ):
        data = load(name)
        a, b = (row(data["runs"][run]["results"], 2, 32)["settings"][COMMIT] for run in (fp32, bf16))
        machine = data["runs"][fp32]["machine"]["processor"]
        print(f"[{name}, runs {fp32} / {bf16}] {data['runs'][fp32]['pipeline']} on {machine}: "
              f"{a['median_seconds']:.3f} s fp32, {b['median_seconds']:.3f} s bf16: "
              f"{a['median_seconds'] / b['median_seconds']:.2f}x "
              f"({a['flops'] / 1e9:.1f} GFLOP)")  # fmt: skip


def sampling_page() -> None:
    """The Sampling page's trade-off table and speed paragraphs: each ratio against beam search in its own run."""
    tradeoff = "nl2bash_full_budget_generation_tradeoff_2026-12-03.json"
    runs = load(tradeoff)["runs"]
    print(f"[{tradeoff}] 2 threads; 1 prompt: s (x beam 5), 32 prompts: s (x beam 5), GFLOP at 32, validation "
          f"(first 500 prompts) template@1 / @5, BLEU@1, s/prompt:")  # fmt: skip
    beam_one = {}
    for run, result in runs.items():
        one, many = row(result["results"], 2, 1), row(result["results"], 2, 32)
        beam_one.setdefault(result["dtype"], []).append(one["settings"][BEAM]["median_seconds"])
        for setting, val in result["validation"].items():
            a, b = one["settings"][setting], many["settings"][setting]
            print(f"  {run}, {setting} ({result['dtype']}, {result['pipeline_kwargs']}): "
                  f"{a['median_seconds']:.3f} ({one['ratio_to_beam_5'][setting]:.2f}x) | "
                  f"{b['median_seconds']:.3f} ({many['ratio_to_beam_5'][setting]:.2f}x) | {b['flops'] / 1e9:.1f} | "
                  f"{100 * val['template_match@1']:.1f} | {100 * val['template_match@5']:.1f} | {val['bleu@1']:.2f} | "
                  f"{val['seconds_per_prompt']:.3f}")  # fmt: skip
    for dtype, seconds in beam_one.items():
        print(f"  beam 5, one prompt, 2 threads, medians across the {dtype} runs: "
              f"{min(seconds):.3f}-{max(seconds):.3f} s")  # fmt: skip
    fp32 = runs["commit10"]["results"]
    print("  fp32 defaults, one prompt: " + ", ".join(
        f"{row(fp32, t, 1)['ratio_to_beam_5'][COMMIT]:.2f}x with {t} threads" for t in (2, 1)))  # fmt: skip
    plain, stable = (row(runs[run]["results"], 2, 32)["settings"][COMMIT]["flops"] for run in
                     ("commit10_bf16", "commit10_bf16_stable2"))  # fmt: skip
    print(f"  stop_when_stable=2, bf16, 32 prompts: {stable / 1e9:.1f} against {plain / 1e9:.1f} GFLOP, "
          f"{100 * (1 - stable / plain):.2f}% fewer")  # fmt: skip
    same = "nl2bash_full_budget_generation_2026-12-03b.json"
    runs = load(same)["runs"]
    for run in ("bf16", "bf16_compiled", "bf16_steps5"):
        for threads in (2, 1):
            for prompts in (1, 32):
                found = row(runs[run]["results"], threads, prompts)
                ratios = found["ratio_to_beam_5"]
                (setting,) = [s for s in ratios if s.startswith("codefusion")]
                cf, ar = found["settings"][setting], found["settings"][BEAM]
                peak = found["matmul_peak_flops_per_second"] / 1e9
                print(f"[{same}, runs {run}] {threads} threads, {prompts} prompts: {ratios[setting]:.2f}x "
                      f"({cf['median_seconds']:.3f} against {ar['median_seconds']:.3f} s); share of the matmul peak "
                      f"({peak:.1f} GFLOP/s): CodeFusion {100 * cf['share_of_matmul_peak']:.1f}%, "
                      f"beam {100 * ar['share_of_matmul_peak']:.1f}%")  # fmt: skip


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    full_budget()
    cpu_levers()
    gpu_sweep()
    speed()
    bf16_against_fp32()
    sampling_page()


if __name__ == "__main__":
    main()
