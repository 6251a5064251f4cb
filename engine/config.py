"""Layered, validated configuration: schema defaults < YAML files < DIALSUM_* env < sweep params < --set.

Every value is checked against `engine.schema` (types from the dataclass hints, `choices`/`min`/`max` from field
metadata) when its layer is applied, so an error names where the value came from (file path, `environment DIALSUM_X`,
`sweep`, `--set`), the dotted key and what was expected. `LoadedConfig.sources` records which layer set each key.

- A YAML file may say `base: other.yaml` or `base: [a.yaml, b.yaml]` (relative to that file); bases are applied
  beneath the file, in the order listed. Cycles are an error.
- Environment: `DIALSUM_TRAINING__LEARNING_RATE=3e-5` or the short form `DIALSUM_TRAINING_LEARNING_RATE=3e-5`.
  Variables not starting with a section name (`DIALSUM_PLAN`, `DIALSUM_RUN_ID`) are not config and are ignored.
- Env, `--set` and YAML all go through `yaml.safe_load`, then are coerced to the field's type. PyYAML reads `3e-5` as
  a string (YAML 1.1 wants `3.0e-5`); decimal strings are accepted for float fields for that reason.
- Paths inside configs (`data.*_file`, `model.name_or_path`, `experiment.output_root`, ...) are NOT rewritten: they are
  interpreted relative to the current working directory of the process, wherever the YAML file lives.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.errors import UserError
from engine.schema import CallbackSpec, DialsumConfig

ENV_PREFIX = "DIALSUM_"
DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # what YAML 1.1 misses: 3e-4, 1E5
_HINTS = typing.get_type_hints(DialsumConfig)
_SECTION_TYPES = {name: hint for name, hint in _HINTS.items() if dataclasses.is_dataclass(hint)}


@dataclass
class LoadedConfig:
    config: DialsumConfig
    sources: dict[str, str]  # dotted key -> "default" | "file:<path>" | "env:<VAR>" | "sweep" | "set"

    def to_dict(self) -> dict:
        return config_to_dict(self.config)


# ---------------------------------------------------------------------------------------------------- validation

def _closest(name: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def type_name(hint: Any) -> str:
    """How a schema type reads in errors and in the README's config reference: `int or null`, `list of str`."""
    if isinstance(hint, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is list:
        return f"list of {type_name(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, where: str, text: str | None) -> Any:
    """Return `value` converted to `hint`, or raise UserError. `text` is the raw string for env/--set values."""
    def bad() -> UserError:
        shown = repr(text) if text is not None else repr(value)
        return UserError(f"{where}: expected {type_name(hint)}, got {shown} ({type(value).__name__})")

    if isinstance(hint, types.UnionType):  # only `X | None` occurs in the schema
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, inner, where, text)
    if value is None and not (hint is str and text is not None and text.strip() == ""):
        raise UserError(f"{where}: null is not allowed here (expected {type_name(hint)})")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if text is not None and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise bad()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and DECIMAL.fullmatch(value.strip()):
            return float(value)
        raise bad()
    if hint is str:
        if isinstance(value, str):
            return value
        if text is not None:  # `--set experiment.name=2024` means the string "2024"
            return text
        raise bad()
    if hint is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise bad()
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise bad()
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{where}[{i}]", None) for i, v in enumerate(value)]
    raise TypeError(f"schema type {hint!r} not handled")  # a schema change this loader does not know


def _check_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        hint = _closest(str(value), [str(c) for c in choices])
        raise UserError(f"{where}: must be one of {', '.join(map(str, choices))}; got {value!r}{hint}")
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            allowed = f"between {lo} and {hi}"
        else:
            allowed = f">= {lo}" if lo is not None else f"<= {hi}"
        raise UserError(f"{where}: must be {allowed}; got {value!r}")


def _callbacks(value: Any, origin: str, text: str | None) -> list[dict]:
    """`callbacks` is a list of {path: str, kwargs: dict}; kept as plain dicts until the config is built."""
    if not isinstance(value, list):
        raise UserError(f"{origin}: callbacks: expected a list of {{path, kwargs}} mappings, got {text or value!r}")
    hints = typing.get_type_hints(CallbackSpec)
    out = []
    for i, spec in enumerate(value):
        key = f"callbacks[{i}]"
        if not isinstance(spec, dict):
            raise UserError(f"{origin}: {key}: expected a mapping with path and kwargs, got {spec!r}")
        for name in spec:
            if name not in hints:
                raise UserError(f"{origin}: {key}.{name}: unknown key{_closest(str(name), list(hints))}")
        path = _coerce(spec.get("path", ""), str, f"{origin}: {key}.path", None)
        if not path.strip():
            raise UserError(f"{origin}: {key}.path: required ('package.module:ClassName' of a TrainerCallback)")
        kwargs = _coerce(spec.get("kwargs") or {}, dict, f"{origin}: {key}.kwargs", None)
        out.append({"path": path, "kwargs": kwargs})
    return out


