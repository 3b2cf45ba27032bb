"""A fine-tuning job request -> a `FinetuneConfig`, checked before the job is queued.

The OpenAI hyperparameters (`n_epochs`, `batch_size`, `learning_rate_multiplier`, each a value
or "auto") map onto `FinetuneConfig` fields; slmforge's own training options (`lora_r`,
`max_steps`, `target_modules`, ...) may be given beside them under the same names as
`slmforge finetune`'s options. Everything validates through `FinetuneConfig`, so a bad value is
a 400 that names the field, as in the CLI. Total steps (the events' "step n/total") and the
per-epoch checkpoints count rows as the trainer does: with `packing`, the packed rows.

`method.type` names the objective as OpenAI does ("supervised", "dpo"; slmforge adds "orpo"
and "simpo"), each with its own hyperparameters (`beta`; `orpo_lambda`, `simpo_gamma`), and
the fine-tuning method as the extension hyperparameter `finetune_method` (lora, dora, qlora,
full; default lora). slmforge's method names as types ("lora", "dora", ...) train supervised.
A file whose rows have the other shape (supervised examples for a pair objective, pairs for
supervised) is refused here, with its first such line.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slmforge.config import validate
from slmforge.config.finetune import FinetuneConfig, objective_options, objective_takers
from slmforge.config.methods import FINETUNE_METHODS, OBJECTIVES, get_objective
from slmforge.errors import ConfigError, SlmforgeError
from slmforge.http.errors import APIError
from slmforge.jobs.store import JobStore

DEFAULT_EPOCHS = 3


def request_methods() -> dict[str, tuple[str, str]]:
    """What a request's `method.type` may name, as (fine-tuning method, objective): OpenAI's
    objective types ("supervised") train a LoRA adapter with that objective; slmforge's method
    names ("lora", "dora", "qlora", "full") train supervised with that method. Both registries
    live in `config/methods.py`."""
    by_objective = {o.openai_type: ("lora", o.name) for o in OBJECTIVES.values()}
    return by_objective | {m: (m, "sft") for m in FINETUNE_METHODS}


# OpenAI's hyperparameters of every method type (the job's top-level `hyperparameters`)
OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# the extension that picks the fine-tuning method under an objective's type
FINETUNE_METHOD = "finetune_method"
# options only some objectives read: beta, orpo_lambda, simpo_gamma
OBJECTIVE_OPTIONS = sorted({n for o in OBJECTIVES for n in objective_options(o)})


# slmforge options a request may set beside the OpenAI hyperparameters.
EXTENSIONS = {
    "max_steps",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "max_seq_len",
    "warmup_steps",
    "lr_scheduler",
    "weight_decay",
    "max_grad_norm",
    "grad_accum",
    "packing",
    "group_by_length",
    "train_on_prompt",
    "text_template",
    "save_every",
    "eval_every",
    "log_every",
    "samples",
    "precision",
    "gradient_checkpointing",
}
OPENAI_NAMES = {
    "epochs": "n_epochs",
    "lr": "learning_rate_multiplier",
    "method": FINETUNE_METHOD,
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class JobRequest(BaseModel):
    """The body of `POST /v1/fine_tuning/jobs`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def resolve_model(model: str, model_root: Path | None) -> tuple[str, str]:
    """(what FinetuneConfig.model gets, the base name in `ft:BASE:...`)."""
    if model.startswith("ft:"):
        raise _bad(
            f"Fine-tuning the fine-tuned model {model} is not supported; start from its base.",
            "model",
            "model_not_supported",
        )
    candidate = Path(model).expanduser()
    if model_root is not None:
        root = model_root.resolve()
        candidate = (root / candidate).resolve()
        if not candidate.is_relative_to(root):
            raise _bad(f"The model {model} is outside this server's model root.", "model")
    if candidate.exists():
        if (candidate / "adapter_config.json").is_file():
            raise _bad(
                f"{model} is an adapter; fine-tune its base model instead.",
                "model",
                "invalid_model",
            )
        if not (candidate / "config.json").is_file():
            raise _bad(f"{model} is not a model folder (no config.json).", "model", "invalid_model")
        return str(candidate.resolve()), candidate.name
    if model_root is not None or not HUB_ID.match(model) or model.count("/") > 1:
        raise APIError(
            404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
        )
    return model, model.rsplit("/", 1)[-1]


