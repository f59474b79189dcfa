"""Loading models and turning text into token ids: the one place that knows the stack.

fasb_lens runs every model through TransformerLens 4's ``TransformerBridge``, which wraps a
HuggingFace model in place and exposes the classic hook names. This module is the only
one that knows

* how a model is loaded (the embedded SmolLM2-135M-Instruct, a hub name, a local folder),
* the hook names fasb_lens reads and writes (``blocks.{layer}.attn.hook_z``),
* the model's shape (``n_layers``, ``n_heads``, ``d_head``),
* how prompts become token ids (BOS, chat templates, the context length), and
* how a forward pass is called with a padding mask or a KV cache, the KV cache itself
  (:class:`KVCache`, which grows in place), and how attention runs inside those forwards
  (:func:`fast_attention`; :func:`bridge_attention` turns it off).

**The BOS rule.** A prompt is tokenised exactly as HuggingFace's ``tokenizer(text)`` does
for that model: SmolLM2 and GPT-2 get no BOS token, Llama-2 gets ``<s>``. ``load_model``
records that choice in ``model.cfg.default_prepend_bos`` (so ``model.to_tokens`` agrees)
and every fasb_lens function follows it unless called with ``prepend_bos=``. Prompts built
with a chat template carry their own special tokens and are tokenised without a BOS.
"""

from fasb_lens.models.attention import bridge_attention, fast_attention
from fasb_lens.models.kv_cache import (
    KVCache,
    build_cache,
    cache_layers,
    cache_length,
    copy_cache,
    crop_cache,
    select_rows,
)
from fasb_lens.models.loading import (
    DOWNLOAD_COMMAND,
    DTYPES,
    EMBEDDED_GGUF,
    EMBEDDED_MODEL_ID,
    EMBEDDED_PACKAGE,
    EMBEDDED_REQUIREMENT,
    EmbeddedModelMissingError,
    ModelAccessError,
    ModelOptions,
    ModelUnavailableError,
    cache_root,
    dtype_name,
    embedded_model_file,
    embedded_model_folder,
    load_model,
    parse_dtype,
)
from fasb_lens.models.running import blocks_from, forward, unembed
from fasb_lens.models.shape import (
    HOOK_FINAL,
    HOOK_RESID_POST,
    HOOK_RESID_PRE,
    HOOK_W_O_IN,
    HOOK_Z,
    ModelShape,
    ShapeMismatchError,
    check_shape,
    hook_resid_post_name,
    hook_resid_pre_name,
    hook_z_name,
    model_device,
    model_id,
    model_shape,
    site_shape,
)
from fasb_lens.models.tokens import (
    PromptTooLongError,
    Truncation,
    chat_prompt,
    context_length,
    pad,
    pad_token_id,
    tokenize,
)

__all__ = [
    "DOWNLOAD_COMMAND",
    "DTYPES",
    "EMBEDDED_GGUF",
    "EMBEDDED_MODEL_ID",
    "EMBEDDED_PACKAGE",
    "EMBEDDED_REQUIREMENT",
    "HOOK_FINAL",
    "HOOK_RESID_POST",
    "HOOK_RESID_PRE",
    "HOOK_W_O_IN",
    "HOOK_Z",
    "KVCache",
    "EmbeddedModelMissingError",
    "ModelAccessError",
    "ModelShape",
    "ModelOptions",
    "ModelUnavailableError",
    "PromptTooLongError",
    "ShapeMismatchError",
    "Truncation",
    "blocks_from",
    "bridge_attention",
    "build_cache",
    "cache_layers",
    "cache_length",
    "cache_root",
    "chat_prompt",
    "check_shape",
    "context_length",
    "copy_cache",
    "crop_cache",
    "dtype_name",
    "embedded_model_file",
    "embedded_model_folder",
    "fast_attention",
    "forward",
    "hook_resid_post_name",
    "hook_resid_pre_name",
    "hook_z_name",
    "load_model",
    "model_device",
    "model_id",
    "model_shape",
    "pad",
    "pad_token_id",
    "parse_dtype",
    "select_rows",
    "site_shape",
    "tokenize",
    "unembed",
]
