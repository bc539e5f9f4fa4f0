"""Reading a config: YAML -> dataclasses with strict keys.

``load_config(path, overrides)`` reads YAML with the safe loader, applies ``key=value`` overrides (dotted keys,
values parsed as YAML scalars), and rejects unknown keys and wrong types with a message that names the file,
the key, and the closest valid key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from vlft.config.schema import ConfigError, RunConfig

# Names people bring from the transformers Trainer and peft, mapped to ours.
KNOWN_ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size":
                 "per_device_batch_size", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_r": "r",
                 "rank": "r", "model_name_or_path": "name_or_path", "resume_from_checkpoint": "resume",
                 "lr_scheduler_type": "scheduler", "use_rslora": "rslora"}


def _closest(key: str, valid: list[str]) -> str:
    *parents, leaf = key.split(".")
    alias = ".".join([*parents, KNOWN_ALIASES.get(leaf, "")])
    if alias in valid:
        return f"; did you mean '{alias}'?"
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(valid)}"


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check ``value`` against a field annotation; return it converted where safe (int -> float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key, source)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{source}: '{key}' has the wrong type: {value!r}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{source}: '{key}' must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        (item_type,) = typing.get_args(annotation)
        return [_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' expects a mapping, got {type(value).__name__} {value!r}")
        key_type, value_type = typing.get_args(annotation)
        return {_coerce(k, key_type, f"{key} key", source): _coerce(v, value_type, f"{key}.{k}", source)
                for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key, source)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-4" as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: '{key}' expects {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix}' must be a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = [f"{prefix}.{k}" if prefix else k for k in fields]
            raise ConfigError(f"{source}: unknown key '{dotted}'{_closest(dotted, valid)}")
        kwargs[key] = _coerce(value, hints[key], dotted, source)
    missing = [name for name, f in fields.items() if name not in kwargs and _is_required(f)]
    if missing:
        raise ConfigError(f"{source}: missing required key '{prefix + '.' if prefix else ''}{missing[0]}'")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _apply_override(raw: dict, override: str, source: str) -> None:
    if "=" not in override:
        raise ConfigError(f"{source}: override '{override}' must look like key=value (e.g. training.lr=1e-4)")
    dotted, text = override.split("=", 1)
    node = raw
    *parents, leaf = dotted.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{part}' is not a block")
    node[leaf] = yaml.safe_load(text) if text.strip() else None


def config_from_dict(raw: dict, overrides: list[str] | tuple = (), source: str = "<config>") -> RunConfig:
    raw = copy.deepcopy(raw or {})
    for override in overrides:
        _apply_override(raw, override, "override")
    return _build(RunConfig, raw, "", source)


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a dict, read with the safe loader (no tag can run code)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def load_config(path: str | Path, overrides: list[str] | tuple = ()) -> RunConfig:
    """Read a YAML config with the safe loader, apply ``key=value`` overrides, validate every key."""
    return config_from_dict(read_yaml(path), overrides, source=str(path))


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def explain(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every config key, for `vlft config explain`."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(explain(hints[f.name], key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        hint = hints[f.name]
        type_name = hint.__name__ if isinstance(hint, type) else \
            str(hint).replace("typing.", "").replace("vlft.config.schema.", "")
        rows.append((key, type_name, repr(default), f.metadata.get("help", "")))
    return rows
