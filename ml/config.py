"""Training hyperparameters: the single definition, with a docstring per field and checks on construction.

Owns the frozen dataclasses (LoraSettings, QuantSettings, DeepSpeedSettings, TrainerSettings shared with
ml.rl.config, SupervisedConfig), the field rules every config module describes its fields with (integer,
number, choice, flag, optional, names, nested: each checks a value and yields its JSON Schema), the
schema of a whole class (`json_schema`, which the API publishes and the console's form is drawn from),
the method table (`MethodSpec`, filled by config classes declared with `method=`), their dict form
(from_dict/to_dict, naming bad params by dotted path) and `resolve_auto`, which turns OpenAI-style "auto"
values into numbers from the dataset size. It does not look at hardware or files.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal

Auto = Literal["auto"]
AUTO = "auto"
Adapter = Literal["lora", "qlora", "full"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")

# Learning rate that a multiplier of 1.0 means, per adapter (LoRA needs roughly 10x full fine-tuning's).
BASE_LEARNING_RATE = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}
# learning_rate_multiplier "auto" at batch size 4, per adapter, and its bounds. Calibrated with
# bench/fact_sweep.py (docs/training-defaults.md): ~40 examples must be learned in 15-120 steps. QLoRA
# learns slower on its 4-bit base (at batch 8, 5.7e-4 missed a fact that 8e-4 taught).
# Weight of the replay penalty toward the base model's answers (ml.train.retain), per adapter; chosen from
# the probes in docs/training-defaults.md (QLoRA: 4 lost 12 points at batch 1, 8 stopped a 15-step run
# from learning its fact, 6 did neither).
AUTO_RETAIN_BASE = {"lora": 4.0, "qlora": 6.0}
AUTO_LR_MULTIPLIER_AT_BATCH_4 = {"lora": 2.0, "qlora": 2.8, "full": 2.0}
AUTO_LR_MULTIPLIER_RANGE = (1.0, 5.0)
# Examples per forward pass are chosen so one micro-batch holds about this many tokens.
MICRO_BATCH_TOKEN_BUDGET = 2048
MAX_AUTO_MICRO_BATCH = 16


class ConfigError(ValueError):
    """A hyperparameter is invalid. `param` is its dotted name ("lora.r") for a 400 that names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message

    def under(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}.{self.param}", self.message)


_OR_AUTO = ' or "auto"'