def model_name(base: str, suffix: str | None, job_id: str) -> str:
    """`ft:BASE:SUFFIX:ID`; BASE keeps only characters that are valid in adapter names."""
    label = re.sub(r"[^A-Za-z0-9_-]", "-", base)
    return f"ft:{label}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


def _hyperparameters(request: JobRequest) -> tuple[dict[str, Any], str, str]:
    """(hyperparameters, method.type, the request field they came from)."""
    hyper = dict(request.hyperparameters or {})
    methods = request_methods()
    if request.method is None:
        return hyper, "supervised", "hyperparameters"
    kind = request.method.get("type")
    if kind not in methods:
        known = ", ".join(methods)
        raise _bad(f"method.type {kind!r} is not supported here (supported: {known}).", "method")
    extra = set(request.method) - {"type", kind}
    if extra:
        raise _bad(f"Unrecognized request argument supplied: method.{sorted(extra)[0]}", "method")
    settings = request.method.get(kind) or {}
    if not isinstance(settings, dict) or set(settings) - {"hyperparameters"}:
        raise _bad(f"method.{kind} takes only a hyperparameters object.", f"method.{kind}")
    nested = settings.get("hyperparameters") or {}
    if hyper and nested:
        raise _bad(
            "Give hyperparameters either at the top level or in method, not both.",
            "hyperparameters",
        )
    return nested or hyper, kind, f"method.{kind}.hyperparameters"


def _method_and_objective(hyper: dict[str, Any], kind: str, where: str) -> tuple[str, str]:
    """(fine-tuning method, objective) of a request, after checking that each hyperparameter
    is known and applies to the objective its type names."""
    method, objective = request_methods()[kind]
    known = {*OPENAI_HYPERPARAMETERS, FINETUNE_METHOD, *OBJECTIVE_OPTIONS} | EXTENSIONS
    for name in hyper:
        if name not in known:
            raise _bad(
                f"Unrecognized hyperparameter {where}.{name} (known: {', '.join(sorted(known))})",
                f"{where}.{name}",
            )
        if name in OBJECTIVE_OPTIONS and name not in objective_options(objective):
            takers = ", ".join(OBJECTIVES[o].openai_type for o in objective_takers(name))
            raise _bad(
                f"{where}.{name} does not apply to method type {kind} (it applies to {takers}).",
                f"{where}.{name}",
            )
    if FINETUNE_METHOD in hyper:
        if kind in FINETUNE_METHODS:
            types = ", ".join(o.openai_type for o in OBJECTIVES.values())
            raise _bad(
                f"method type {kind} already names the fine-tuning method; give "
                f"{FINETUNE_METHOD} with method type {types}.",
                f"{where}.{FINETUNE_METHOD}",
            )
        method = _auto(hyper[FINETUNE_METHOD], method)
    return method, objective


def check_file_shapes(
    files: dict[str, dict[str, Any]], store: JobStore, objective: str, kind: str
) -> None:
    """A 400 naming the first line of a training or validation file whose rows have the wrong
    shape for the objective: supervised examples for DPO, pairs for supervised."""
    from slmforge.data.preference import shape_mismatch

    want = "pairs" if get_objective(objective).pairs else "examples"
    for param, row in files.items():
        finding = shape_mismatch(store.file_path(row), want)
        if finding is not None:
            finding = dataclasses.replace(finding, file=row["filename"])
            raise _bad(f"invalid {param} for a {kind} job: {finding}", param, f"invalid_{param}")


def _auto(value: Any, default: Any) -> Any:
    return default if value in (None, "auto") else value


