"""Where whybox caches what it computes (trained demo models), and how it writes there safely."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

__all__ = ["CACHE_ENV_VAR", "atomic_save_safetensors", "resolve_cache_dir"]

#: Environment variable that, when set and non-empty, overrides the default cache directory.
CACHE_ENV_VAR = "WHYBOX_CACHE_DIR"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache directory to use (not created).

    Parameters
    ----------
    cache_dir : str or path-like, optional
        Explicit directory. When ``None``, the environment variable ``WHYBOX_CACHE_DIR`` is used if it
        is set and non-empty, otherwise ``platformdirs.user_cache_dir("whybox")``.

    Returns
    -------
    pathlib.Path
        The directory, with ``~`` expanded.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("whybox"))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` to ``path`` in the safetensors format, atomically.

    The file is written to a temporary name in the same directory and then moved over ``path`` with
    :func:`os.replace`, so a reader never sees a half-written file and concurrent writers are safe
    (the last one wins, and all write the same content).

    Parameters
    ----------
    tensors : dict of str to torch.Tensor
        The tensors to save (made contiguous and moved to CPU first).
    path : pathlib.Path
        Destination file; its parent directory is created if missing.
    """
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # A unique sibling name (not mkstemp, whose 0600 mode would make the cache private to this user).
    tmp_name = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"))
    try:
        save_file(payload, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
