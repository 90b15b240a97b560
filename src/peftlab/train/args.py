"""The typed inputs of a training or evaluation run; the CLI and ``peftlab bench`` both build these."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from peftlab.core.errors import UserError
from peftlab.tasks.files import DataFiles

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
LossChoice = Literal["auto", "chunked", "plain"]
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")  # --report-to's choices (peftlab.train.trackers)


# Field -> command-line flag where the short name reads better than the field's (``peftlab train``).
FLAGS = {"output_dir": "output", "learning_rate": "lr", "gradient_accumulation_steps": "grad-accum",
         "options": "set", "eval_tasks": "eval-task", "progress": "no-progress", "fused_ops": "no-fused-ops",
         "keep_freed_memory": "no-keep-freed-memory", "fast_dropout": "no-fast-dropout",
         "group_by_length": "no-group-by-length", "pack": "no-pack", "train_file": "train", "eval_file": "eval"}


UNTUNED = "untuned"  # as a method: no method, no step; the plain base model scored (a table's reference row)


class ArgumentError(UserError, ValueError):
    """A run argument is missing or out of range."""


def setting(help: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A documented :class:`TrainArgs` field: its ``help`` is written here once and is also the help of
    its ``peftlab train`` flag (a flag that turns an on-by-default setting off says so)."""
    return field(default=default, metadata={"help": help}, **kwargs)


# What a run trains: a resumed run must have the same (the rest, e.g. evaluation and saving, may change).
RESUME_SETTINGS = ("model", "task", "method", "options", "seed", "train_split", "max_train_samples", "epochs",
                   "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay",
                   "warmup_ratio", "max_grad_norm", "max_length", "loss", "mixed_precision", "group_by_length", "holdout",
                   "train_file", "text_column", "text_pair_column", "label_column", "source_column", "target_column")


