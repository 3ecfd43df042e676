"""Reading model files safely: every torch file and ONNX graph the package opens goes through here.

A ``.pt`` file is a pickle, and unpickling runs whatever code the file names. Checkpoints are
therefore read with ``torch.load(weights_only=True)``: only tensors, numbers, strings and plain
containers (dict, list, tuple, OrderedDict) are accepted, which is everything ``train bev``,
``train lidar`` and the exports write. Any failure (a refused object, a truncated or random file,
an invalid ONNX protobuf) becomes one :class:`ConfigError` line naming the file, so commands and
nodes end with exit code 2 instead of a traceback.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from qd_perception.config import ConfigError


def load_torch_file(path: str | Path, what: str = "checkpoint", map_location: str = "cpu") -> Any:
    """Contents of a torch file written by this package (tensors and plain containers only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses the first global it does not allow: name it, without torch's advice
        # to retry with weights_only=False (that would run the file's code).
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # garbage bytes that only look like a pickle
            raise ConfigError(f"{what} {path} is not a readable torch file (UnpicklingError)") from None
        raise ConfigError(
            f"{what} {path} refused: it holds objects other than tensors and plain containers "
            f"(global {found.group(1)[:80]}); unpickling such a file could run code"
        ) from None
    except Exception as e:  # truncated, random bytes, not a zip/pickle, wrong tensor storage...
        raise ConfigError(
            f"{what} {path} is not a readable torch file ({type(e).__name__}: {_short(e)})"
        ) from None


def ort_session(path: str | Path, options: Any = None, providers: list[str] | None = None) -> Any:
    """``onnxruntime.InferenceSession`` of ``path``; a missing or invalid graph is a ConfigError."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX model not found: {path}")
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
        raise ConfigError(f"{path} is not a valid ONNX model ({type(e).__name__}: {_short(e)})") from None


def _short(e: BaseException, limit: int = 160) -> str:
    """First line of an exception message, at most ``limit`` characters (one-line errors)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
