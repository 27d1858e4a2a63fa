"""Inference-time probes of a trained pipeline: would the right code length, classifier-free guidance, or starting
from retrieved code make its candidates better? Each probe changes only how the pipeline samples; writes JSON.

    python research/probe_sampling.py --model runs/nl2bash-finetune \
        --test_file data/nl2bash/validation.jsonl --max_samples 256 --output runs/eval/probes.json \
        --probes base oracle_length guidance refine --refine_from runs/retrieval/nl2bash-validation/predictions.jsonl

- base: the pipeline as it is (k candidates, `--num_inference_steps` DDIM steps, `--rounding`).
- oracle_length: every decoder read-out (each step's rounding and the final canvas) is forced to end the code at
  the reference's token count: pad after it, no pad before it. An upper bound on what a length predictor could give;
  it looks at the reference, so it is a diagnosis, not a result.
- guidance: the pipeline's classifier-free guidance (`guidance_scale=--guidance_scale`), whose unconditional pass
  reads Gaussian noise as the prompt states (phase 1's unconditional task; phase 2 trains it only with
  `--prompt_dropout_probability`).
- commit: the pipeline with `CodeFusionCommitScheduler` (mask-predict's schedule on the continuous canvas).
- renoise: the same sampler without committing anything before the last step: each step re-noises the decoder's
  tokens with fresh noise to the next timestep. Separates what committing adds from what re-noising does.
- refine: start each candidate from one of the k retrieved snippets of `--refine_from` (predictions.jsonl of
  research/baselines/retrieval.py, same rows in the same order), noised to step `--refine_timestep`, and denoise it
  with the prompt in `--refine_steps` steps (SDEdit). Candidates are ranked by the pipeline's score.
"""

import json
import os
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from codefusion_hf import CodeFusionCommitScheduler, CodeFusionPipeline
from codefusion_hf.constants import ROUNDINGS
from codefusion_hf.data_codefusion import load_code_dataset
from codefusion_hf.evaluation_codefusion import score_candidates

PROBES = ("base", "oracle_length", "guidance", "commit", "renoise", "refine")


@dataclass
class ProbeArguments:
    model: str = field(metadata={"help": "Saved pipeline folder or Hub repo id."})
    test_file: str = field(metadata={"help": "Rows with prompt and code."})
    output: str = field(metadata={"help": "JSON report to write."})
    probes: list[str] = field(default_factory=lambda: ["base", "oracle_length"], metadata={"choices": PROBES})
    max_samples: int = field(default=256)
    num_return_sequences: int = field(default=5)
    num_inference_steps: int = field(default=20)
    rounding: str = field(default="decoder", metadata={"choices": list(ROUNDINGS)})
    guidance_scale: float = field(default=2.0)
    refine_from: str | None = field(default=None, metadata={"help": "predictions.jsonl of retrieval.py."})
    refine_timestep: list[int] = field(default_factory=lambda: [300, 600, 900])
    refine_steps: int = field(default=10)
    batch_size: int = field(default=16)


def force_length(logits: torch.Tensor, lengths: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Logits whose argmax is pad exactly from position `lengths[row]` on."""
    after = torch.arange(logits.shape[1], device=logits.device)[None, :] >= lengths[:, None]
    big = torch.finfo(logits.dtype).max / 4
    logits = logits.masked_fill(after[..., None], -big)
    logits[..., pad_token_id] = torch.where(after, big, -big)
    return logits


def main():
    (args,) = HfArgumentParser(ProbeArguments).parse_args_into_dataclasses()
    if "refine" in args.probes and args.refine_from is None:
        raise ValueError("refine needs --refine_from: a predictions.jsonl of research/baselines/retrieval.py.")
    pipe = CodeFusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    model, config, tokenizer, k = pipe.model, pipe.model.config, pipe.tokenizer, args.num_return_sequences
    data = load_code_dataset(args.test_file, max_samples=args.max_samples)
    prompts, references = list(data["prompt"]), list(data["code"])
    reference_ids = tokenizer(references, add_special_tokens=False)["input_ids"]
    reference_lengths = torch.tensor([len(ids) for ids in reference_ids])

    decode = model.decode
    state = {"lengths": None, "commit": True}

    def probed_decode(latents, *args, **kwargs):
        logits = decode(latents, *args, **kwargs)
        lengths = state["lengths"]
        return logits if lengths is None else force_length(logits, lengths, config.pad_token_id)

    model.decode = probed_decode
    denoising_scheduler = pipe.scheduler
    commit_scheduler = CodeFusionCommitScheduler.from_config(pipe.scheduler.config)
    commit_count = commit_scheduler.commit_count

    def probed_commit_count(step_index: int, canvas_length: int) -> int:
        last = step_index + 1 == len(commit_scheduler.timesteps)
        return commit_count(step_index, canvas_length) if state["commit"] or last else 0

    commit_scheduler.commit_count = probed_commit_count

    def sample(name: str, **probe) -> list[list[str]]:
        committing = name in ("commit", "renoise")
        pipe.scheduler = commit_scheduler if committing else denoising_scheduler
        state["commit"] = name == "commit"
        candidates = []
        for start in range(0, len(prompts), args.batch_size):
            batch = slice(start, start + args.batch_size)
            if name == "oracle_length":
                state["lengths"] = reference_lengths[batch].repeat_interleave(k)
            generator = torch.Generator().manual_seed(start)
            kwargs = {"num_inference_steps": args.num_inference_steps}
            if name == "refine":
                kwargs = refine_start(probe["retrieved"][batch], probe["timestep"], generator)
            kwargs |= {"num_return_sequences": k, "generator": generator, "rounding": args.rounding}
            if name == "guidance":
                kwargs["guidance_scale"] = args.guidance_scale
            if committing:
                kwargs["rounding"] = "decoder"
            output = pipe(prompts[batch], **kwargs)
            candidates += output.code
        state["lengths"] = None
        return candidates

    def refine_start(retrieved: list[list[str]], timestep: int, generator: torch.Generator) -> dict:
        codes = [code for row in retrieved for code in (row + row[-1:] * k)[:k]]
        clean = model.embed_code(pipe.code_to_ids(codes))
        noise = torch.randn(clean.shape, generator=generator)
        latents = pipe.scheduler.add_noise(clean, noise, torch.full((len(codes),), timestep))
        steps = args.refine_steps
        timesteps = sorted({round(timestep * (1 - i / steps)) for i in range(steps)}, reverse=True)
        return {"latents": latents, "timesteps": timesteps}

    def report(candidates: list[list[str]]) -> dict:
        metrics = score_candidates(candidates, references, "bash")
        metrics["top1_words"] = sum(len(c[0].split()) for c in candidates) / len(candidates)
        return metrics

    results = {"reference_words": sum(len(r.split()) for r in references) / len(references)}
    with torch.no_grad():
        for name in args.probes:
            if name != "refine":
                results[name] = report(sample(name))
                continue
            with open(args.refine_from) as f:
                retrieved = [json.loads(line)["candidates"] for line in f][: len(prompts)]
            results["retrieval"] = report([row[:k] for row in retrieved])
            for timestep in args.refine_timestep:
                results[f"refine@{timestep}"] = report(sample(name, retrieved=retrieved, timestep=timestep))
    for name, metrics in results.items():
        if isinstance(metrics, dict):
            print(name, {key: round(metrics[key], 4) for key in metrics if key.startswith("template_match")})
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"arguments": vars(args), **results}, f, indent=2)


if __name__ == "__main__":
    main()
