"""How much the packed canvas saves: one denoiser and one decoder pass over rows on canvases of different lengths
(a length beam's), timed in one process against the same layers computing every padded position, the calls of the
two interleaved so that the machine's drift reaches both alike. Writes medians and minima in milliseconds as JSON.

    python research/packed_canvas_ab.py --pipeline runs/nl2bash-finetune --output packed_ab.json
"""

import argparse
import json
import statistics
import time

import torch

import codefusion_hf.modeling_codefusion as modeling
from codefusion_hf import CodeFusionPipeline


class PaddedCanvas(modeling.CodeFusionPackedCanvas):
    """The layout before packing: every position of the padded canvas is computed, attention masked past each row."""

    @classmethod
    def from_padding_mask(cls, padding_mask: torch.BoolTensor) -> "PaddedCanvas":
        return cls(padding_mask, torch.arange(padding_mask.numel()), torch.arange(padding_mask.numel()))

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        return padded.flatten(0, 1)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        return packed.view(*self.padding_mask.shape, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, help="A trained CodeFusion pipeline folder.")
    parser.add_argument("--lengths", type=int, nargs="+", default=[27, 19, 16, 27, 19], help="Each row's canvas.")
    parser.add_argument("--calls", type=int, default=400, help="Timed calls of each layout.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    pipe = CodeFusionPipeline.from_pretrained(args.pipeline, dtype=dtype)
    model = pipe.model.eval()
    rows, canvas = len(args.lengths), max(args.lengths)
    code_attention_mask = (torch.arange(canvas)[None, :] < torch.tensor(args.lengths)[:, None]).long()
    states, attention_mask = pipe.encode_prompt(["find all text files in the current directory"] * rows, pipe.device)
    cache = model.cache_prompt(states)
    latents = torch.randn(rows, canvas, model.config.latent_dim, generator=torch.Generator().manual_seed(0)).to(dtype)
    timesteps = torch.full((rows,), model.config.num_train_timesteps // 2)
    layouts = {"packed": modeling.CodeFusionPackedCanvas, "padded": PaddedCanvas}

    def step(layout: str) -> float:
        modeling.CodeFusionPackedCanvas = layouts[layout]
        start = time.perf_counter()
        with torch.no_grad():
            model.denoise(latents, timesteps, states, attention_mask, None, cache, code_attention_mask)
            model.decoder_states(latents, states, attention_mask, cache, code_attention_mask)
        return (time.perf_counter() - start) * 1e3

    try:
        for layout in layouts:  # warm-up
            for _ in range(5):
                step(layout)
        times = {layout: [] for layout in layouts}
        for call in range(args.calls):
            for layout in list(layouts)[:: 1 if call % 2 else -1]:
                times[layout].append(step(layout))
    finally:
        modeling.CodeFusionPackedCanvas = layouts["packed"]
    report = {
        "command": vars(args),
        "positions": {"own": sum(args.lengths), "padded": rows * canvas},
        "milliseconds": {
            layout: {"median": statistics.median(values), "min": min(values)} for layout, values in times.items()
        },
    }
    report["median_ratio_packed_to_padded"] = (
        report["milliseconds"]["packed"]["median"] / report["milliseconds"]["padded"]["median"]
    )
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
