"""Model ids: one safe pattern checked before any storage access, and the runs under the model root.

An id is a single path segment of letters, digits, `_` and `-`: no dots, slashes, percent signs or
backslashes, so no spelling of `..` or of an encoded separator can name anything outside the root.
The list of runs is cached for `ttl_s`, so requests for unknown ids cost no storage access. When the
root cannot be listed (a storage outage), the last list is kept for another `ttl_s`: a request must not
wait out an outage, and the ids that existed a moment ago still exist.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping

from fsg_ray import storage

MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SHOWN_CHARS = 80  # of a rejected id echoed in an error message


class MalformedModelId(ValueError):
    """Not a model id at all (answered 400)."""


class UnknownModel(LookupError):
    """A well-formed id that names no model (answered 404)."""


class ModelRootUnavailable(RuntimeError):
    """The model root could not be listed and has never been (answered 503)."""


def check_model_id(text: str) -> str:
    if not MODEL_ID.fullmatch(text):
        shown = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."
        raise MalformedModelId(f"model: {shown!r} is not a model id (1-64 letters, digits, '_' or '-', starting with a letter or digit)")
    return text


class ModelRegistry:
    """Which ids exist and where each one's run lives: explicit ids first, then the runs under the root."""

    def __init__(self, root: str | None, explicit: Mapping[str, str], ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.root, self.explicit, self.ttl_s, self.clock = root, dict(explicit), ttl_s, clock
        self._listed: frozenset[str] = frozenset()
        self._listed_at: float | None = None
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        return sorted(self.explicit.keys() | self._runs())

    def uri(self, model_id: str) -> str:
        """The run URI of a model; MalformedModelId before anything else, UnknownModel if it is not listed."""
        check_model_id(model_id)
        if model_id in self.explicit:
            return self.explicit[model_id]
        if model_id not in self._runs():
            raise UnknownModel(f"model: no model {model_id!r}; GET /v1/models lists them")
        return storage.join(self.root, model_id)

    def _runs(self) -> frozenset[str]:
        if self.root is None:
            return frozenset()
        with self._lock:
            now = self.clock()
            if self._listed_at is None or now - self._listed_at >= self.ttl_s:
                try:
                    with storage.without_retries():
                        names = storage.list_dir(self.root)
                except (storage.StorageError, OSError) as exc:
                    if self._listed_at is None:
                        raise ModelRootUnavailable(f"models: the model root cannot be listed: {' '.join(str(exc).split())}") from None
                    self._listed_at = now
                    return self._listed
                self._listed = frozenset(name for name in names if MODEL_ID.fullmatch(name))
                self._listed_at = now
            return self._listed