def _field_value(section: str, key: str, value: Any, origin: str, text: str | None = None) -> Any:
    """Validate one `section.key` value from a layer; returns the coerced value."""
    cls = _SECTION_TYPES[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise UserError(f"{origin}: {section}.{key}: unknown key{_closest(key, list(fields))}")
    where = f"{origin}: {section}.{key}"
    coerced = _coerce(value, typing.get_type_hints(cls)[key], where, text)
    _check_range(coerced, fields[key].metadata, where)
    return coerced


def _origin(label: str) -> str:
    """Layer label -> how error messages name it: 'file:x.yaml' -> 'x.yaml', 'env:V' -> 'environment V', 'set' -> '--set'."""
    if label.startswith("file:"):
        return label[len("file:"):]
    if label.startswith("env:"):
        return f"environment {label[len('env:'):]}"
    return "--set" if label == "set" else label


def _apply(merged: dict, sources: dict, layer: Mapping, label: str, texts: Mapping | None = None) -> None:
    """Validate a nested mapping {section: {key: value}} and write it over `merged`, recording `label` per key.
    `texts` maps dotted keys to the raw strings they were parsed from (env and --set)."""
    origin, texts = _origin(label), texts or {}
    for section, body in layer.items():
        if section == "callbacks":
            merged["callbacks"] = _callbacks(body, origin, texts.get("callbacks"))
            sources["callbacks"] = label
            continue
        if section not in _SECTION_TYPES:
            raise UserError(f"{origin}: {section}: unknown key{_closest(str(section), list(_HINTS))}")
        if not isinstance(body, Mapping):
            raise UserError(f"{origin}: {section}: expected a mapping of keys, got {body!r}")
        for key, value in body.items():
            dotted = f"{section}.{key}"
            merged[section][key] = _field_value(section, str(key), value, origin, texts.get(dotted))
            sources[dotted] = label


def _nest(flat: Mapping[str, Any], origin: str) -> dict:
    """{"training.learning_rate": x} (or already nested dicts) -> {"training": {"learning_rate": x}}."""
    nested: dict = {}
    for dotted, value in flat.items():
        parts = str(dotted).split(".")
        if parts[0] == "callbacks" and len(parts) == 1:
            nested["callbacks"] = value
            continue
        if len(parts) == 1 and isinstance(value, Mapping):
            for key, v in value.items():
                nested.setdefault(parts[0], {})[str(key)] = v
            continue
        if len(parts) != 2:
            raise UserError(f"{origin}: {dotted}: expected a dotted key 'section.key' (e.g. training.learning_rate)")
        nested.setdefault(parts[0], {})
        if not isinstance(nested[parts[0]], dict):
            raise UserError(f"{origin}: {parts[0]}: expected a mapping of keys, got {nested[parts[0]]!r}")
        nested[parts[0]][parts[1]] = value
    return nested


# ---------------------------------------------------------------------------------------------------- layers

class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """A user's YAML file (config or sweep), duplicate keys refused; any problem is a one-line UserError naming the
    file and, for a syntax error, the line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read {what}: {exc}") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}: invalid YAML{at}: {' '.join(str(problem).split())}") from None


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level must be a mapping of sections (experiment:, model:, ...), "
                        f"got {type(data).__name__}")
    return data


def _file_layers(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The file and its `base:` files, lowest first."""
    resolved = path.resolve()
    if resolved in stack:
        chain = " -> ".join(str(p) for p in (*stack, resolved))
        raise UserError(f"{path}: base cycle: {chain}")
    data = _read_yaml(path)
    bases = data.pop("base", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise UserError(f"{path}: base: expected a file name or a list of file names, got {bases!r}")
    layers = []
    for base in bases:
        layers += _file_layers(Path(os.path.normpath(path.parent / base)), (*stack, resolved))
    layers.append((path, data))
    return layers


def _env_layer(env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(variable, dotted key, raw text) for every DIALSUM_* variable that names a config section."""
    found: dict[str, str] = {}
    out = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        if rest == "callbacks":
            dotted = "callbacks"
        elif "__" in rest:
            section, key = rest.split("__", 1)
            if section not in _SECTION_TYPES:
                continue
            dotted = f"{section}.{key}"
        else:
            section = next((s for s in _SECTION_TYPES if rest == s or rest.startswith(s + "_")), None)
            if section is None:
                continue
            key = rest[len(section) + 1:]
            if not key:
                raise UserError(f"environment {var}: names section '{section}' but no key "
                                f"(use {ENV_PREFIX}{section.upper()}__KEY)")
            dotted = f"{section}.{key}"
        if dotted in found:
            raise UserError(f"environment {var}: {dotted} is also set by {found[dotted]}; set it once")
        found[dotted] = var
        out.append((var, dotted, env[var]))
    return out


def _parse_text(text: str, origin: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{origin}: cannot parse value {text!r}: {' '.join(str(problem).split())}") from None


def _build(merged: dict) -> DialsumConfig:
    sections = {name: cls(**merged[name]) for name, cls in _SECTION_TYPES.items()}
    callbacks = [CallbackSpec(path=c["path"], kwargs=c["kwargs"]) for c in merged["callbacks"]]
    return DialsumConfig(**sections, callbacks=callbacks)


def _require(config: DialsumConfig, sources: Mapping[str, str]) -> None:
    """Keys that have no usable default and must be set by some layer."""
    if not config.model.name_or_path.strip():
        label = sources.get("model.name_or_path", "default")
        where = "" if label == "default" else f"{_origin(label)}: "
        raise UserError(f"{where}model.name_or_path: required (a Hugging Face hub id or a local model directory); "
                        "set it in a config file or with --set model.name_or_path=...")


def _defaults() -> tuple[dict, dict[str, str]]:
    merged = config_to_dict(DialsumConfig())
    sources = {key: "default" for key, _ in _leaves(merged)}
    return merged, sources


def _leaves(d: dict) -> list[tuple[str, Any]]:
    """Dotted keys in schema order; `callbacks` is one leaf."""
    out = []
    for section, body in d.items():
        if section == "callbacks":
            out.append(("callbacks", body))
        else:
            out += [(f"{section}.{key}", value) for key, value in body.items()]
    return out


# ---------------------------------------------------------------------------------------------------- public API

def load_config(files: Sequence[str | Path], overrides: Sequence[str] = (), env: Mapping[str, str] | None = None,
                sweep_params: Mapping[str, Any] | None = None) -> LoadedConfig:
    """Apply every layer over the schema defaults, validating each value as its layer is applied."""
    merged, sources = _defaults()
    for file in files:
        for path, data in _file_layers(Path(file)):
            _apply(merged, sources, data, f"file:{path}")
    for var, dotted, text in _env_layer(os.environ if env is None else env):
        origin = f"environment {var}"
        _apply(merged, sources, _nest({dotted: _parse_text(text, origin)}, origin), f"env:{var}", {dotted: text})
    if sweep_params:
        _apply(merged, sources, _nest(sweep_params, "sweep"), "sweep")
    for item in overrides:
        dotted, sep, text = item.partition("=")
        dotted = dotted.strip()
        if not sep or not dotted:
            raise UserError(f"--set: {item!r}: expected key=value (e.g. --set training.learning_rate=3e-5)")
        _apply(merged, sources, _nest({dotted: _parse_text(text, "--set")}, "--set"), "set", {dotted: text})
    config = _build(merged)
    _require(config, sources)
    return LoadedConfig(config=config, sources=sources)


def config_from_dict(d: Mapping[str, Any]) -> DialsumConfig:
    """Rebuild a config from its dict form (e.g. `Plan.config` on the ranks), with the same validation."""
    if not isinstance(d, Mapping):
        raise UserError(f"config: expected a mapping of sections, got {type(d).__name__}")
    merged, sources = _defaults()
    _apply(merged, sources, d, "config")
    config = _build(merged)
    _require(config, sources)
    return config


def config_to_dict(cfg: DialsumConfig) -> dict:
    """Nested plain dict (JSON/YAML-serialisable), sections in schema order."""
    return dataclasses.asdict(cfg)


def explain_rows(loaded: LoadedConfig) -> list[tuple[str, Any, str]]:
    """(dotted key, value, layer that set it) for every key, in schema order."""
    return [(key, value, loaded.sources.get(key, "default")) for key, value in _leaves(loaded.to_dict())]


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The config arguments shared by `config show`, `launch`, `plan` and `sweep` (`plan` may go without a file)."""
    parser.add_argument("config", nargs="+" if required else "*", metavar="CONFIG",
                        help="YAML config files, later ones win")
    parser.add_argument("--config", dest="extra_configs", action="append", default=[], metavar="FILE",
                        help="another YAML config file, applied after the positional ones (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one dotted key, e.g. --set training.learning_rate=3e-5 (repeatable)")


def load_from_args(args: argparse.Namespace, sweep_params: Mapping[str, Any] | None = None) -> LoadedConfig:
    """load_config from the arguments added by `add_config_arguments` (environment = os.environ)."""
    return load_config([*args.config, *args.extra_configs], overrides=args.overrides, sweep_params=sweep_params)
