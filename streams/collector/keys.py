"""Which app a write key or api key belongs to: a small file the operator keeps.

    # collector-keys.yaml
    keys:
      wk_lightdash_2f9c: lightdash      # Segment / RudderStack write key -> app
      amp_sourcegraph_77: code-search  # Amplitude api_key
      phc_notebooks_1a: notebooks      # PostHog project api key
    origins: ["https://lightdash.internal"]   # browsers allowed to post (CORS); [] = none, ["*"] = any

An unknown key is refused: a key is what stops anyone on the network from writing as any app.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class KeysError(ValueError):
    """The keys file is missing or malformed; the message says how to fix it."""


@dataclass(frozen=True)
class Keys:
    apps: dict[str, str]
    origins: tuple[str, ...] = field(default=())

    def app_for(self, key: str) -> str | None:
        return self.apps.get(key) if key else None

    def allows_origin(self, origin: str) -> bool:
        return "*" in self.origins or origin in self.origins


def load_keys(path: str | Path) -> Keys:
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise KeysError(f"cannot read the collector's keys file {path}: {exc.strerror or exc}; "
                        f"write one (see `tally collect --help`)") from None
    except yaml.YAMLError as exc:
        raise KeysError(f"{path} is not YAML: {str(exc).splitlines()[0]}") from None
    keys = (data or {}).get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, dict) or not keys or not all(isinstance(k, str) and isinstance(v, str) and v
                                                         for k, v in keys.items()):
        raise KeysError(f"{path} needs `keys:` mapping each write key or api key to an app name")
    origins = data.get("origins") or []
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise KeysError(f"{path}: `origins` must be a list of URLs (or [\"*\"])")
    return Keys(apps=dict(keys), origins=tuple(origins))