# How a config field is described: `name: type = field(default=..., metadata=<rule>)`, then its docstring.
# A rule (integer, number, choice, flag, optional, nested) holds the check run on construction:
# check(param name, value) raises ConfigError naming the param.
Rule = dict[str, Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _or_auto(schema: dict[str, Any], auto: bool) -> dict[str, Any]:
    return {"anyOf": [schema, {"const": AUTO}]} if auto else schema


def integer(lo: int, hi: int | None = None, auto: bool = False) -> Rule:
    """An integer in [lo, hi] (no upper bound when hi is None); with auto, "auto" too."""
    schema: dict[str, Any] = {"type": "integer", "minimum": lo}
    if hi is not None:
        schema["maximum"] = hi

    def check(name: str, v: Any) -> None:
        if auto and v == AUTO:
            return
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            rng = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
            raise ConfigError(name, f"must be {rng}{_OR_AUTO if auto else ''}, got {v!r}")

    return {"check": check, "schema": _or_auto(schema, auto)}


def number(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False, auto: bool = False) -> Rule:
    """A finite number between lo and hi, each bound closed unless said open; with auto, "auto" too."""
    schema = {"type": "number", "exclusiveMinimum" if lo_open else "minimum": lo,
              "exclusiveMaximum" if hi_open else "maximum": hi}

    def check(name: str, v: Any) -> None:
        if auto and v == AUTO:
            return
        ok = _is_num(v) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            bound = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise ConfigError(name, f"must be a number in {bound}{_OR_AUTO if auto else ''}, got {v!r}")

    return {"check": check, "schema": _or_auto(schema, auto)}


def choice(*options: Any) -> Rule:
    """One of `options`."""

    def check(name: str, v: Any) -> None:
        if v not in options:
            raise ConfigError(name, f"must be one of {', '.join(map(repr, options))}, got {v!r}")

    return {"check": check, "schema": {"enum": list(options)}}


def flag(auto: bool = False) -> Rule:
    """true or false; with auto, "auto" too."""

    def check(name: str, v: Any) -> None:
        if not (isinstance(v, bool) or (auto and v == AUTO)):
            raise ConfigError(name, f"must be true or false{_OR_AUTO if auto else ''}, got {v!r}")

    return {"check": check, "schema": _or_auto({"type": "boolean"}, auto)}


def optional(rule: Rule) -> Rule:
    """None (the field's "off" or "not set"), or what `rule` accepts."""
    inner = rule["check"]

    def check(name: str, v: Any) -> None:
        if v is not None:
            inner(name, v)

    return {**rule, "check": check, "schema": {"anyOf": [rule["schema"], {"type": "null"}]}}


def names(*keywords: str) -> Rule:
    """One of the `keywords`, or a non-empty list of non-empty names (e.g. module names)."""

    def check(name: str, v: Any) -> None:
        if v in keywords:
            return
        if not (isinstance(v, (list, tuple)) and v and all(isinstance(x, str) and x for x in v)):
            alts = " or ".join([*map(repr, keywords), "a non-empty list of names"])
            raise ConfigError(name, f"must be {alts}, got {v!r}")

    item = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
    return {"check": check, "schema": {"anyOf": [{"enum": list(keywords)}, item]} if keywords else item}


def nested(cls: type, nullable: bool = False) -> Rule:
    """A settings object of class `cls` (from_dict builds it from a dict); with nullable, None too."""

    def check(name: str, v: Any) -> None:
        if not (isinstance(v, cls) or (nullable and v is None)):
            raise ConfigError(name, f"must be {cls.__name__}{' or null' if nullable else ''}")

    return {"check": check, "nested": cls, "nullable": nullable}


@dataclass(frozen=True)
class MethodSpec:
    """A training method as the API, the console and the worker see it, declared by its config class:

        class DPOConfig(_TrainerConfig, method="dpo", data="preference", recipe="ml.rl.dpo:run_dpo")

    Declaring the class registers the method in METHODS (ml.methods imports every config module): the API
    accepts `method.type` "dpo", publishes the class's schema, checks the training file holds preference
    data, and the worker runs the recipe. Adding a method is a recipe function and a config class.
    """

    name: str  # method.type in the API
    config: type  # the config class (its fields are the method's settings)
    data: Literal["sft", "preference", "prompts"]  # what the training file must hold
    recipe: str  # "module:function" that runs it; imported only where it runs (the worker)
    produces: Literal["fine_tuned", "reward_model"] = "fine_tuned"  # a chat model, or a scorer
    # settings that name a model instead of tuning training: name -> the kind of model it must be
    inputs: tuple[tuple[str, str], ...] = ()
    # OpenAI's names read as one of this method's fields (PPO: batch_size is rollouts_per_step)
    aliases: tuple[tuple[str, str], ...] = ()

    def load_recipe(self) -> Callable[..., Any]:
        module, function = self.recipe.split(":")
        return getattr(importlib.import_module(module), function)


METHODS: dict[str, MethodSpec] = {}


class _DictMixin:
    """Checks on construction, from_dict/to_dict; nested errors get a dotted param name.

    Every field with a rule is checked in declaration order, then `_check` runs the rules that relate
    fields to each other. A subclass declared with `method=...` registers a MethodSpec. Shared with
    ml.rl.config.
    """

    def __init_subclass__(cls, method: str | None = None, **spec: Any) -> None:
        super().__init_subclass__()
        if method is not None:
            if method in METHODS:
                raise TypeError(f"method {method!r} is declared twice ({METHODS[method].config.__name__})")
            spec = {k: tuple(v.items()) if isinstance(v, dict) else v for k, v in spec.items()}
            METHODS[method] = MethodSpec(method, cls, **spec)

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is not None:
                check(f.name, getattr(self, f.name))
        self._check()

    def _check(self) -> None:
        """Rules between fields (a subclass adds its own after calling super()._check())."""

    def check_examples(self, n: int) -> None:
        """Raise ConfigError (naming the field) if a training file of `n` examples cannot give this config
        one full step. Most methods train on a partial batch; see ml.rl.config for those that cannot."""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None):
        d = dict(d or {})
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        for key in d:
            if key not in known:
                raise ConfigError(key, f"unknown parameter (known: {', '.join(sorted(known))})")
        kwargs = {}
        for name, value in d.items():
            sub = known[name].metadata.get("nested")
            if sub is not None and isinstance(value, dict):
                try:
                    value = sub.from_dict(value)
                except ConfigError as e:
                    raise e.under(name) from None
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if is_dataclass(v):
                v = v.to_dict()  # type: ignore[union-attr]
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


