"""One config loader for every command: YAML files + flags -> nested, typed ``kw_only`` dataclasses.

Each component keeps its own small dataclass where it lives (``ingest.config.IngestConfig``,
``train.config.TrainConfig``, ``eval.job.EvalConfig`` and the sections they nest); this module
only loads them, the same way for every command. A config is resolved from layers, lowest first,
over the dataclass defaults::

    config = load(TrainConfig,
                  Layer(PRESETS["cpu-small"], "preset 'cpu-small'"),
                  file_layer("train.yaml"),                     # "config file train.yaml"
                  Layer({"epochs": 3}, FLAGS))                  # "command-line flags"

* Layers merge deeply: a nested dataclass section merges key by key; any other value (a list, or
  a mapping-typed field such as ``task_weights``) is replaced whole by the higher layer.
* Every key is checked against its dataclass. An unknown key is an error that names the closest
  known one ("did you mean"); every value is checked against its type hint: ``bool``, ``int``,
  ``float`` (an integer is accepted), ``str``, ``Literal[...]`` (the choices), ``X | None``,
  ``tuple[X, ...]`` (a YAML list), ``dict[K, V]``, ``Path`` and nested dataclasses.
* Every error is one `ConfigError` (a ``ValueError``) naming the dotted key and the layer the
  value came from (the file, the preset or the flags); range checks stay in each dataclass's
  ``__post_init__`` and are reported the same way.
* `to_dict` and `dump_yaml` give back what `load` reads (``--print-config`` prints `dump_yaml`);
  `flat` is the same config as ``{"data.frames": "32", ...}`` for MLflow params.

Standard library only at import (PyYAML is imported when a file is read or written), so every
command line can use it without slowing ``echocmr --help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

from echocmr.errors import EchocmrError

FLAGS = "command-line flags"


class ConfigError(EchocmrError, ValueError):
    """A configuration key or value is wrong; the message names the key, where it was set, and
    what to write instead. ``key`` is the dotted key (None for the whole config), ``source`` the
    layer it came from (``config file X``, ``preset 'P'``, ``command-line flags``) when known."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        super().__init__(f"{source}: {message}" if source else message)
        self.detail = message  # without the source
        self.key = key
        self.source = source


class Layer(NamedTuple):
    """One source of settings: a nested mapping and what to call it in errors."""

    data: Mapping[str, Any]
    source: str | None = None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file (empty file: ``{}``); a `ConfigError` naming the file otherwise."""
    import yaml

    source = f"config file {path}"
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=source) from None
    if not isinstance(data, dict):
        raise ConfigError(f"must hold a mapping of keys, got {type(data).__name__}",
                          source=source)
    return data


def file_layer(path: str | Path) -> Layer:
    """The YAML file at ``path`` as a layer named after it."""
    return Layer(read_yaml(path), f"config file {path}")


def merge(base: Mapping[str, Any], top: Mapping[str, Any], cls: type | None = None) -> dict:
    """``top`` over ``base``, deeply. With ``cls`` (a config dataclass) only its nested dataclass
    sections merge key by key and every other value is replaced whole; without it every nested
    mapping merges."""
    return _merge(base, top, cls, "", None, {})


def load(cls: type, *layers: Layer | Mapping[str, Any]) -> Any:
    """``cls`` from its defaults with ``layers`` merged on top, lowest first (module docstring)."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for layer in layers:
        data, source = layer if isinstance(layer, Layer) else (layer, None)
        if not isinstance(data, Mapping):
            raise ConfigError(f"must be a mapping of keys, got {type(data).__name__}",
                              source=source)
        merged = _merge(merged, data, cls, "", source, origins)
    return build(cls, merged, origins=origins)


