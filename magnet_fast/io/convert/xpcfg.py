"""Read access to an audiocraft ``xp.cfg`` (the Hydra config, stored as an unresolved YAML string)."""
from __future__ import annotations

import re

import yaml

from magnet_fast.errors import ConfigError

_MISSING = object()
_INTERP = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")
# Bounds checked before any work (docs/DESIGN.md, Conversion: "Bounds checked before work"). The released
# xp.cfg files are ~6 KB, ~10 levels deep, with no YAML aliases (OmegaConf.to_yaml writes none).
MAX_YAML_CHARS = 1 << 20          # 1 MiB
MAX_YAML_EVENTS = 200_000         # parser events (scalars, mapping/sequence starts...)
MAX_YAML_DEPTH = 64               # nested mappings/sequences
MAX_INTERP_DEPTH = 16             # chained ${a.b} references
MAX_RESOLVE_NODES = 100_000       # nodes visited resolving ${...} over one XpConfig's lifetime


def load_xp_yaml(text: str, what: str = "xp.cfg"):
    """``yaml.safe_load`` of an xp.cfg, bounded: size, parser events, nesting depth, and no aliases
    (``*name``): an alias bomb expands exponentially once walked. ConfigError (a CheckpointError) names
    the bound."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} is a {type(text).__name__}, expected a YAML string")
    if len(text) > MAX_YAML_CHARS:
        raise ConfigError(f"{what} is {len(text)} characters, over the {MAX_YAML_CHARS} bound (released "
                          "MAGNeT xp.cfg files are a few KB); refusing to parse it")
    depth = events = 0
    try:
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            events += 1
            if events > MAX_YAML_EVENTS:
                raise ConfigError(f"{what} has over {MAX_YAML_EVENTS} YAML nodes; refusing to parse it")
            if isinstance(ev, yaml.AliasEvent):
                raise ConfigError(f"{what} uses a YAML alias (*{ev.anchor}); audiocraft's xp.cfg has none "
                                  "and aliases can expand exponentially (an alias bomb): refusing it")
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError(f"{what} nests deeper than {MAX_YAML_DEPTH} levels; refusing it")
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML ({e})") from None


class XpConfig:
    """Read-only view of a parsed xp.cfg that resolves OmegaConf ``${a.b}`` references on access.

    audiocraft writes xp.cfg with ``OmegaConf.to_yaml`` (unresolved), so e.g. ``encodec.sample_rate`` is
    the string ``'${sample_rate}'`` and ``seanet.causal`` is ``'${encodec.causal}'``.
    """

    def __init__(self, root: dict, what: str = "xp.cfg"):
        self.root, self.what = root, what
        self._visited = 0                  # resolution work done, bounded by MAX_RESOLVE_NODES
        self._asked = ""

    def get(self, dotted: str, default=_MISSING):
        self._asked = dotted
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
        self._visited += 1
        if self._visited > MAX_RESOLVE_NODES:
            raise ConfigError(f"{self.what}: reading '{self._asked}' (at '{where}') visits over "
                              f"{MAX_RESOLVE_NODES} nodes "
                              "(a ${...} reference fan-out?); refusing it")
        if depth > MAX_INTERP_DEPTH:
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