@dataclass(frozen=True)
class LoraSettings(_DictMixin):
    """Low-rank adapter shape (used by adapter "lora" and "qlora"; also by the RL recipes)."""

    r: int = field(default=16, metadata=integer(1, 1024))
    """Rank of the update matrices: capacity of the adapter (8-64 typical)."""
    alpha: int = field(default=32, metadata=integer(1, 4096))
    """Scaling numerator: the update is multiplied by alpha / r. Keep 32 when changing r: the calibrated
    learning rate then stays about right for any rank."""
    dropout: float = field(default=0.05, metadata=number(0.0, 0.9))
    """Dropout on the adapter input during training (0 disables)."""
    target_modules: str | tuple[str, ...] = field(default="all-linear", metadata=names("all-linear"))
    """Which layers get adapters: "all-linear" (every linear except the output head) or module names."""

    def _check(self) -> None:
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))


@dataclass(frozen=True)
class QuantSettings(_DictMixin):
    """How the frozen base weights are quantised for QLoRA (bitsandbytes)."""

    bits: Literal[4, 8] = field(default=4, metadata=choice(4, 8))
    """4 (NF4 with double quantisation) or 8 (LLM.int8). Saves memory, not time."""


@dataclass(frozen=True)
class DeepSpeedSettings(_DictMixin):
    """DeepSpeed ZeRO for full fine-tuning of models that do not fit one device."""

    stage: Literal[2, 3] = field(default=2, metadata=choice(2, 3))
    """ZeRO stage: 2 shards optimizer state and gradients, 3 also shards the parameters."""
    offload: bool = field(default=False, metadata=flag())
    """Keep optimizer state (and with stage 3 the parameters) in CPU memory: slower, much less GPU memory."""


@dataclass(frozen=True)
class TrainerSettings(_DictMixin):
    """Settings every method trained by a Hugging Face trainer shares: supervised here; reward model, DPO,
    RLOO and GRPO in ml.rl.config. Declared once, so they check, document and default alike."""

    lora: LoraSettings = field(default_factory=LoraSettings, metadata=nested(LoraSettings))
    """Adapter shape when an adapter is trained (adapter "lora", or "qlora" for supervised)."""
    max_steps: int | None = field(default=None, metadata=optional(integer(1)))
    """Stop after this many optimizer steps (overrides n_epochs); for smoke tests and budgets."""
    lr_scheduler: Scheduler = field(default="linear", metadata=choice(*SCHEDULERS))
    """Decay after warmup: "linear" (OpenAI's), "cosine", "constant" or "constant_with_warmup"."""
    weight_decay: float = field(default=0.0, metadata=number(0.0, 1.0))
    """AdamW decoupled weight decay."""
    max_grad_norm: float = field(default=1.0, metadata=number(0.0, 1e6))
    """Gradient clipping by global norm (0 disables)."""
    gradient_checkpointing: bool = field(default=False, metadata=flag())
    """Recompute activations in the backward pass: about 35% less memory, about 25% slower."""
    seed: int = field(default=42, metadata=integer(0, 2**32 - 1))
    """Seed for data order, dropout, adapter initialisation and sampling: same seed + data = same run."""


