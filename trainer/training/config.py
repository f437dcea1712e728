"""The training run's configuration: one typed dataclass whose defaults are the chapter's.

Raschka, *Build a Large Language Model (From Scratch)*, ch. 7: gpt2-medium (355M) with its
pretrained weights, the chapter's 1,100 instructions split 85/10/5, AdamW lr 5e-5 and weight
decay 0.1, batch size 8, 2 epochs, seed 123, evaluation every 5 steps over 5 batches, and
256 new tokens per test response. Flags (launch/train.py) and ds_config.json fill it; the resolved
config is saved into the run directory as config.json.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from instruct import redact_url

CHAPTER_DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"
)


@dataclass
class TrainConfig:
    # Model and inputs
    model: str | None = None  # a preset; None: what the weights' config.json says, gpt2-medium with auto/none
    weights: str = "auto"  # "auto" (pretrained from the hub), "none" (random init) or a path
    data: str = CHAPTER_DATA_URL
    tokenizer_dir: str | None = None
    out: str | None = None  # default: runs/<timestamp>-<model>

    # Optimisation
    epochs: int = 2
    max_steps: int | None = None  # stop after this many optimizer steps (over all epochs)
    lr: float = 5e-5
    weight_decay: float = 0.1
    schedule: str = "constant"  # "constant" or "cosine"
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0: no clipping (the gradient norm is still measured and logged)
    global_batch: int = 8
    micro_batch: int | None = None  # default: global_batch / world size
    zero_stage: int | None = None  # default: ds_config.json's (2)
    precision: str = "auto"  # auto = bf16 on GPUs that support it, fp32 on CPU
    dropout: float = 0.0

    # Data
    split: tuple[float, float] = (0.85, 0.10)  # train, test; validation is the rest
    shuffle_split: bool = False  # the chapter splits in file order
    max_length: int = 1024  # the chapter's allowed_max_length
    mask_prompt: bool = False
    seed: int = 123

    # Speed (docs/performance.md): off unless measured to pay
    group_by_length: bool = False
    packing: bool = False
    compile: bool = False
    activation_checkpointing: bool = False

    # Evaluation, checkpoints, outputs
    eval_every: int = 5
    eval_batches: int = 5
    save_every: int = 0  # 0: checkpoint only at each epoch end
    keep_checkpoints: int = 2
    max_new_tokens: int = 256
    generate_batch: int = 16
    max_bad_steps: int = 5
    export_gguf: bool = False  # also gguf/<name>.gguf (f16) and its Ollama Modelfile (docs/gguf.md)
    base_responses: bool = False  # also answer the test split with the initial weights, before training

    # Judging and word when the run ends (docs/judge.md, docs/metrics.md)
    judge_url: str | None = None  # judge the test responses there after run_end
    judge_url_env: str | None = None  # or: the environment variable holding that URL (one with credentials)
    judge_model: str = "llama3"  # the chapter's judge
    judge_api: str = "ollama"  # or "openai"
    judge_key_env: str | None = None  # environment variable with the judge server's API key
    judge_samples: int = 0  # K validation prompts answered at judged evaluations (evals/step-<N>.json); 0: none
    judge_every: int | None = None  # judged evaluations every N steps (default: up to 10 of the evaluations)
    notify_env: str | None = None  # environment variable with a webhook URL for run_end, judge_end, alerts

    # Runtime
    resume: bool = False
    ds_config: str = "ds_config.json"
    dist_timeout: float = 180.0  # seconds a collective may wait for a dead or hung rank
    expect_ranks: int | None = None  # refuse to start on another number of ranks (a misspelled --hostfile)
    heartbeat_every: float = 2.0
    dry_run: bool = False
    world_size: int | None = None  # a dry run plans for this many ranks (default: the launcher's)

    @property
    def judge_server(self) -> str | None:
        """The judge server's URL: --judge-url, or the value of the variable --judge-url-env names."""
        return os.environ.get(self.judge_url_env) if self.judge_url_env else self.judge_url

    def to_dict(self) -> dict:
        """As config.json records it (no credentials: a judge URL with them comes through --judge-url-env)."""
        d = asdict(self)
        d["split"] = list(self.split)
        return d