def build_config(
    request: JobRequest,
    job_id: str,
    model: str,
    files: dict[str, dict[str, Any]],
    store: JobStore,
    out: Path,
    device: str,
) -> tuple[FinetuneConfig, dict[str, Any], int]:
    """(the validated FinetuneConfig, the job's hyperparameters as its `method` reports
    them, total steps)."""
    hyper, kind, where = _hyperparameters(request)
    method, objective = _method_and_objective(hyper, kind, where)
    check_file_shapes(files, store, objective, kind)
    examples = files["training_file"]["examples"]
    batch = _auto(hyper.get("batch_size"), min(8, max(1, examples // 10)))
    epochs = _auto(hyper.get("n_epochs"), DEFAULT_EPOCHS)
    multiplier = _auto(hyper.get("learning_rate_multiplier"), 1.0)
    lr_default = FinetuneConfig.model_fields["lr"].default
    values: dict[str, Any] = {
        "model": model,
        "data": str(store.file_path(files["training_file"])),
        "out": str(out),
        "method": method,
        "objective": objective,
        "epochs": epochs,
        "batch_size": batch,
        "lr": lr_default * multiplier if isinstance(multiplier, int | float) else multiplier,
        "seed": request.seed if request.seed is not None else secrets.randbelow(2**31),
        "log_every": 1,
        "samples": 0,
        "device": device,
        **{k: v for k, v in hyper.items() if k in EXTENSIONS},
        **{k: v for k, v in hyper.items() if k in OBJECTIVE_OPTIONS and v != "auto"},
    }
    if "validation_file" in files:
        values["eval_data"] = str(store.file_path(files["validation_file"]))
    per_step = values["batch_size"] * values.get("grad_accum", 1)
    if isinstance(per_step, int) and examples < per_step:
        rows = "pairs" if get_objective(objective).pairs else "examples"
        raise _bad(
            f"The training file has {examples} {rows}, fewer than one batch "
            f"(batch_size {per_step}).",
            f"{where}.batch_size",
        )
    cfg = _validated(values, where)
    steps_per_epoch, total = _steps(cfg, examples, where)
    if cfg.save_every is None and total > steps_per_epoch:
        cfg.save_every = steps_per_epoch  # a checkpoint per epoch, as OpenAI keeps them
    public = {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": multiplier}
    for name in objective_options(objective):  # as resolved: beta "auto" -> its default
        public[name] = cfg.effective_beta if name == "beta" else getattr(cfg, name)
    return cfg, public, total


def _steps(cfg: FinetuneConfig, examples: int, where: str) -> tuple[int, int]:
    """(steps per epoch, total steps), counted as `train.sft.setup` counts them."""
    per_step = cfg.batch_size * cfg.grad_accum
    rows = training_rows(cfg, examples)
    if rows < per_step:
        rows_text = f"{rows} row" + ("s" if rows != 1 else "")
        raise _bad(
            f"The training file's {examples} examples pack into {rows_text} of max_seq_len "
            f"{cfg.max_seq_len}, fewer than one batch (batch_size {per_step}).",
            f"{where}.batch_size",
        )
    steps_per_epoch = rows // per_step
    return steps_per_epoch, cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def training_rows(cfg: FinetuneConfig, examples: int) -> int:
    """Rows an epoch of `cfg` trains on, as the trainer makes them (`train.sft.load_data`, then
    `train.collate.pack`): with packing, several examples share a row, so an epoch has fewer
    steps. Without packing a row is an example, and the upload's count is the answer: tokenizing
    every job's data here would only tell apart examples the trainer skips (no assistant token
    within max_seq_len), which it reports in the job's log."""
    if not cfg.packing:
        return examples
    from slmforge.models.load import load_tokenizer
    from slmforge.train.collate import pack
    from slmforge.train.sft import load_data

    try:
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except SlmforgeError as exc:
        raise _bad(str(exc), "model", "invalid_model") from None
    try:
        train, _, _ = load_data(cfg.model_copy(update={"eval_data": None}), tokenizer)
    except SlmforgeError as exc:  # e.g. a model without a chat template and no text_template
        raise _bad(str(exc), "training_file", "invalid_training_file") from None
    return len(pack(train, cfg.max_seq_len))


def _validated(values: dict[str, Any], where: str) -> FinetuneConfig:
    try:
        return validate(FinetuneConfig, values, prefix=where)
    except ConfigError as exc:
        message = str(exc)
        for ours, theirs in OPENAI_NAMES.items():
            message = message.replace(f"{where}.{ours}:", f"{where}.{theirs}:")
        param = message.split(":", 1)[0] if message.startswith(where) else where
        raise _bad(message, param) from None