@dataclass(frozen=True)
class SupervisedConfig(TrainerSettings, method="supervised", data="sft", recipe="ml.train.sft:run_supervised"):
    """Supervised fine-tuning (SFT) of a chat model on conversations; OpenAI's hyperparameters plus more."""

    adapter: Adapter = field(default="lora", metadata=choice("lora", "qlora", "full"))
    """What is trained: "lora" (small adapter), "qlora" (adapter over a 4/8-bit base) or "full" (all weights)."""
    quant: QuantSettings = field(default_factory=QuantSettings, metadata=nested(QuantSettings))
    """Base-weight quantisation for "qlora"."""
    deepspeed: DeepSpeedSettings | None = field(
        default=None, metadata=nested(DeepSpeedSettings, nullable=True)
    )
    """DeepSpeed ZeRO settings; None trains without DeepSpeed. Not combinable with "qlora"."""

    n_epochs: int | Auto = field(default=AUTO, metadata=integer(1, 100, auto=True))
    """Passes over the training file. "auto": 3, more for tiny files and fewer for huge ones (OpenAI's rule)."""
    batch_size: int | Auto = field(default=AUTO, metadata=integer(1, 4096, auto=True))
    """Examples per optimizer step over all devices. "auto": about 0.2% of the examples, 1 to 256."""
    micro_batch_size: int | Auto = field(default=AUTO, metadata=integer(1, 1024, auto=True))
    """Examples per forward pass on one device (memory knob). "auto": about 2048 tokens' worth."""
    gradient_accumulation: int | Auto = field(default=AUTO, metadata=integer(1, 4096, auto=True))
    """Forward passes per optimizer step; batch_size = micro_batch_size * gradient_accumulation * devices."""
    learning_rate: float | None = field(default=None, metadata=optional(number(0.0, 1.0, lo_open=True)))
    """Peak learning rate. None: the adapter's base rate (LoRA 2e-4, full 2e-5) times the multiplier."""
    learning_rate_multiplier: float | Auto = field(
        default=AUTO, metadata=number(0.0, 100.0, lo_open=True, auto=True)
    )
    """Scales the base learning rate (ignored if learning_rate is set). "auto": 2 at batch size 4, growing
    with sqrt(batch_size) within [1, 5] (LoRA: 4e-4 at batch 4), calibrated so small files are learned."""
    warmup_ratio: float = field(default=0.03, metadata=number(0.0, 0.5))
    """Fraction of all steps spent warming the learning rate up from 0."""
    max_seq_length: int = field(default=2048, metadata=integer(16, 1 << 20))
    """Examples longer than this many tokens are cut at the end (counted and reported)."""
    packing: bool = field(default=True, metadata=flag())
    """Put several examples in one row (position ids restart, so none attends to another) to skip padding;
    False pads each example to the longest of its micro-batch."""
    bf16: bool | Auto = field(default=AUTO, metadata=flag(auto=True))
    """Train in bfloat16 autocast. "auto": on where the hardware supports it."""
    eval_interval: int | Auto = field(default=AUTO, metadata=integer(1, auto=True))
    """Optimizer steps between validation-loss evaluations (also one at the end). "auto": ~10 per run."""
    checkpoint_interval: int | Auto = field(default=AUTO, metadata=integer(1, auto=True))
    """Optimizer steps between checkpoints (also one at the end). "auto": each epoch, at most 250 steps apart."""
    keep_checkpoints: int = field(default=3, metadata=integer(1, 1000))
    """Newest complete checkpoints kept on disk; older ones are deleted."""
    retain_base: float | Auto = field(default=AUTO, metadata=number(0.0, 100.0, auto=True))
    """Weight of a penalty that keeps the model's answers to general prompts close to the base model's
    (replay of the base model's own answers, computed at the start; ml.train.retain), so that a small file
    is learned without losing general answers. 0 turns it off. "auto": 4 for lora and 6 for qlora on
    one process; 0 for full fine-tuning, DeepSpeed and several processes (which it does not support)."""

    def _check(self) -> None:
        if self.deepspeed is not None and self.adapter == "qlora":
            raise ConfigError("deepspeed", "DeepSpeed cannot train a bitsandbytes-quantised (qlora) model")
        if self.retain_base not in (AUTO, 0, 0.0) and (self.adapter == "full" or self.deepspeed is not None):
            raise ConfigError("retain_base", "needs an adapter (lora or qlora) without DeepSpeed: the base model "
                              "it keeps close to is the adapter switched off")
        self._check_batch_split()

    def _check_batch_split(self) -> None:
        b, m, g = self.batch_size, self.micro_batch_size, self.gradient_accumulation
        known = [x for x in (b, m, g) if x != AUTO]
        if len(known) == 3 and m * g != b and b % (m * g) != 0:
            raise ConfigError(
                "gradient_accumulation",
                f"batch_size {b} must be micro_batch_size {m} x gradient_accumulation {g} x devices",
            )
        if b != AUTO and m != AUTO and m > b:
            raise ConfigError("micro_batch_size", f"must not exceed batch_size ({m} > {b})")
        if b != AUTO and g != AUTO and b % g != 0:
            raise ConfigError("gradient_accumulation", f"must divide batch_size {b}, got {g}")

    @property
    def is_resolved(self) -> bool:
        return AUTO not in (
            self.n_epochs,
            self.batch_size,
            self.micro_batch_size,
            self.gradient_accumulation,
            self.learning_rate_multiplier,
            self.bf16,
            self.eval_interval,
            self.checkpoint_interval,
            self.retain_base,
        )

    @property
    def peak_learning_rate(self) -> float:
        """The learning rate actually used (after resolve_auto)."""
        if self.learning_rate is not None:
            return self.learning_rate
        if self.learning_rate_multiplier == AUTO:
            raise ValueError("call resolve_auto first")
        return BASE_LEARNING_RATE[self.adapter] * self.learning_rate_multiplier




