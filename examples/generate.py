"""Generate ranked code candidates with a saved CodeFusion pipeline (folder or Hub repo id).

python examples/generate.py --model runs/quickstart "list all files in the current directory" -k 3
"""

import argparse

import torch

from codefusion_hf import CodeFusionPipeline
from codefusion_hf.pipeline_codefusion import ROUNDINGS


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Saved pipeline folder or Hub repo id.")
    parser.add_argument("prompts", nargs="+", help="Natural-language descriptions.")
    parser.add_argument("-k", "--num_return_sequences", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="Denoising steps.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounding", choices=ROUNDINGS, default=None, help="Default: the model's own.")
    parser.add_argument(
        "--commit_tokens", action="store_true", help="Commit the surest tokens step by step (best with --steps 10)."
    )
    args = parser.parse_args()
    pipe = CodeFusionPipeline.from_pretrained(args.model)
    output = pipe(
        args.prompts,
        num_inference_steps=args.steps,
        num_return_sequences=args.num_return_sequences,
        generator=torch.Generator().manual_seed(args.seed),
        rounding=args.rounding,
        commit_tokens=args.commit_tokens,
    )
    for prompt, candidates, scores in zip(args.prompts, output.code, output.scores):
        print(f"\n{prompt}")
        for rank, (code, score) in enumerate(zip(candidates, scores), start=1):
            print(f"  {rank}. {code!r}  (score {score:.3f})")


if __name__ == "__main__":
    main()
