"""Read access to an audiocraft ``xp.cfg`` (the Hydra config, stored as an unresolved YAML string)."""
from __future__ import annotations

import re

from magnet_fast.errors import ConfigError

_MISSING = object()
_INTERP = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


class XpConfig:
    """Read-only view of a parsed xp.cfg that resolves OmegaConf ``${a.b}`` references on access.

    audiocraft writes xp.cfg with ``OmegaConf.to_yaml`` (unresolved), so e.g. ``encodec.sample_rate`` is
    the string ``'${sample_rate}'`` and ``seanet.causal`` is ``'${encodec.causal}'``.
    """

    def __init__(self, root: dict, what: str = "xp.cfg"):
        self.root, self.what = root, what

    def get(self, dotted: str, default=_MISSING):
        return self._resolve(self._lookup(dotted, default), dotted, 0)

    def _lookup(self, dotted: str, default=_MISSING):
        node = self.root
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is _MISSING:
                    raise ConfigError(f"{self.what} has no '{dotted}'; is this the right kind of "
                                      "audiocraft export?")
                return default
            node = node[part]
        return node

    def _resolve(self, value, where: str, depth: int):
        if depth > 16:
            raise ConfigError(f"{self.what}: '{where}' has a cyclic ${{...}} reference")
        if isinstance(value, str) and "${" in value:
            m = _INTERP.match(value.strip())
            if not m:
                raise ConfigError(f"{self.what}: '{where}' = {value!r} uses an OmegaConf expression "
                                  "this converter cannot resolve (only plain ${a.b} references are)")
            return self._resolve(self._lookup(m.group(1)), m.group(1), depth + 1)
        if isinstance(value, dict):
            return {k: self._resolve(v, f"{where}.{k}", depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, f"{where}[{i}]", depth) for i, v in enumerate(value)]
        return value
