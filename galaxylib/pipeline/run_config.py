"""Run configuration: one YAML file (``configs/*.yaml``) plus ``-p KEY VALUE`` overrides.

train.sh writes the resolved copy to ``reports/<run>/config.yaml`` and every notebook
reads that copy, so a report always shows what produced it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "dataset": "real",
    "synthetic_per_class": 250,
    "seed": 42,
    "split_fractions": [0.70, 0.15, 0.15],
    "image_size": 224,
    "crop": 1.0,  # central fraction of the cutout kept before resizing (part of the artifact's contract)
    # the label column of a folder's labels.csv or of a labelled catalogue, and how many of its
    # images may be unreadable (listed and left out) before preparation stops
    "data": {"label_column": "label", "max_unreadable": 0},
    "model": {},
    "train": {},
    "evaluate": {"max_misclassified": 24, "gz1_max_images": 0, "ood_cases": 40},  # ood_cases: images per OOD case
}
SECTIONS = ("data", "model", "train", "evaluate")


class ConfigError(ValueError):
    pass


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_value(text: str) -> Any:
    """``-p KEY VALUE`` values are YAML scalars: 3, 1e-4, true, none, [1, 2]."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if value is None and text.lower() not in ("null", "~", "") else value


def set_dotted(config: dict, key: str, value: Any) -> None:
    """``model.learning_rate`` sets a nested key; a known nested name may be given bare."""
    parts = key.split(".")
    if len(parts) == 1 and key not in config:
        for section in SECTIONS:
            if key in _known(section):
                parts = [section, key]
                break
        else:
            raise ConfigError(f"unknown parameter {key!r}; known: {', '.join(sorted(known_keys()))}")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _known(section: str) -> set[str]:
    from dataclasses import fields

    from galaxylib.modeling.model import ModelParams
    from galaxylib.modeling.training import TrainParams

    if section == "model":
        return {f.name for f in fields(ModelParams)} - {"image_size"}
    if section == "train":
        return {f.name for f in fields(TrainParams)} - {"seed"}
    return set(DEFAULTS[section])


def known_keys() -> set[str]:
    return set(DEFAULTS) | {f"{s}.{k}" for s in SECTIONS for k in _known(s)}


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> dict:
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of parameters")
        config = _merge(config, loaded)
    for key, value in (overrides or {}).items():
        set_dotted(config, key, value)
    validate_config(config)
    return config


def validate_config(config: dict) -> None:
    unknown = [k for k in config if k not in DEFAULTS]
    if unknown:
        raise ConfigError(f"unknown config keys: {unknown}")
    for section in SECTIONS:
        bad = set(config[section]) - _known(section)
        if bad:
            raise ConfigError(f"unknown {section} parameters: {sorted(bad)}")
    if config["model"].get("scratch"):
        from galaxylib.modeling.scratch_cnn import ScratchParams

        try:
            ScratchParams.from_dict(config["model"]["scratch"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
    size = int(config["image_size"])
    if not 32 <= size <= 600:
        raise ConfigError(f"image_size must be between 32 and 600, got {size}")
    if not 0.1 <= float(config["crop"]) <= 1.0:
        raise ConfigError(f"crop must be between 0.1 and 1, got {config['crop']}")


def write_config(config: dict, path: Path) -> Path:
    from galaxylib.files import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