# OpenAI's published rule for default epochs (openai-cookbook, "chat finetuning data prep").
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MAX_DEFAULT_EPOCHS = 3, 100, 25_000, 25


def auto_epochs(n_examples: int) -> int:
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, max(1, MIN_TARGET_EXAMPLES // n_examples))
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    """About 0.2% of the training examples, capped at 256 (OpenAI's documented default)."""
    return max(1, min(256, math.ceil(0.002 * n_examples)))


def auto_lr_multiplier(batch_size: int, adapter: str = "lora") -> float:
    """Calibrated at batch size 4 per adapter; larger batches take fewer, less noisy steps, so the rate grows
    with sqrt(batch_size) (Adam's square-root rule), within AUTO_LR_MULTIPLIER_RANGE."""
    lo, hi = AUTO_LR_MULTIPLIER_RANGE
    return round(min(hi, max(lo, AUTO_LR_MULTIPLIER_AT_BATCH_4[adapter] * math.sqrt(batch_size / 4))), 4)


def _split_batch(
    batch: int, micro: int | str, accum: int | str, devices: int, mean_len: float
) -> tuple[int, int]:
    per_device = batch / devices
    if per_device != int(per_device):
        raise ConfigError("batch_size", f"{batch} is not divisible by the {devices} devices")
    per_device = int(per_device)
    if micro != AUTO and accum != AUTO:
        if micro * accum != per_device:
            raise ConfigError(
                "gradient_accumulation",
                f"batch_size {batch} != micro_batch_size {micro} x gradient_accumulation {accum} x {devices} devices",
            )
        return micro, accum
    if accum != AUTO:
        if per_device % accum:
            raise ConfigError("gradient_accumulation", f"must divide {per_device} examples per device")
        return per_device // accum, accum
    cap = (
        micro
        if micro != AUTO
        else max(1, min(MAX_AUTO_MICRO_BATCH, int(MICRO_BATCH_TOKEN_BUDGET // max(mean_len, 1))))
    )
    # Largest micro-batch <= cap that divides the per-device batch, so the batch size stays exact.
    m = max(d for d in range(1, min(cap, per_device) + 1) if per_device % d == 0)
    if micro != AUTO and m != micro:
        raise ConfigError("micro_batch_size", f"must divide {per_device} examples per device, got {micro}")
    return m, per_device // m


def resolve_auto(
    config: SupervisedConfig, n_examples: int, n_tokens: int, n_devices: int = 1, bf16_supported: bool = False
) -> SupervisedConfig:
    """Replace every "auto" with a number chosen from the dataset size (OpenAI-style); returns a new config.

    n_examples/n_tokens describe the training file after rendering; n_devices is the data-parallel width.
    """
    if n_examples < 1:
        raise ConfigError("training_file", "has no usable examples")
    c = config
    epochs = auto_epochs(n_examples) if c.n_epochs == AUTO else c.n_epochs
    batch = auto_batch_size(n_examples) if c.batch_size == AUTO else c.batch_size
    if c.batch_size == AUTO:
        batch = max(n_devices, batch - batch % n_devices)
    micro, accum = _split_batch(
        batch, c.micro_batch_size, c.gradient_accumulation, n_devices, n_tokens / n_examples
    )
    mult = (
        auto_lr_multiplier(batch, c.adapter) if c.learning_rate_multiplier == AUTO else c.learning_rate_multiplier
    )
    steps_per_epoch = max(1, math.ceil(n_examples / batch))
    total = c.max_steps or steps_per_epoch * epochs
    retain_ok = c.adapter in ("lora", "qlora") and c.deepspeed is None and n_devices == 1
    if c.retain_base not in (AUTO, 0, 0.0) and not retain_ok:
        raise ConfigError("retain_base", f"is not supported on {n_devices} processes; set it to 0")
    return replace(
        c,
        n_epochs=epochs,
        batch_size=batch,
        micro_batch_size=micro,
        gradient_accumulation=accum,
        learning_rate_multiplier=mult,
        bf16=bf16_supported if c.bf16 == AUTO else c.bf16,
        eval_interval=max(1, total // 10) if c.eval_interval == AUTO else c.eval_interval,
        checkpoint_interval=min(steps_per_epoch, 250)
        if c.checkpoint_interval == AUTO
        else c.checkpoint_interval,
        retain_base=(AUTO_RETAIN_BASE[c.adapter] if retain_ok else 0.0) if c.retain_base == AUTO else c.retain_base,
    )


def _own_field_docs(cls: type) -> dict[str, str]:
    import ast

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in itertools.pairwise(body):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def config_field_docs(cls: type = SupervisedConfig) -> dict[str, str]:
    """Field name -> its docstring, parsed from the source of cls and of the config classes it inherits from."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if "__dataclass_fields__" in base.__dict__ and base.__module__.startswith("ml."):
            docs.update(_own_field_docs(base))
    return docs


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema (2020-12, as OpenAPI 3.1 uses) of a config class, built from the same rules that check
    it: each field's type, range or choices, its default and its docstring. The API publishes it and the
    console's form is made from it, so the checks, the documentation and the form cannot drift apart."""
    docs, defaults = config_field_docs(cls), field_defaults(cls)
    by_name = {f.name: f for f in fields(cls)}
    # the class's own settings first, then what it inherits (DPO's beta before the shared optimizer fields)
    order = dict.fromkeys(n for k in cls.__mro__ for n in inspect.get_annotations(k) if n in by_name)
    props: dict[str, Any] = {}
    for f in (by_name[n] for n in order):
        rule = f.metadata
        if "nested" in rule:
            sub = json_schema(rule["nested"])
            schema = {"anyOf": [sub, {"type": "null"}]} if rule["nullable"] else sub
        elif "schema" in rule:
            schema = dict(rule["schema"])
        else:
            raise TypeError(f"{cls.__name__}.{f.name} has no rule (integer, number, choice, ...)")
        props[f.name] = {**schema, "description": docs.get(f.name, ""), "default": defaults[f.name]}
    return {"type": "object", "title": cls.__name__, "description": " ".join((cls.__doc__ or "").split()),
            "properties": props, "additionalProperties": False}


def field_defaults(cls: type = SupervisedConfig) -> dict[str, Any]:
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            v = f.default_factory()  # type: ignore[misc]
            out[f.name] = v.to_dict() if is_dataclass(v) else v
        if isinstance(out[f.name], tuple):
            out[f.name] = list(out[f.name])
    return out
