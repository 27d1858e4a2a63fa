"""Before/after check of the pipeline re-layout: seeded CodeFusionPipeline outputs of two versions of codefusion_hf
must be bit-identical.

Modes (the version under test is whichever codefusion_hf is first on sys.path, e.g. PYTHONPATH=<checkout>/src):

  build  DIR            train and save the tiny pipelines once, to DIR/pipe_<name> (and DIR/inputs.pt)
  run    DIR OUT.pt     load them, run the grid of seeded calls and the bad inputs, torch.save every output to OUT.pt
  compare OLD.pt NEW.pt  compare two runs: tensors with torch.equal, everything else with == (scores exactly)

The old version takes the committed-tail option as `canvas_margin`; the new one as `settled_margin` (its
`canvas_margin` is a deprecated alias, exercised by the `deprecated_name` calls in both versions).
"""

import contextlib
import hashlib
import inspect
import math
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

PAIRS = [  # tests/conftest.py
    ("list all files", "ls -la"),
    ("show disk usage", "df -h"),
    ("find python files", "find . -name '*.py'"),
    ("count lines in a.txt", "wc -l a.txt"),
]
PIPES = ("tiny", "overfit", "length", "selfcond", "mints")
PROMPTS = {
    "one": "list all files",
    "three": ["list all files", "count lines in a.txt", "show disk usage"],
    "four": [prompt for prompt, _ in PAIRS],
}
DRAFTS = {"one": "ls -la", "three": ["ls -la", "wc -l a.txt", "df -h"], "four": [code for _, code in PAIRS]}


