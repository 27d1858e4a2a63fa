"""Find which stage of a trained CodeFusion pipeline fails: the decoder, denoising at each noise level, the
conditioning on the prompt, or sampling from pure noise. Writes a JSON report.

    python research/diagnose.py --model runs/nl2bash-finetune --test_file data/nl2bash/validation.jsonl \
        --max_samples 128 --output runs/eval/nl2bash-diagnosis.json

Token accuracy is measured on code tokens only (pad positions excluded) unless said otherwise.
- decoder: the decoder reading the clean code embeddings L(y). Low means the decoder is the bottleneck.
- denoise@t: one denoiser call on L(y) noised to step t, then the decoder on the x0 estimate.
- noised@t, nearest embedding: L(y) noised to step t and rescaled by 1 / sqrt(alpha_bar_t), read by nearest code
  embedding. Where it stays near 1, the noise cannot move a token off itself and the denoiser has little to learn:
  DINOISER's criterion for `min_train_timestep`.
- denoise@t, shuffled prompts: the same with every row given another row's prompt; the gap to the matched prompts
  is how much the model uses the prompt at that noise level.
- refine@t/n steps: L(y) noised to step t, then n sampler steps down to 0 (evenly spaced, deterministic DDIM and
  ancestral eta=1), then the decoder. If more steps do not beat one step, the sampler does not refine.
- sampling: full generation from pure noise (DDIM, top-1): token accuracy against the reference canvas, exact
  match, and the share of distinct outputs across prompts for one seed; the same canvases read by nearest code
  embedding instead of the decoder, and a run that snaps every x0 estimate to the nearest embedding.
"""

import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import HfArgumentParser

from codefusion_hf import CodeFusionPipeline
from codefusion_hf.constants import ROUNDINGS
from codefusion_hf.data_codefusion import load_code_dataset
from codefusion_hf.metrics import exact_match
from codefusion_hf.sampling_options_codefusion import SamplingOptions


@dataclass
class DiagnosisArguments:
    model: str = field(metadata={"help": "Saved pipeline folder or Hub repo id."})
    test_file: str = field(metadata={"help": "Rows with prompt and code."})
    output: str = field(metadata={"help": "JSON report to write."})
    max_samples: int = field(default=128)
    timesteps: list[int] = field(default_factory=lambda: [0, 100, 300, 600, 900, 1100, 1199])
    num_inference_steps: int = field(default=20)
    refine_from: int = field(default=1100)
    refine_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 20])
    seed: int = field(default=0)
    rounding: str | None = field(
        default=None,
        metadata={
            "help": "Sampler rounding for the refine and sampling runs (default: the model's own).",
            "choices": list(ROUNDINGS),
        },
    )


def token_accuracy(token_ids: torch.Tensor, labels: torch.Tensor, code_positions: torch.Tensor) -> float:
    return ((token_ids == labels) & code_positions).sum().item() / code_positions.sum().item()


def refine(pipe, prompts, clean, start: int, num_steps: int, eta: float, rounding: str) -> torch.Tensor:
    """Noise `clean` to step `start`, run the pipeline's sampler from there with `num_steps` evenly spaced
    timesteps, and return the final canvases."""
    timesteps = torch.linspace(start, 0, num_steps + 1).round().long()[:-1]
    latents = pipe.scheduler.add_noise(clean, torch.randn_like(clean), timesteps[:1])
    output = pipe(
        prompts, timesteps=timesteps.tolist(), latents=latents, eta=eta, rounding=rounding, output_type="latent"
    )
    return output.code[:, 0]