@dataclass(frozen=True, kw_only=True)
class TrainArgs:
    """One fine-tuning run: a model, a task, a method with its options, and the loop's settings."""

    model: str = setting("an alias (minilm-l6, smollm2-135m), a local model folder, or a hub name")
    task: str = setting("a registered task")
    method: str = setting("a registered method (see `peftlab methods`), or untuned: score the base model as it is "
                          "(no method applied, nothing trains)", "lora")
    options: dict[str, Any] = setting("a method option, KEY=VALUE (repeatable; see `peftlab methods --options NAME`)",
                                      default_factory=dict)
    output_dir: str | None = setting("the run folder: adapter files, metrics.json, log.jsonl, checkpoint-<step>/ "
                                     "(none: train and evaluate, write nothing)", None)
    data_dir: str | None = setting("the data root (glue/, mmlu/, wmt16_en_ro/, alpaca/); default $PEFTLAB_DATA; a "
                                   "task whose files are not there is read from the HF hub when `datasets` is "
                                   "installed", None)
    train_file: str | None = setting("your own data, for --task classify, chat or seq2seq: a CSV, TSV, JSON, JSONL or "
                                     "Parquet file, a `datasets` save_to_disk folder, or a hub dataset name "
                                     "(owner/name[:split], online)", None)
    eval_file: str | None = setting("the rows to score a file task on (as --train); default: a fixed tenth of the "
                                    "--train rows (a seeded draw, the same every run) is held out", None)
    text_column: str | None = setting("classify: the text column (default: text)", None)
    text_pair_column: str | None = setting("classify: a second text column, for sentence pairs (default: none)", None)
    label_column: str | None = setting("classify: the label column (default: label): strings are classes (ids "
                                       "in sorted order), integers class ids, floats a regression", None)
    source_column: str | None = setting("seq2seq: the source column (default: source)", None)
    target_column: str | None = setting("seq2seq: the target column (default: target)", None)
    train_split: str | None = setting("train on this split instead of the task's own (WMT16 without train files: "
                                      "newsdev2016)", None)
    eval_tasks: tuple[str, ...] = setting("also score this task at the end (repeatable; e.g. --task alpaca "
                                          "--eval-task mmlu)", ())
    seed: int = 42
    epochs: int = 1
    max_steps: int | None = setting("optimizer steps (overrides --epochs)", None)
    batch_size: int = setting("examples per process per micro-step", 16)
    eval_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    max_length: int = setting("tokens per training sequence at most; multiple-choice eval prompts use all the "
                              "model's positions", 128)
    group_by_length: bool = setting("batches of similar lengths, drawn at random within megabatches: far less "
                                    "padding (off: random batches, each padded to its longest example)", True)
    pack: bool = setting("pack a micro-batch's decoder examples into fewer rows where that trains the same "
                         "(decoder-only models on text tasks, methods that keep examples apart; train.packing); "
                         "off: pad each to the batch's longest", True)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    holdout: int | None = setting("hold out N training examples (the same draw for every run) and score on them "
                                  "instead of the dev set: choose hyperparameters without the dev set that the "
                                  "tables report", None)
    eval_steps: int | None = setting("evaluate every N steps (default: at each epoch end)", None)
    save_steps: int | None = setting("write checkpoint-<step>/ every N optimizer steps (also at each epoch end)",
                                     None)
    save_minutes: float | None = setting("also write a checkpoint when this many minutes have passed since the "
                                         "last one (long epochs)", None)
    save_total_limit: int = setting("how many checkpoints to keep", 2)
    logging_steps: int = 10
    gradient_checkpointing: bool = False
    loss: LossChoice = setting("auto: the chunked LM loss (no full-vocabulary logits) for text tasks where it "
                               "applies; plain: model(**batch).loss", "auto")
    fused_ops: bool = setting("fused RMSNorm and SwiGLU (same values and gradients, less time and memory); off: "
                              "the model's own eager ops", True)
    keep_freed_memory: bool = setting("on CPU, malloc keeps freed blocks for the next step (faster steps; the "
                                      "process's memory stays at its peak); off: they go back to the system "
                                      "between steps", True)
    fast_dropout: bool = setting("on CPU, dropout masks from 16-bit slices of 64-bit random draws, four per draw "
                                 "(peftlab.train.speedups.fast_dropout); off: PyTorch's own dropout, one random float "
                                 "per element (slower)", True)
    compile: bool = setting("torch.compile each transformer block (regional): the first steps compile, then "
                            "every step is faster (same function; needs a C++ compiler on CPU)", False)
    mixed_precision: MixedPrecision = setting("auto: bf16 on a GPU that has it, fp16 on other GPUs, off on CPU",
                                              "auto")
    fsdp: bool = setting("shard each transformer block with FSDP2 (torch.distributed.fsdp.fully_shard) across "
                         "the launched processes", False)
    resume: bool = setting("continue from the newest complete checkpoint in --output", False)
    overwrite: bool = setting("replace a previous run in --output", False)
    num_beams: int = 1
    max_new_tokens: int = 64
    progress: bool = setting("show a progress bar", True)
    report_to: tuple[str, ...] = setting(
        "send the run's metrics to an experiment tracker: tensorboard, mlflow, wandb, trackio, or none (repeatable; "
        "default none). Each writes into --output (tensorboard/, mlruns/, wandb/, trackio/) or --tracker-dir; "
        "without either a tracker is refused. mlflow uses $MLFLOW_TRACKING_URI when set; wandb runs offline "
        "without an API key or with WANDB_MODE=offline; trackio uses $TRACKIO_DIR when set. --resume continues the "
        "same runs. Each needs its library: pip install 'peftlab[NAME]' (all four: 'peftlab[trackers]')", ())
    tracker_dir: str | None = setting("write the trackers' files here instead of --output (shared by many runs: "
                                      "tensorboard then writes into tensorboard/RUN-NAME/)", None)
    run_name: str | None = setting("the run's name in the trackers (default: the --output folder's name, else "
                                   "METHOD-TASK-sSEED)", None)
    tracker_project: str = setting("the trackers' project (MLflow experiment, W&B and trackio project)", "peftlab")

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "max_length",
                    "save_total_limit", "logging_steps", "num_beams", "max_new_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_steps", "max_train_samples", "max_eval_samples", "holdout", "eval_steps", "save_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ArgumentError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.save_minutes is not None and not self.save_minutes > 0:
            raise ArgumentError(f"--save-minutes must be positive (got {self.save_minutes})")
        if self.compile and self.fsdp:
            raise ArgumentError("--compile with --fsdp is not supported yet: drop one of them")
        if self.learning_rate <= 0:
            raise ArgumentError(f"--lr must be positive (got {self.learning_rate})")
        if not 0 <= self.warmup_ratio < 1:
            raise ArgumentError(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.method == UNTUNED and self.options:
            raise ArgumentError(f"--method {UNTUNED} applies no method, so it takes no --set options "
                                f"(got {', '.join(sorted(self.options))})")
        if self.resume and self.output_dir is None:
            raise ArgumentError("--resume needs --output: the folder that holds the checkpoints")
        object.__setattr__(self, "eval_tasks", tuple(self.eval_tasks))
        object.__setattr__(self, "report_to", trackers_asked(self.report_to))
        if self.report_to and self.output_dir is None and self.tracker_dir is None:
            raise ArgumentError(f"--report-to {' '.join(self.report_to)} writes files: give --output DIR (the trackers "
                                f"write inside it) or --tracker-dir DIR")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def command_line(self) -> list[str]:
        """The ``peftlab train`` arguments that make this run: model, task, method and seed, then every
        setting that differs from its default."""
        words = ["peftlab", "train"]
        for item in dataclasses.fields(self):
            value, flag = getattr(self, item.name), "--" + FLAGS.get(item.name, item.name.replace("_", "-"))
            if item.name not in ("model", "task", "method", "seed") and value == _default(item):
                continue
            if isinstance(value, bool):
                words.append(flag)  # a flag given flips its default
            elif item.name == "options":
                words += [word for key, option in sorted(value.items()) for word in ("--set", f"{key}={_text(option)}")]
            elif item.name in ("eval_tasks", "report_to"):
                words += [word for task in value for word in (flag, task)]
            else:
                words += [flag, str(value)]
        return words


    def resume_settings(self) -> dict[str, Any]:
        """The settings a checkpoint records and ``--resume`` compares (JSON values; options as text, so
        ``rank=8`` from ``--set`` equals ``rank: 8`` from a config file)."""
        settings = {name: getattr(self, name) for name in RESUME_SETTINGS}
        settings["options"] = {key: str(value) for key, value in sorted(self.options.items())}
        return settings


def trackers_asked(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``--report-to`` (or a config file's ``report_to``: one name or a list) as a tuple of tracker names;
    ``none`` alone means no tracker."""
    names = (value,) if isinstance(value, str) else tuple(value or ())
    unknown = [name for name in names if name not in (*TRACKERS, "none")]
    if unknown:
        raise ArgumentError(f"--report-to {', '.join(map(str, unknown))}: not a tracker; choose from "
                            f"{', '.join(TRACKERS)}, none")
    if "none" in names and len(set(names)) > 1:
        raise ArgumentError(f"--report-to none with {', '.join(n for n in names if n != 'none')}: give one or the other")
    return tuple(dict.fromkeys(name for name in names if name != "none"))


def _default(item: dataclasses.Field) -> Any:
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default


def _text(option: Any) -> str:
    """An option as ``--set`` reads it back: lists comma-separated, a hybrid's part as JSON."""
    if isinstance(option, (list, tuple)):
        return ",".join(map(str, option))
    if isinstance(option, dict):
        return json.dumps(option, sort_keys=True)
    return "none" if option is None else str(option)


@dataclass(frozen=True, kw_only=True)
class EvalArgs:
    """Score a saved adapter (or the plain base model, ``adapter=None``) on a task."""

    model: str
    task: str
    adapter: str | None = None
    data_dir: str | None = None
    split: str | None = None  # None: the task's scored split(s)
    data: DataFiles = field(default_factory=DataFiles)  # a file task's; what it leaves unset, the adapter's task.json
    max_eval_samples: int | None = None
    eval_batch_size: int = 32
    max_length: int = 128  # inputs; multiple-choice prompts use all the model's positions
    num_beams: int = 1
    max_new_tokens: int = 64
    seed: int = 42
    output: str | None = None  # a JSON file for the scores
    overwrite: bool = False  # replace an existing output file