# ----------------------------------------------------------------------------------------------------------- build
def build(folder):
    """The tiny pipelines of tests/conftest.py (its helpers, imported from there), trained once and saved."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from conftest import make_code_tokenizer, make_pipeline, overfit, tiny_config

    from codefusion_hf import CodeFusionConfig, CodeFusionModel

    tokenizer = make_code_tokenizer()

    def random_model(seed, **overrides):
        torch.manual_seed(seed)
        return make_pipeline(CodeFusionModel(tiny_config(tokenizer, **overrides)).eval(), tokenizer)

    builders = {
        "tiny": lambda: random_model(0),  # the tiny_pipeline fixture
        "overfit": lambda: overfit(tokenizer),
        "length": lambda: overfit(tokenizer, canvas_margin=2, predict_length=True),
        "selfcond": lambda: overfit(tokenizer, self_condition=True, self_condition_rounding="decoder"),
        # untrained, but every knob of the config that the pipeline reads at once: sampled above a min timestep,
        # a length head on trimmed canvases, self-conditioning rounded by the decoder's mean
        "mints": lambda: random_model(
            1,
            predict_length=True,
            canvas_margin=1,
            min_train_timestep=20,
            self_condition=True,
            self_condition_rounding="decoder_mean",
        ),
    }
    for name in PIPES:
        start = time.time()
        pipe = builders[name]()
        pipe.save_pretrained(os.path.join(folder, f"pipe_{name}"))
        print(f"built pipe_{name} in {time.time() - start:.1f} s", flush=True)
    # Inputs both versions read from this file rather than compute: random prompt states and a partial mask.
    hidden = CodeFusionConfig.from_preset("tiny").hidden_size
    gen = torch.Generator().manual_seed(4242)
    embeds = torch.randn(3, 5, hidden, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    torch.save({"prompt_embeds": embeds, "prompt_attention_mask": mask}, os.path.join(folder, "inputs.pt"))


# ------------------------------------------------------------------------------------------------------------- run
def load(folder):
    from codefusion_hf import CodeFusionCommitScheduler, CodeFusionPipeline

    pipes = {}
    for name in PIPES:
        pipe = CodeFusionPipeline.from_pretrained(os.path.join(folder, f"pipe_{name}"))
        pipe.set_progress_bar_config(disable=True)
        commit = CodeFusionPipeline(
            **pipe.components | {"scheduler": CodeFusionCommitScheduler.from_config(pipe.scheduler.config)}
        )
        commit.set_progress_bar_config(disable=True)
        pipes[name] = {"ddim": pipe, "commit": commit}
    return pipes


def weights_digest(model):
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def variations(name, config, sched):
    """(label, spec) of the calls for one pipeline and scheduler. Keys starting with `_` are built per call (see
    `materialize`); the rest are passed to the call as they are."""
    commit = sched == "commit"
    length_head = config.predict_length
    v = [
        ("base", {}),
        ("steps1", {"num_inference_steps": 1}),
        ("steps10", {"num_inference_steps": 10}),
        ("k1", {"num_return_sequences": 1}),
        ("k5", {"num_return_sequences": 5}),
        ("one_prompt", {"_prompts": "one"}),
        ("four_prompts_k2", {"_prompts": "four", "num_return_sequences": 2}),
        ("r_none", {"rounding": "none"}),
        ("r_nearest", {"rounding": "nearest"}),
        ("r_decoder", {"rounding": "decoder"}),
        ("r_decoder_mean", {"rounding": "decoder_mean"}),
        ("g1", {"guidance_scale": 1.0}),
        ("g2.5", {"guidance_scale": 2.5}),
        ("g2.5_k1_steps10", {"guidance_scale": 2.5, "num_return_sequences": 1, "num_inference_steps": 10}),
        ("sws1", {"stop_when_stable": 1}),
        ("sws2", {"stop_when_stable": 2, "num_inference_steps": 10}),
        ("sws1_traj", {"stop_when_stable": 1, "num_inference_steps": 10, "return_trajectory": True}),
        ("rank_ln", {"ranking": "length_normalized"}),
        ("rank_cons", {"ranking": "consensus"}),
        ("rank_cons_k1", {"ranking": "consensus", "num_return_sequences": 1}),
        ("rank_ln_k5_steps1", {"ranking": "length_normalized", "num_return_sequences": 5, "num_inference_steps": 1}),
        ("init_s0.5", {"_init": "three", "strength": 0.5}),
        ("init_s1.0", {"_init": "three", "strength": 1.0}),
        ("init_default_str", {"_init": "str", "num_inference_steps": 10}),
        ("init_lists", {"_init": "lists", "strength": 0.5, "num_inference_steps": 10}),
        ("init_g_sws", {"_init": "three", "strength": 1.0, "guidance_scale": 2.5, "stop_when_stable": 1}),
        ("ts", {"timesteps": [90, 60, 30, 5]}),
        ("ts_latents", {"timesteps": [99, 50], "_latents": True}),
        ("ts_traj", {"timesteps": [80, 40, 10], "return_trajectory": [0, 2]}),
        ("cet99", {"condition_enhanced_timestep": 99}),
        ("cet0_steps10", {"condition_enhanced_timestep": 0, "num_inference_steps": 10}),
        ("cl_full", {"code_length": "full"}),
        ("cl_int4", {"code_length": 4}),
        ("cl_int1_k5", {"code_length": 1, "num_return_sequences": 5}),
        ("cl_int6_sws2", {"code_length": 6, "stop_when_stable": 2, "num_inference_steps": 10}),
        ("traj_true", {"return_trajectory": True}),
        ("traj_list", {"return_trajectory": [0, 2, 4]}),
        ("traj_tuple_steps10", {"return_trajectory": (9, 3), "num_inference_steps": 10}),
        ("embeds_encoded", {"_embeds": "encoded"}),
        ("embeds_encoded_mask", {"_embeds": "encoded_mask"}),
        ("embeds_file", {"_embeds": "file"}),
        ("embeds_file_mask", {"_embeds": "file_mask"}),
        ("embeds_file_mask_g2.5", {"_embeds": "file_mask", "guidance_scale": 2.5}),
        ("genlist", {"_gen": "list"}),
        ("genlist_sws1", {"_gen": "list", "stop_when_stable": 1, "num_inference_steps": 10}),
        ("genlist_g2.5", {"_gen": "list", "guidance_scale": 2.5}),
        ("global_rng", {"_gen": "global"}),
        ("latents", {"_latents": True}),
        ("latents_cl3", {"_latents": True, "code_length": 3}),
        ("callback", {"_callback": "modify"}),
        ("callback_sws1", {"_callback": "modify", "stop_when_stable": 1, "num_inference_steps": 10}),
        ("callback_g_on", {"_callback": "guidance_on"}),
        ("callback_no_inputs", {"_callback": "record", "callback_on_step_end_tensor_inputs": []}),
        ("maxlen3", {"max_length": 3}),
        ("maxlen1_traj", {"max_length": 1, "return_trajectory": True}),
        ("return_dict_false", {"return_dict": False}),
        ("return_dict_false_traj", {"return_dict": False, "return_trajectory": [1]}),
        (
            "combo",
            {
                "num_return_sequences": 5,
                "num_inference_steps": 10,
                "rounding": "decoder",
                "guidance_scale": 2.5,
                "stop_when_stable": 2,
                "ranking": "consensus",
                "return_trajectory": [0, 5, 9],
                "_gen": "list",
                "_callback": "modify",
                "condition_enhanced_timestep": 50,
                "max_length": 5,
            },
        ),
    ]
    if not commit:
        v += [
            ("eta1", {"eta": 1.0}),
            ("eta0.5_steps10", {"eta": 0.5, "num_inference_steps": 10}),
            ("eta1_genlist_sws1", {"eta": 1.0, "_gen": "list", "stop_when_stable": 1, "num_inference_steps": 10}),
            ("eta1_init", {"eta": 1.0, "_init": "three", "strength": 0.5, "num_inference_steps": 10}),
            ("eta1_latents_ts", {"eta": 1.0, "_latents": True, "timesteps": [99, 70, 40, 10]}),
        ]
    else:
        v += [
            ("eta0_explicit", {"eta": 0}),
            ("margin0", {"_margin": 0}),
            ("margin1", {"_margin": 1, "num_inference_steps": 10}),
            ("margin2", {"_margin": 2, "num_inference_steps": 10}),
            ("margin16", {"_margin": 16}),
            ("margin1_sws1", {"_margin": 1, "stop_when_stable": 1, "num_inference_steps": 10}),
            ("margin1_traj", {"_margin": 1, "num_inference_steps": 10, "return_trajectory": True}),
            ("margin1_genlist", {"_margin": 1, "_gen": "list", "num_inference_steps": 10}),
            ("margin1_callback", {"_margin": 1, "_callback": "modify", "num_inference_steps": 10}),
            ("margin0_cl5", {"_margin": 0, "code_length": 5, "num_inference_steps": 10}),
            ("margin1_init", {"_margin": 1, "_init": "three", "strength": 1.0, "num_inference_steps": 10}),
            ("margin1_g2.5", {"_margin": 1, "guidance_scale": 2.5, "num_inference_steps": 10}),
            ("deprecated_name", {"_deprecated_margin": 1, "num_inference_steps": 10}),
            (
                "combo_margin",
                {
                    "num_return_sequences": 5,
                    "num_inference_steps": 10,
                    "rounding": "decoder_mean",
                    "stop_when_stable": 1,
                    "_margin": 1,
                    "ranking": "length_normalized",
                    "return_trajectory": True,
                    "_gen": "list",
                    "_callback": "modify",
                },
            ),
        ]
    if length_head:
        v += [
            ("cl_pred", {"code_length": "predicted"}),
            ("cl_pred_default_k5", {"num_return_sequences": 5}),
            ("lb1", {"code_length": "predicted", "length_beam": 1}),
            ("lb2", {"code_length": "predicted", "length_beam": 2}),
            ("lb3", {"code_length": "predicted", "length_beam": 3}),
            ("lb3_k5_sws1", {"length_beam": 3, "num_return_sequences": 5, "stop_when_stable": 1}),
            ("lb2_four", {"_prompts": "four", "length_beam": 2, "num_return_sequences": 2}),
            ("lb3_callback", {"length_beam": 3, "_callback": "modify"}),
            ("lb3_traj", {"length_beam": 3, "return_trajectory": True, "num_inference_steps": 10}),
            ("lb2_genlist_g2.5", {"length_beam": 2, "_gen": "list", "guidance_scale": 2.5}),
            ("lb2_latents", {"length_beam": 2, "_latents": True}),
            ("init_pred", {"_init": "three", "strength": 0.5, "code_length": "predicted", "length_beam": 2}),
            ("init_default_cl", {"_init": "three", "strength": 0.5}),
            ("pred_embeds_file_mask", {"_embeds": "file_mask", "length_beam": 2}),
            # the canvas groups split into one batch per distinct canvas length (the constants patched to 0/1.0)
            ("split_lb3", {"_split": True, "length_beam": 3}),
            ("split_four_sws1", {"_split": True, "_prompts": "four", "length_beam": 2, "stop_when_stable": 1}),
            ("split_callback", {"_split": True, "_prompts": "four", "length_beam": 3, "_callback": "modify"}),
            ("split_callback_g", {"_split": True, "length_beam": 3, "_callback": "guidance_on"}),
            ("split_traj", {"_split": True, "_prompts": "four", "return_trajectory": True, "stop_when_stable": 2}),
            ("split_genlist", {"_split": True, "_gen": "list", "length_beam": 3}),
        ]
        if not commit:
            v += [("split_genlist_eta1", {"_split": True, "_gen": "list", "length_beam": 3, "eta": 1.0})]
        else:
            v += [
                ("lb3_margin1", {"length_beam": 3, "_margin": 1, "num_inference_steps": 10}),
                ("lb3_margin0_sws1", {"length_beam": 3, "_margin": 0, "stop_when_stable": 1}),
                ("split_margin1", {"_split": True, "_prompts": "four", "length_beam": 3, "_margin": 1}),
                (
                    "split_margin1_cb_traj",
                    {
                        "_split": True,
                        "length_beam": 3,
                        "_margin": 1,
                        "_callback": "modify",
                        "return_trajectory": True,
                        "num_inference_steps": 10,
                    },
                ),
            ]
    return v


class Context:
    """What the calls of one version read and the module constants they patch."""

    def __init__(self, folder):
        import codefusion_hf
        from codefusion_hf import CodeFusionPipeline

        self.module_file = codefusion_hf.__file__
        self.new_api = "settled_margin" in inspect.signature(CodeFusionPipeline.__call__).parameters
        self.inputs = torch.load(os.path.join(folder, "inputs.pt"))
        # Where canvas_groups reads its padding limits: the pipeline module before, canvas planning after.
        if self.new_api:
            import codefusion_hf.canvas_planning_codefusion as groups_module
        else:
            import codefusion_hf.pipeline_codefusion as groups_module
        self.groups_module = groups_module

    @contextlib.contextmanager
    def split_groups(self, on):
        if not on:
            yield
            return
        saved = self.groups_module.MAX_CANVAS_PADDING, self.groups_module.CANVAS_PADDING_ALLOWANCE
        self.groups_module.MAX_CANVAS_PADDING, self.groups_module.CANVAS_PADDING_ALLOWANCE = 1.0, 0
        try:
            yield
        finally:
            self.groups_module.MAX_CANVAS_PADDING, self.groups_module.CANVAS_PADDING_ALLOWANCE = saved


def make_callback(kind, record):
    def callback(pipe, step_index, timestep, callback_kwargs):
        latents = callback_kwargs.get("latents")
        record.append(
            {
                "step": step_index,
                "timestep": timestep,
                "guidance_scale": pipe.guidance_scale,
                "num_timesteps": pipe.num_timesteps,
                "names": sorted(callback_kwargs),
                "latents": None if latents is None else latents.clone(),
            }
        )
        if kind == "modify":
            if step_index == 0:
                pipe._guidance_scale = 2.0  # on for the next steps
            if step_index == 2:
                pipe._guidance_scale = 1.0
            if step_index % 2 == 1:
                return {"latents": latents * 0.9}
            return {}
        if kind == "guidance_on":
            if step_index == 1:
                pipe._guidance_scale = 3.0
            return {"latents": latents + 0.01 * step_index}
        return None

    return callback


def materialize(ctx, pipe, spec, seed):
    """The call's arguments, and what to read back from it (generators, the callback's record)."""
    spec = dict(spec)
    prompts = PROMPTS[spec.pop("_prompts", "three")]
    num_prompts = 1 if isinstance(prompts, str) else len(prompts)
    k = spec.get("num_return_sequences", 3)
    kwargs = {"num_inference_steps": 5, "num_return_sequences": k} | spec
    kwargs = {key: value for key, value in kwargs.items() if not key.startswith("_")}
    extras = {"generators": [], "callback": []}
    gen_kind = spec.get("_gen", "one")
    # The global generator too starts each call from a known state (torch seeds it at random in each process), so
    # that its state after the call shows what the call itself drew from it (nothing, with a generator given).
    torch.manual_seed(10**6 + seed)
    if gen_kind == "one":
        kwargs["generator"] = torch.Generator().manual_seed(seed)
        extras["generators"] = [kwargs["generator"]]
    elif gen_kind == "list":
        kwargs["generator"] = [torch.Generator().manual_seed(seed * 100 + i) for i in range(num_prompts * k)]
        extras["generators"] = kwargs["generator"]
    else:  # the global generator
        torch.manual_seed(seed)
    embeds = spec.get("_embeds")
    if embeds is None:
        kwargs["prompt"] = prompts
    elif embeds.startswith("encoded"):
        states, mask = pipe.encode_prompt(PROMPTS["three"], torch.device("cpu"))
        extras["encoded"] = (states.clone(), mask.clone())
        kwargs["prompt_embeds"] = states
        if embeds == "encoded_mask":
            kwargs["prompt_attention_mask"] = mask
        num_prompts = 3
    else:
        kwargs["prompt_embeds"] = ctx.inputs["prompt_embeds"].clone()
        if embeds == "file_mask":
            kwargs["prompt_attention_mask"] = ctx.inputs["prompt_attention_mask"].clone()
        num_prompts = 3
    if spec.get("_latents"):
        config = pipe.model.config
        shape = (num_prompts * k, config.max_code_length, config.latent_dim)
        kwargs["latents"] = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 7))
    init = spec.get("_init")
    if init == "three":
        kwargs["init_code"] = DRAFTS["three"] if num_prompts == 3 else DRAFTS["four"][:num_prompts]
    elif init == "str":
        kwargs["init_code"] = "ls -la"
    elif init == "lists":
        kwargs["init_code"] = [["ls -la", "ls"], ["wc -l a.txt"], ["df -h", "du -sh", "df"]]
    if "_margin" in spec:
        kwargs["settled_margin" if ctx.new_api else "canvas_margin"] = spec["_margin"]
    if "_deprecated_margin" in spec:
        kwargs["canvas_margin"] = spec["_deprecated_margin"]
    if "_callback" in spec:
        kwargs["callback_on_step_end"] = make_callback(spec["_callback"], extras["callback"])
    return kwargs, extras


def normalize(output):
    if isinstance(output, tuple):
        code, scores, trajectory = output
        return {"kind": "tuple", "len": len(output), "code": code, "scores": scores, "trajectory": trajectory}
    return {
        "kind": type(output).__name__,
        "code": output.code,
        "scores": output.scores,
        "trajectory": output.trajectory,
    }


def call(ctx, pipe, kwargs, extras, split=False):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with ctx.split_groups(split):
                record = normalize(pipe(**kwargs))
        except Exception as error:  # noqa: BLE001 - the error is the output
            record = {"error": type(error).__name__, "message": str(error)}
    record["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    record["generator_states"] = [g.get_state() for g in extras["generators"]]
    record["global_rng_state"] = torch.get_rng_state()
    record["callback"] = extras["callback"]
    if "encoded" in extras:
        record["encoded"] = extras["encoded"]
    record["scheduler_timesteps"] = pipe.scheduler.timesteps.clone() if pipe.scheduler.timesteps is not None else None
    return record


def bad_inputs(ctx, pipes):
    """(label, pipe, kwargs) of calls that must raise: each has one bad argument unless its label says 'two'."""
    margin = "settled_margin" if ctx.new_api else "canvas_margin"
    length, tiny = pipes["length"], pipes["tiny"]
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    embeds = ctx.inputs["prompt_embeds"]
    cases = [
        ("steps0", tiny["ddim"], {"num_inference_steps": 0}),
        ("steps101", tiny["ddim"], {"num_inference_steps": 101}),
        ("steps2.5", tiny["ddim"], {"num_inference_steps": 2.5}),
        ("steps_min_ts", pipes["mints"]["ddim"], {"num_inference_steps": 90}),
        ("k0", tiny["ddim"], {"num_return_sequences": 0}),
        ("k_true", tiny["ddim"], {"num_return_sequences": True}),
        ("max_length0", tiny["ddim"], {"max_length": 0}),
        ("max_length17", tiny["ddim"], {"max_length": 17}),
        ("output_type_np", tiny["ddim"], {"output_type": "np"}),
        ("rounding_bad", tiny["ddim"], {"rounding": "round"}),
        ("eta_neg", tiny["ddim"], {"eta": -1.0}),
        ("eta_true", tiny["ddim"], {"eta": True}),
        ("eta1_commit", tiny["commit"], {"eta": 1.0}),
        ("guidance0.5", tiny["ddim"], {"guidance_scale": 0.5}),
        ("guidance_nan", tiny["ddim"], {"guidance_scale": float("nan")}),
        ("sws0", tiny["ddim"], {"stop_when_stable": 0}),
        ("margin_neg", tiny["commit"], {margin: -1}),
        ("margin17", tiny["commit"], {margin: 17}),
        ("margin_ddim", tiny["ddim"], {margin: 1}),
        ("deprecated_margin_ddim", tiny["ddim"], {"canvas_margin": 1}),
        ("ranking_bad", tiny["ddim"], {"ranking": "best"}),
        ("cet100", tiny["ddim"], {"condition_enhanced_timestep": 100}),
        ("code_length0", length["ddim"], {"code_length": 0}),
        ("code_length_bad", length["ddim"], {"code_length": "short"}),
        ("predicted_no_head", tiny["ddim"], {"code_length": "predicted"}),
        ("length_beam4_k3", length["ddim"], {"length_beam": 4}),
        ("length_beam2_full", length["ddim"], {"length_beam": 2, "code_length": "full"}),
        ("length_beam2_no_head", tiny["ddim"], {"length_beam": 2}),
        ("latents_shape", tiny["ddim"], {"latents": torch.zeros(2, 16, 16)}),
        ("generator_list_len", tiny["ddim"], {"generator": [gen(), gen()]}),
        ("generator_str", tiny["ddim"], {"generator": "seed"}),
        ("init_code_count", tiny["ddim"], {"init_code": ["ls", "df"]}),
        ("init_code_empty", tiny["ddim"], {"init_code": ["ls", " ", "df"]}),
        ("init_code_empty_list", tiny["ddim"], {"init_code": ["ls", [], "df"]}),
        ("strength_without_init", tiny["ddim"], {"strength": 0.5}),
        ("strength0", tiny["ddim"], {"init_code": "ls", "strength": 0}),
        ("init_with_latents", tiny["ddim"], {"init_code": "ls", "latents": torch.zeros(9, 16, 16)}),
        ("init_with_timesteps", tiny["ddim"], {"init_code": "ls", "timesteps": [50, 10]}),
        ("timesteps_increasing", tiny["ddim"], {"timesteps": [10, 50]}),
        ("timesteps_range", tiny["ddim"], {"timesteps": [100, 50]}),
        ("timesteps_empty", tiny["ddim"], {"timesteps": []}),
        ("trajectory_index", tiny["ddim"], {"return_trajectory": [5]}),
        ("trajectory_str", tiny["ddim"], {"return_trajectory": "all"}),
        ("callback_inputs", tiny["ddim"], {"callback_on_step_end_tensor_inputs": ["noise"]}),
        ("prompt_empty", tiny["ddim"], {"prompt": ""}),
        ("prompt_empty_list", tiny["ddim"], {"prompt": []}),
        ("prompt_set", tiny["ddim"], {"prompt": {"ls"}}),
        ("prompt_int", tiny["ddim"], {"prompt": ["ls", 1]}),
        ("prompt_surrogate", tiny["ddim"], {"prompt": ["ls \ud800"]}),
        ("prompt_none", tiny["ddim"], {"prompt": None}),
        ("prompt_and_embeds", tiny["ddim"], {"prompt_embeds": embeds}),
        ("embeds_width", tiny["ddim"], {"prompt": None, "prompt_embeds": torch.zeros(3, 5, 8)}),
        ("embeds_list", tiny["ddim"], {"prompt": None, "prompt_embeds": [[0.0]]}),
        (
            "mask_shape",
            tiny["ddim"],
            {"prompt": None, "prompt_embeds": embeds, "prompt_attention_mask": torch.ones(3, 4)},
        ),
        ("mask_list", tiny["ddim"], {"prompt": None, "prompt_embeds": embeds, "prompt_attention_mask": [[1] * 5] * 3}),
        ("mask_without_embeds", tiny["ddim"], {"prompt_attention_mask": torch.ones(3, 5)}),
        ("two_output_type_rounding", tiny["ddim"], {"output_type": "np", "rounding": "round"}),
        ("two_max_length_k", tiny["ddim"], {"max_length": 0, "num_return_sequences": 0}),
        ("two_latents_sws", tiny["ddim"], {"latents": torch.zeros(2, 16, 16), "stop_when_stable": 0}),
        ("two_strength_bad_without_init", tiny["ddim"], {"strength": 2.0}),
        ("two_generator_latents", tiny["ddim"], {"generator": "seed", "latents": torch.zeros(2, 16, 16)}),
    ]
    if ctx.new_api:
        cases.append(("new_only_both_margins", tiny["commit"], {"settled_margin": 1, "canvas_margin": 1}))
    return cases


def run(folder, out):
    ctx = Context(folder)
    print(f"codefusion_hf from {ctx.module_file} (new API: {ctx.new_api})", flush=True)
    pipes = load(folder)
    results = {"_meta": {"module_file": ctx.module_file, "new_api": ctx.new_api, "torch": torch.__version__}}
    for name in PIPES:
        results[f"_weights|{name}"] = weights_digest(pipes[name]["ddim"].model)
    start, seed, calls = time.time(), 0, 0
    for name in PIPES:
        for sched in ("ddim", "commit"):
            pipe = pipes[name][sched]
            for label, spec in variations(name, pipe.model.config, sched):
                for output_type in ("text", "pt", "latent"):
                    seed += 1
                    kwargs, extras = materialize(ctx, pipe, spec, seed)
                    kwargs["output_type"] = output_type
                    key = f"call|{name}|{sched}|{label}|{output_type}"
                    results[key] = call(ctx, pipe, kwargs, extras, split=spec.get("_split", False))
                    results[key]["seed"] = seed
                    calls += 1
        print(f"{name}: {calls} calls, {time.time() - start:.0f} s", flush=True)
    for label, pipe, kwargs in bad_inputs(ctx, pipes):
        kwargs = {
            "prompt": PROMPTS["three"],
            "num_inference_steps": 5,
            "num_return_sequences": 3,
            "generator": torch.Generator().manual_seed(0),
        } | kwargs
        results[f"bad|{label}"] = call(ctx, pipe, kwargs, {"generators": [], "callback": []})
    torch.save(results, out)
    errors = sum("error" in r for k, r in results.items() if k.startswith("call|"))
    print(
        f"saved {out}: {calls} calls ({errors} raised), {len(bad_inputs(ctx, pipes))} bad inputs, "
        f"{time.time() - start:.0f} s",
        flush=True,
    )


# --------------------------------------------------------------------------------------------------------- compare
def differences(a, b, where=""):
    """Every place where `a` and `b` differ: tensors by torch.equal (and dtype), the rest by == (NaN equal to NaN)."""
    if type(a) is not type(b):
        return [f"{where}: type {type(a).__name__} vs {type(b).__name__}"]
    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{where}: tensor {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"]
        if not torch.equal(a, b):
            if a.is_floating_point():
                return [f"{where}: tensors differ, max |diff| {float((a - b).abs().max()):.3g}"]
            return [f"{where}: tensors differ at {int((a != b).sum())} entries"]
        return []
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(set(a) ^ set(b))} in one only"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}.{key}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


OUTPUT_FIELDS = (
    "kind",
    "len",
    "code",
    "scores",
    "trajectory",
    "error",
    "callback",
    "generator_states",
    "global_rng_state",
    "encoded",
)


def compare(old_path, new_path):
    old, new = torch.load(old_path, weights_only=False), torch.load(new_path, weights_only=False)
    print("old:", old["_meta"])
    print("new:", new["_meta"])
    assert not old["_meta"]["new_api"] and new["_meta"]["new_api"], "run the old code into OLD.pt, the new into NEW.pt"
    assert set(old) == set(new) - {"bad|new_only_both_margins"}, sorted(set(old) ^ set(new))
    for key in (k for k in old if k.startswith("_weights")):
        assert old[key] == new[key], f"{key}: the two versions loaded different weights"
    mismatches, extra_state, warning_diffs = [], [], []
    calls = [k for k in old if k.startswith("call|")]
    raised = 0
    for key in calls:
        a, b = old[key], new[key]
        raised += "error" in a
        fields = [f for f in OUTPUT_FIELDS if f in a or f in b]
        diff = [d for f in fields for d in differences(a.get(f), b.get(f), f)]
        if "message" in a or "message" in b:
            diff += differences(a.get("message"), b.get("message"), "message")
        if diff:
            mismatches.append((key, a["seed"], diff))
        state = differences(a["scheduler_timesteps"], b["scheduler_timesteps"], "scheduler.timesteps")
        if state:
            extra_state.append((key, state))
        if a["warnings"] != b["warnings"]:
            warning_diffs.append((key, a["warnings"], b["warnings"]))
    print(
        f"\n{len(calls)} seeded calls compared ({len(calls) - raised} ran, {raised} raised in both versions"
        f" unless listed below)"
    )
    print(f"mismatches: {len(mismatches) or 'none'}")
    for key, seed, diff in mismatches:
        print(f"  {key} (seed {seed}):")
        for d in diff[:8]:
            print(f"    {d}")
    print(f"scheduler state after the call differs: {len(extra_state) or 'none'}")
    for key, state in extra_state:
        print(f"  {key}: {state[:2]}")
    print(f"warnings differ: {len(warning_diffs) or 'none'}")
    for key, a, b in warning_diffs:
        print(f"  {key}:\n    old {a}\n    new {b}")
    bad = [k for k in new if k.startswith("bad|")]
    print(f"\n{len(bad)} bad inputs:")
    same = 0
    for key in bad:
        a, b = old.get(key), new[key]
        if a is None:
            print(f"  {key}: new only -> {b.get('error')}: {b.get('message')}")
            continue
        if "error" not in a or "error" not in b:
            print(f"  {key}: DID NOT RAISE in {'old' if 'error' not in a else 'new'}")
            continue
        if a["error"] == b["error"] and a["message"] == b["message"]:
            same += 1
            continue
        print(f"  {key}:\n    old {a['error']}: {a['message']}\n    new {b['error']}: {b['message']}")
    print(f"  {same} of {len(bad)} raise the same exception class with the same message")
    return 1 if mismatches else 0


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "build":
        build(sys.argv[2])
    elif mode == "run":
        run(sys.argv[2], sys.argv[3])
    elif mode == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