def validate(config: TrainConfig) -> None:
    """Check values that no flag parser can; raise ValueError with one line naming the flag."""
    checks = [
        (config.epochs >= 1, "--epochs must be at least 1"),
        (config.max_steps is None or config.max_steps >= 1, "--max-steps must be at least 1"),
        (config.lr > 0, "--lr must be positive"),
        (config.weight_decay >= 0, "--weight-decay must not be negative"),
        (config.schedule in ("constant", "cosine"), "--schedule must be constant or cosine"),
        (config.warmup_steps >= 0, "--warmup-steps must not be negative"),
        (config.grad_clip >= 0, "--grad-clip must not be negative"),
        (config.global_batch >= 1, "--global-batch must be at least 1"),
        (config.micro_batch is None or config.micro_batch >= 1, "--micro-batch must be at least 1"),
        (config.zero_stage in (None, 0, 1, 2, 3), "--zero-stage must be 0, 1, 2 or 3"),
        (config.precision in ("auto", "bf16", "fp16", "fp32"), "--precision must be auto, bf16, fp16 or fp32"),
        (0.0 <= config.dropout < 1.0, "--dropout must be in [0, 1)"),
        (config.max_length >= 2, "--max-length must be at least 2"),
        (config.eval_every >= 0, "--eval-every must not be negative"),
        (config.eval_batches >= 1, "--eval-batches must be at least 1"),
        (config.save_every >= 0, "--save-every must not be negative"),
        (config.keep_checkpoints >= 1, "--keep-checkpoints must be at least 1"),
        (config.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
        (config.generate_batch >= 1, "--generate-batch must be at least 1"),
        (config.max_bad_steps >= 1, "--max-bad-steps must be at least 1"),
        (config.dist_timeout > 0, "--dist-timeout must be positive"),
        (config.expect_ranks is None or config.expect_ranks >= 1, "--expect-ranks must be at least 1"),
        (config.world_size is None or config.world_size >= 1, "--world-size must be at least 1"),
        (config.world_size is None or config.dry_run,
         "--world-size plans a --dry-run for that many ranks; a run takes its ranks from the launcher"),
        (config.judge_api in ("ollama", "openai"), "--judge-api must be ollama or openai"),
        (config.judge_samples >= 0, "--judge-samples must not be negative"),
        (config.judge_every is None or config.judge_every >= 1, "--judge-every must be at least 1"),
        (not (config.judge_url and config.judge_url_env), "--judge-url and --judge-url-env both name the judge: give one"),
        (config.judge_url is None or config.judge_url.startswith(("http://", "https://")),
         "--judge-url must be an http:// or https:// URL"),
        (config.judge_url is None or redact_url(config.judge_url) == config.judge_url,
         "--judge-url: DeepSpeed's launcher prints its command line, credentials included; put the URL in an "
         "environment variable and pass its name with --judge-url-env NAME"),
        (not config.judge_url_env or bool(os.environ.get(config.judge_url_env)),
         f"--judge-url-env: the environment variable {config.judge_url_env} is not set"),
        (not config.judge_url_env or os.environ.get(config.judge_url_env, "http").startswith(("http://", "https://")),
         f"--judge-url-env: the environment variable {config.judge_url_env} must hold an http:// or https:// URL"),
        (not config.judge_key_env or bool(os.environ.get(config.judge_key_env)),
         f"--judge-key-env: the environment variable {config.judge_key_env} is not set"),
        (not config.notify_env or bool(os.environ.get(config.notify_env)),
         f"--notify-env: the environment variable {config.notify_env} is not set"),
        (len(config.split) == 2 and all(f > 0 for f in config.split) and sum(config.split) < 1,
         "--split takes two positive fractions (train,test) summing to less than 1, e.g. 0.85,0.10"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch is cut: global = micro x accumulation x world size."""

    global_batch: int
    micro_batch: int
    grad_accum: int
    world_size: int


def batch_layout(global_batch: int, micro_batch: int | None, world_size: int) -> BatchLayout:
    if micro_batch is None:
        if global_batch % world_size:
            raise ValueError(
                f"--global-batch {global_batch} does not divide over {world_size} ranks: "
                f"pass a --global-batch that is a multiple of {world_size}, or --micro-batch"
            )
        micro_batch = global_batch // world_size
    if global_batch % (micro_batch * world_size):
        raise ValueError(
            f"gradient accumulation = global batch / (micro batch x world size) = "
            f"{global_batch} / ({micro_batch} x {world_size}) is not a whole number"
        )
    return BatchLayout(global_batch, micro_batch, global_batch // (micro_batch * world_size), world_size)


# Flags that override keys of a user's ds_config.json: the run's config owns these.
DS_KEYS_OWNED_BY_CONFIG = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "optimizer",
    "scheduler",
    "gradient_clipping",
)
