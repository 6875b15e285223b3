"""Peak live bytes of the tensors torch allocates inside a block (CPU included), via a dispatch mode.

Each tensor an operator returns is counted by its storage once; the bytes are released when the last tensor
object seen for that storage is garbage collected. Tensors made before the block are not counted.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage pointer -> [tensor objects alive, bytes]

    def _release(self, ptr: int) -> None:
        entry = self._refs.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[ptr]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                ptr = st.data_ptr()
                if ptr == 0:
                    continue
                entry = self._refs.get(ptr)
                if entry is None:
                    self._refs[ptr] = entry = [0, st.nbytes()]
                    self.live += entry[1]
                    self.peak = max(self.peak, self.live)
                entry[0] += 1
                weakref.finalize(t, self._release, ptr)
        return out
