"""Where whybox caches what it computes (trained demo models), and how it writes there safely."""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

import torch

__all__ = ["CACHE_ENV_VAR", "atomic_save_safetensors", "resolve_cache_dir", "save_to_cache"]

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
        if not isinstance(cache_dir, (str, os.PathLike)):
            from whybox.errors import InvalidParameterError

            raise InvalidParameterError(
                f"cache_dir must be a folder path (a str or pathlib.Path), or None for the default cache; got "
                f"{type(cache_dir).__name__} {cache_dir!r:.60}."
            )
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
        os.chmod(tmp_name, 0o666 & ~_umask())  # save_file makes it 0600: a shared cache would be private
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_to_cache(tensors: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """:func:`atomic_save_safetensors`, warning instead of failing when the cache cannot be written (a read-only
    home in a container): the model just trained is still the caller's, it is only trained again next time."""
    try:
        atomic_save_safetensors(tensors, path)
    except OSError as exc:
        warnings.warn(
            f"whybox could not write the {what} to its cache ({path}: {exc.strerror or exc}); it is returned "
            f"uncached and will be trained again next time. Set {CACHE_ENV_VAR} to a writable directory, or pass "
            "cache=False.",
            stacklevel=3,
        )
