"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
arXiv 2104.08691).

``P`` trainable virtual-token embeddings are prepended to the input embeddings of the frozen model:

    h_0 = [prompt; Embed(x)]        prompt in R^{P x hidden}, the only trainable parameters

A forward pre-hook on the model (on the encoder and decoder stacks of an encoder-decoder, where the
prompt goes on the encoder input) turns ``input_ids`` into ``inputs_embeds`` and prepends the prompt.
The attention mask gets ``P`` leading ones, token-level labels ``P`` leading ``-100``, ``token_type_ids``
zeros; given ``position_ids`` become ``[0..P-1, position_ids + P]`` (the prompt sits before the text, as
if it were text). Token-level logits come back aligned with the input (the prompt's rows dropped).

On decoder-only models (LLaMA, GPT-2 families) a training-shaped forward does not repeat the prompt per
example: the batch runs packed behind one copy of it (``shared_prompt``, :mod:`_shared_prompt`), which
computes the same function with ``(B - 1) * P`` fewer rows per layer.

With a KV cache, the prompt is prepended only on the first (prefill) step: on later steps the cache
already holds it, so only the attention mask is extended and ``position_ids`` shifted. An
encoder-decoder's cross-attention mask is extended on the decoder side.

Initialisation (``init``): ``random`` (uniform in [-0.5, 0.5], the paper's random init), ``vocabulary``
(embeddings of tokens sampled from the ``vocabulary_size`` first ids; for sentencepiece vocabularies
these are the most frequent ones, the paper's "sampled vocab"), or ``text`` (embeddings of a text's
tokens, repeated to length ``P``: give ``init_text_ids``, or ``init_text`` and a local ``tokenizer`` path).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from peftlab.core.architectures import architecture_of, model_kind
from peftlab.core.config import ConfigError, MethodConfig, option, require
from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterModule
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.sharding import unsharded, units
from peftlab.core.state import Injection
from peftlab.methods.additive._shared_prompt import SHARED_FAMILIES, SharedPrompt

PROMPT_NAME = "prompt_embedding"


@dataclass(frozen=True, kw_only=True)
class PromptTuningConfig(MethodConfig):
    method = "prompt_tuning"

    num_virtual_tokens: int = option(20, "Prompt length P: trainable embeddings prepended to the input.")
    init: Literal["random", "vocabulary", "text"] = option(
        "vocabulary", "How the prompt starts: random (uniform +-0.5), vocabulary (sampled token embeddings), text."
    )
    vocabulary_size: int = option(5000, "init=vocabulary samples token ids below this bound (the frequent ones).")
    init_text_ids: tuple[int, ...] = option((), "init=text: the token ids of the initial text (repeated to P).")
    init_text: str = option("", "init=text without init_text_ids: the text, tokenized with `tokenizer`.")
    tokenizer: str = option("", "init=text: local path of the tokenizer for init_text (nothing is downloaded).")
    shared_prompt: bool = option(
        True, "Decoder-only models: compute the prompt's positions once per batch, packed in front of every "
              "example (same result, (B-1)*P fewer rows per layer); false prepends the prompt to every example."
    )

    def validate(self) -> None:
        require(self.num_virtual_tokens > 0, self, "num_virtual_tokens", "must be positive")
        require(self.vocabulary_size > 0, self, "vocabulary_size", "must be positive")
        if self.init == "text":
            require(bool(self.init_text_ids) or bool(self.init_text and self.tokenizer), self, "init",
                    "init='text' needs init_text_ids, or init_text together with a tokenizer path")


class PromptEmbedding(AdapterModule):
    """The ``(P, hidden)`` prompt and the hooks that prepend it."""

    def __init__(self, initial: torch.Tensor, shared: SharedPrompt | None = None) -> None:
        super().__init__()
        self.prompt = nn.Parameter(initial.detach().clone().float())
        self.shared = shared  # decoder-only: the prompt's rows once per batch, when that applies
        self._prepended: int | None = None  # input length while a prefill forward is under way

    @property
    def length(self) -> int:
        return self.prompt.shape[0]

    def prepend(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """Forward pre-hook of the model (or encoder stack): prepend the prompt on a prefill step."""
        if args:
            if len(args) > 1:
                raise PromptTuningError("pass the model's inputs as keywords (input_ids=..., attention_mask=...)")
            kwargs = {"input_ids": args[0], **kwargs}
        if self.shared is not None:
            self.shared.release()  # a forward that raised may have left the last one packed
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        if past > 0:
            return (), self._decode_step(kwargs, past)
        ids, embeds = kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None)
        if embeds is None:
            if ids is None:
                raise PromptTuningError("prompt tuning needs input_ids or inputs_embeds")
            embedding = module.get_input_embeddings()
            with _gathered(module, embedding):
                embeds = embedding(ids)
        batch, length = embeds.shape[:2]
        size, device = self.length, embeds.device
        if self.shared is not None and self.shared.applies(module, kwargs, batch):
            kwargs = self.shared.pack(self.prompt.to(embeds.dtype), embeds, kwargs)
        else:
            kwargs["inputs_embeds"] = torch.cat([self.prompt.to(embeds.dtype).expand(batch, -1, -1), embeds], dim=1)
            if kwargs.get("attention_mask") is not None:
                kwargs["attention_mask"] = _lead(kwargs["attention_mask"], size, 1)
            if kwargs.get("position_ids") is not None:
                positions = kwargs["position_ids"]
                start = torch.arange(size, device=device, dtype=positions.dtype).expand(positions.shape[0], -1)
                kwargs["position_ids"] = torch.cat([start, positions + size], dim=1)
            if kwargs.get("token_type_ids") is not None:
                kwargs["token_type_ids"] = _lead(kwargs["token_type_ids"], size, 0)
        labels = kwargs.get("labels")
        if labels is not None and labels.dim() >= 2 and labels.shape[1] == length:
            kwargs["labels"] = _lead(labels, size, -100)
        self._prepended = length
        return (), kwargs

    def _decode_step(self, kwargs: dict[str, Any], past: int) -> dict[str, Any]:
        """A cached step: the cache holds the prompt; extend the mask over it and shift positions."""
        new = next(kwargs[k].shape[1] for k in ("input_ids", "inputs_embeds") if kwargs.get(k) is not None)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.shape[1] + self.length == past + new:
            kwargs["attention_mask"] = _lead(mask, self.length, 1)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + self.length
        self._prepended = None
        return kwargs

    def trim(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook: drop the prompt's rows from token-level logits."""
        length, self._prepended = self._prepended, None
        if self.shared is not None:
            self.shared.release()
        logits = getattr(output, "logits", None)
        if length is not None and logits is not None and logits.dim() == 3 and logits.shape[1] == length + self.length:
            output.logits = logits[:, self.length:]
        return output

    def extend_encoder_mask(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        """Decoder-stack pre-hook: cross-attention must also see the prompt's encoder positions."""
        mask, states = kwargs.get("encoder_attention_mask"), kwargs.get("encoder_hidden_states")
        if mask is not None and states is not None and mask.shape[-1] + self.length == states.shape[1]:
            kwargs["encoder_attention_mask"] = _lead(mask, self.length, 1)
        return args, kwargs


class PromptTuningError(UserError, ValueError):
    pass


def _gathered(model: nn.Module, embedding: nn.Module) -> contextlib.AbstractContextManager[None]:
    """FSDP2 gathers a unit's weights when the unit's own forward runs; the prompt hook calls the input
    embedding directly, outside its unit's forward (BERT's embeddings are a unit of their own), so while its
    weight is still a shard, the innermost unit that holds it is gathered for the call and released after."""
    if not isinstance(getattr(embedding, "weight", None), DTensor):
        return contextlib.nullcontext()
    return unsharded([[unit for unit in units(model) if any(m is embedding for m in unit.modules())][-1]])


def _lead(tensor: torch.Tensor, size: int, fill: int) -> torch.Tensor:
    """Prepend ``size`` columns of ``fill`` along the sequence axis (dim 1)."""
    pad = torch.full((tensor.shape[0], size, *tensor.shape[2:]), fill, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor], dim=1)


def initial_prompt(embedding: nn.Embedding, config: PromptTuningConfig) -> torch.Tensor:
    size, weight = config.num_virtual_tokens, embedding.weight
    if config.init == "random":
        return torch.empty(size, weight.shape[1], device=weight.device).uniform_(-0.5, 0.5)
    if config.init == "vocabulary":
        ids = torch.randint(0, min(config.vocabulary_size, weight.shape[0]), (size,), device=weight.device)
    else:
        ids = torch.tensor(_text_ids(config), dtype=torch.long, device=weight.device)
        if ids.numel() == 0 or int(ids.max()) >= weight.shape[0] or int(ids.min()) < 0:
            raise ConfigError(f"prompt_tuning init text ids must lie in [0, {weight.shape[0]}); got {ids.tolist()}")
        ids = ids.repeat((size + ids.numel() - 1) // ids.numel())[:size]
    return weight[ids].detach().float()


def _text_ids(config: PromptTuningConfig) -> list[int]:
    if config.init_text_ids:
        return list(config.init_text_ids)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"prompt_tuning: cannot load the tokenizer at {config.tokenizer!r} ({error})") from None
    return tokenizer(config.init_text, add_special_tokens=False)["input_ids"]


class _Detach:
    """Takes prompt tuning off a model (``peftlab.unload``): drops the prompt module."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def remove(self) -> None:
        prompt = self.model._modules.get(PROMPT_NAME)
        if prompt is not None:
            if prompt.shared is not None:
                prompt.shared.detach()
            delattr(self.model, PROMPT_NAME)


def inject(model: nn.Module, config: PromptTuningConfig) -> Injection:
    embedding = model.get_input_embeddings()
    architecture = architecture_of(model)
    shares = config.shared_prompt and architecture is not None and architecture.name in SHARED_FAMILIES
    shared = SharedPrompt(model) if shares else None
    prompt = PromptEmbedding(initial_prompt(embedding, config), shared)
    model.add_module(PROMPT_NAME, prompt)
    if model_kind(model) == "encoder-decoder":
        hooks = [
            model.get_encoder().register_forward_pre_hook(prompt.prepend, with_kwargs=True),
            model.get_decoder().register_forward_pre_hook(prompt.extend_encoder_mask, with_kwargs=True),
        ]
    else:
        hooks = [
            model.register_forward_pre_hook(prompt.prepend, with_kwargs=True),
            model.register_forward_hook(prompt.trim),
        ]
        if shared is not None:
            hooks.append(model.base_model.register_forward_hook(shared.unpack_hidden))
    return Injection(hooks=[*hooks, _Detach(model)])


register(MethodSpec(
    name="prompt_tuning",
    family="additive",
    config_class=PromptTuningConfig,
    inject=inject,
    paper="Lester et al. 2021, The Power of Scale for Parameter-Efficient Prompt Tuning (arXiv 2104.08691)",
    summary="Trainable virtual-token embeddings prepended to the input embeddings.",
    hooks=MethodHooks(prepended_positions=lambda config: config.num_virtual_tokens),
))