@torch.no_grad()
def main():
    (args,) = HfArgumentParser(DiagnosisArguments).parse_args_into_dataclasses()
    data = load_code_dataset(args.test_file, max_samples=args.max_samples)
    prompts, references = list(data["prompt"]), list(data["code"])
    pipe = CodeFusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    model, config = pipe.model, pipe.model.config
    torch.manual_seed(args.seed)

    labels = pipe.code_to_ids(references)
    code_positions = labels != config.pad_token_id
    states, mask = pipe.encode_prompt(prompts, model.device)
    shuffle = torch.roll(torch.arange(len(data)), 1)
    clean = model.embed_code(labels)

    rounding = (
        SamplingOptions(rounding=args.rounding)
        .resolved(config=config, scheduler=pipe.scheduler, refining=False)
        .rounding
    )
    report = {"model": args.model, "test_file": args.test_file, "num_rows": len(data), "rounding": rounding}
    report["decoder_token_accuracy"] = token_accuracy(
        model.decode(clean, states, mask).argmax(-1), labels, code_positions
    )
    for t in args.timesteps:
        timesteps = torch.full((len(data),), t)
        noisy = model.noise_scheduler.add_noise(clean, torch.randn_like(clean), timesteps)
        rescaled = noisy / model.noise_scheduler.alphas_cumprod[t].sqrt()
        nearest = torch.cdist(rescaled, model.code_embedding_matrix()[None]).argmin(-1)
        report[f"noised@{t}_nearest_embedding_token_accuracy"] = token_accuracy(nearest, labels, code_positions)
        for name, (s, m) in {"": (states, mask), ", shuffled prompts": (states[shuffle], mask[shuffle])}.items():
            estimate = pipe.scheduler.estimate_original_sample(model.denoise(noisy, timesteps, s, m), timesteps, noisy)
            logits = model.decode(estimate, s, m)
            report[f"denoise@{t}{name}_token_accuracy"] = token_accuracy(logits.argmax(-1), labels, code_positions)
            report[f"denoise@{t}{name}_embedding_mse"] = F.mse_loss(estimate, clean).item()

    for num_steps in args.refine_steps:
        for eta in (0.0, 1.0):
            latents = refine(pipe, prompts, clean, args.refine_from, num_steps, eta, rounding)
            report[f"refine@{args.refine_from}/{num_steps} steps, eta {eta:g}_token_accuracy"] = token_accuracy(
                model.decode(latents, states, mask).argmax(-1), labels, code_positions
            )

    def sample(**kwargs):
        """Top-1 of a full generation from pure noise, from the same seeded starting noise every time."""
        generator = torch.Generator().manual_seed(args.seed)
        kwargs = {"rounding": rounding} | kwargs
        code = pipe(prompts, num_inference_steps=args.num_inference_steps, generator=generator, **kwargs).code
        return [candidates[0] for candidates in code] if isinstance(code, list) else code[:, 0]

    # The same samples as token ids (token accuracy), as text (exact match) and as canvases (nearest embedding).
    top1 = sample()
    report["sampling_token_accuracy"] = token_accuracy(sample(output_type="pt"), labels, code_positions)
    report["sampling_exact_match"] = sum(map(exact_match, top1, references)) / len(data)
    report["sampling_distinct_top1_rate"] = len(set(top1)) / len(top1)
    nearest = torch.cdist(sample(output_type="latent"), model.code_embedding_matrix()[None]).argmin(-1)
    report["sampling_nearest_embedding_token_accuracy"] = token_accuracy(nearest, labels, code_positions)
    clamped = sample(output_type="pt", rounding="nearest")
    report["sampling_clamped_token_accuracy"] = token_accuracy(clamped, labels, code_positions)
    report["sampling_non_empty_rate"] = sum(bool(code.strip()) for code in top1) / len(top1)
    report["reference_distinct_rate"] = len(set(references)) / len(data)
    report["examples"] = [{"reference": r, "top1": p} for r, p in zip(references[:10], top1[:10])]

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    for name, value in report.items():
        if name != "examples":
            print(f"{name:>50}  {value:.4f}" if isinstance(value, float) else f"{name:>50}  {value}")


if __name__ == "__main__":
    main()