def build(cls: type, data: Any, *, source: str | None = None,
          origins: Mapping[str, str] | None = None, where: str = "") -> Any:
    """``cls(**data)``, nested sections built too, every key and value checked (module docstring).

    ``source`` names where ``data`` came from; ``origins`` maps dotted keys to their layer (what
    `load` passes); ``where`` is the dotted key of ``data`` itself.
    """
    return _Builder(source, origins or {}).build(cls, data, where)


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass (tuples as lists, paths as strings): what
    `load` reads back."""
    return _plain(dataclasses.asdict(obj))


def dump_yaml(obj: Any) -> str:
    """The config as YAML, in field order (what ``--print-config`` prints)."""
    import yaml

    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)


def flat(obj: Any) -> dict[str, str]:
    """``{"data.frames": "32", "task_weights.wma": "1.0", ...}``: the config as MLflow params.

    Nested sections and non-empty mappings become dotted keys; every other value is ``str()``-ed
    (a list as ``"[2, 2, 2, 2]"``, None as ``"None"``).
    """
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = str(value)

    walk("", to_dict(obj) if dataclasses.is_dataclass(obj) else obj)
    return out


def resolve_for_command(command: str, load_config: Callable[[], Any], *, print_config: bool,
                        required: Mapping[str, Any]) -> tuple[Any, int | None]:
    """A command's config, or the exit code that ends the command first. What ``echocmr ingest``,
    ``train`` and ``eval`` share: ``(config, None)`` to run; ``(None, 2)`` when the config is bad
    or a flag in ``required`` (``{"--shards": value}``) is missing; ``(None, 0)`` after printing
    the resolved config for ``--print-config`` (which needs none of the required flags)."""
    import sys

    try:
        config = load_config()
    except ValueError as exc:
        print(f"echocmr {command}: {exc}", file=sys.stderr)
        return None, 2
    if print_config:
        print(dump_yaml(config), end="")
        return None, 0
    missing = [flag for flag, value in required.items() if not value]
    if missing:
        print(f"echocmr {command}: {', '.join(missing)} required", file=sys.stderr)
        return None, 2
    return config, None


def flag_adder(parser, skip: tuple[str, ...] = ()) -> Callable[..., None]:
    """``parser.add_argument`` for a command's flag set, leaving out the flags named in ``skip``
    (a command that embeds another's flags, such as `echocmr loso`, sets or renames those)."""

    def add(*names: str, **kwargs: Any) -> None:
        if names[0] not in skip:
            parser.add_argument(*names, **kwargs)

    return add


def check_choices(obj: Any, prefix: str = "") -> None:
    """Raise `ConfigError` for a ``Literal[...]`` field of ``obj`` holding another value.

    For ``__post_init__``: a config built in Python gets the same check as one loaded from YAML.
    """
    for name, hint in _hints(type(obj)).items():
        choices = _literal_choices(hint)
        if choices is not None and getattr(obj, name) not in choices:
            key = f"{prefix}{name}"
            raise ConfigError(_choice_message(key, choices, getattr(obj, name)), key=key)


# -- internals --------------------------------------------------------------------------------


def _merge(base: Mapping, top: Mapping, cls: type | None, prefix: str, source: str | None,
           origins: dict[str, str]) -> dict:
    out = dict(base)
    hints = _hints(cls) if cls is not None else {}
    for key, value in top.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        section = _section_class(hints.get(key)) if cls is not None else None
        nested = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        if nested and (cls is None or section is not None):
            out[key] = _merge(out[key], value, section, path, source, origins)
        else:
            out[key] = value
            for stale in [k for k in origins if k.startswith(f"{path}.")]:
                del origins[stale]
            _record(value, path, source, origins)
    return out


def _record(value: Any, path: str, source: str | None, origins: dict[str, str]) -> None:
    if source is None:
        return
    origins[path] = source
    if isinstance(value, Mapping):
        for k, v in value.items():
            _record(v, f"{path}.{k}", source, origins)


def _section_class(hint: Any) -> type | None:
    """The dataclass a field's hint names (``X`` or ``X | None``), else None."""
    if hint is None:
        return None
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    return _HINTS[cls]


def _literal_choices(hint: Any) -> tuple | None:
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _choice_message(key: str, choices: tuple, value: Any) -> str:
    return f"{key} must be one of {', '.join(map(repr, choices))}; got {value!r}"


class _Builder:
    def __init__(self, source: str | None, origins: Mapping[str, str]):
        self.source = source
        self.origins = origins

    def where_from(self, key: str) -> str | None:
        """The layer that set ``key`` (or its nearest parent), else the builder's source."""
        parts = key.split(".") if key else []
        while parts:
            found = self.origins.get(".".join(parts))
            if found:
                return found
            parts.pop()
        return self.source

    def blame(self, message: str, where: str) -> tuple[str | None, str | None]:
        """``(key, source)`` for a range check failing in section ``where``: the keys set in that
        section that ``message`` names (else every key set there), and the layers that set them."""
        inside = {k: s for k, s in self.origins.items()
                  if not where or k == where or k.startswith(f"{where}.")}
        named = {k: s for k, s in inside.items()
                 if any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message)
                        for n in (k, k[len(where) + 1:] if where else k) if n)}
        named = {k: s for k, s in named.items() if not any(o.startswith(f"{k}.") for o in named)}
        found = named or inside
        if not found:
            return where or None, self.where_from(where)
        key = next(iter(named)) if len(named) == 1 else (where or None)
        return key, " / ".join(sorted(set(found.values())))

    def fail(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, key=key or None, source=self.where_from(key))

    def build(self, cls: type, data: Any, where: str) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise self.fail(f"{where or 'the config'} must be a mapping of keys, got {data!r}",
                            where)
        hints = _hints(cls)
        kwargs = {}
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if key not in hints:
                raise self.fail(_unknown_message(path, str(key), hints, where), path)
            kwargs[key] = self.coerce(value, hints[key], path)
        for f in dataclasses.fields(cls):
            missing = (f.default is dataclasses.MISSING
                       and f.default_factory is dataclasses.MISSING)
            if f.init and missing and f.name not in kwargs:
                path = f"{where}.{f.name}" if where else f.name
                raise self.fail(f"missing required key {path!r}", path)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            if exc.source is not None or not (self.source or self.origins):
                raise
            message, key = exc.detail, exc.key or where
        except ValueError as exc:
            message, key = str(exc), where
            if where and where not in message:
                message = f"{where}: {message}"
        key, source = self.blame(message, key or "")
        raise ConfigError(message, key=key, source=source) from None

    def coerce(self, value: Any, hint: Any, path: str) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            errors = []
            for arg in (a for a in args if a is not type(None)):
                try:
                    return self.coerce(value, arg, path)
                except ConfigError as exc:
                    errors.append(exc)
            if type(None) in args and len(errors) == 1 and ", got " in errors[0].detail:
                head, got = errors[0].detail.split(", got ", 1)  # "x must be an integer"
                raise self.fail(f"{head} or null, got {got}", path) from None
            raise errors[0]
        if origin is Literal:
            if value not in args or isinstance(value, bool) != any(isinstance(a, bool)
                                                                   for a in args):
                raise self.fail(_choice_message(path, args, value), path)
            return value
        if dataclasses.is_dataclass(hint):
            return self.build(hint, value, path)
        if hint is bool:
            if not isinstance(value, bool):
                raise self.fail(f"{path} must be true or false, got {value!r}", path)
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(f"{path} must be an integer, got {value!r}", path)
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(f"{path} must be a number, got {value!r}", path)
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise self.fail(f"{path} must be a string, got {value!r}", path)
            return value
        if hint is Path:
            if not isinstance(value, str | Path):
                raise self.fail(f"{path} must be a path (a string), got {value!r}", path)
            return Path(value)
        if origin is tuple:
            if not isinstance(value, list | tuple):
                raise self.fail(f"{path} must be a list, got {value!r}", path)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(self.coerce(v, args[0], path) for v in value)
            if len(value) != len(args):
                raise self.fail(f"{path} must be a list of {len(args)} items, got {value!r}",
                                path)
            return tuple(self.coerce(v, a, path) for v, a in zip(value, args, strict=True))
        if origin is list:
            if not isinstance(value, list | tuple):
                raise self.fail(f"{path} must be a list, got {value!r}", path)
            return [self.coerce(v, args[0], path) for v in value] if args else list(value)
        if origin is dict:
            if not isinstance(value, Mapping):
                raise self.fail(f"{path} must be a mapping, got {value!r}", path)
            if not args:
                return dict(value)
            key_t, val_t = args
            return {self.coerce(k, key_t, f"{path} key"): self.coerce(v, val_t, f"{path}.{k}")
                    for k, v in value.items()}
        return value


def _unknown_message(path: str, key: str, hints: Mapping[str, Any], where: str) -> str:
    prefix = f"{where}." if where else ""
    close = difflib.get_close_matches(key, list(hints), n=1)
    hint = f"; did you mean {prefix + close[0]!r}?" if close else "."
    section = f"of {where!r}" if where else "at the top level"
    return f"unknown key {path!r}{hint} Keys {section}: {', '.join(sorted(hints))}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
