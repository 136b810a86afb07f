"""Configuration as frozen dataclasses, and the command line generated from them.

Each default is written once, on the dataclass field. :func:`opt` attaches the help text that ``--help``
shows. A YAML or TOML file (``--config FILE``) may set defaults; flags given on the command line override
it; unknown keys are errors, in files as on the command line.

    @dataclass(frozen=True)
    class MyConfig:
        lr: float = opt(0.1, "peak learning rate")

    parser = argparse.ArgumentParser(); add_arguments(parser, MyConfig)
    cfg = parse_config(MyConfig, parser.parse_args())
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from typing import Any


def opt(default: Any, help: str, choices: tuple | None = None, flag: str | None = None):
    """A dataclass field with its ``--help`` text (and optional choices or flag name)."""
    meta = {"help": help, "choices": choices, "flag": flag}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults so that configs stay immutable")
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation) -> tuple[type, bool]:
    """(scalar type, optional?) of a field annotation such as ``int | None`` or ``tuple[int, ...]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        base, _ = _base_type(args[0])
        return base, True
    return (annotation if origin is None else origin), False


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(name: str, annotation, value):
    """Convert a file or flag value to the field's type, with an error that names the key."""
    base, optional = _base_type(annotation)
    # "none" is a real value of some string fields (shortcut="none": the plain net), so only non-string
    # optional fields read "none"/"null"/"" as unset.
    unset_words = ("none", "null", "") if base is not str else ()
    if value is None or (optional and isinstance(value, str) and value.lower() in unset_words):
        if optional:
            return None
        raise ValueError(f"{name}: a value is required")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if base is tuple:
            args = typing.get_args(annotation if not optional else [a for a in typing.get_args(annotation)
                                                                   if a is not type(None)][0])
            item = args[0] if args else str
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(item(v.strip()) if isinstance(v, str) else item(v) for v in items if str(v).strip() != "")
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"not an integer: {value!r}")
        if base in (int, float, str):
            return base(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from None
    return value


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (defaults suppressed: unset flags stay unset)."""
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        base, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = meta.get("help", "")
        if "(default:" not in help_text:  # a help text may say in words what its default means
            help_text = f"{help_text} (default: {shown})"
        help_text = help_text.replace("%", "%%")
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
            parser.add_argument(flag, metavar=f.name.upper(), **kw)
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("--config", default=None, metavar="FILE",
                            help="YAML or TOML file of defaults; flags given here override it")


def load_file(path: str | os.PathLike) -> dict:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON file into a dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"config file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    with open(path, "rb") as fh:
        raw = fh.read()
    if ext not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"config file {path}: unknown extension {ext!r} (use .yaml, .toml or .json)")
    try:
        if ext == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(raw.decode())
        elif ext == ".json":
            data = json.loads(raw)
        else:
            import yaml
            data = yaml.safe_load(raw) or {}
    except Exception as e:  # a parse error from toml/json/yaml
        raise ValueError(f"config file {path} could not be parsed: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    return data


def from_dict(cls, data: dict, where: str = "config"):
    """Build ``cls`` from a dict, converting types; unknown keys are errors that list the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in data if k.replace("-", "_") not in names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    hints = _field_types(cls)
    values = {}
    for k, v in data.items():
        k = k.replace("-", "_")
        values[k] = _convert(k, hints[k], v)
        choices = next(f.metadata.get("choices") for f in dataclasses.fields(cls) if f.name == k)
        if choices and values[k] is not None and values[k] not in choices:
            raise ValueError(f"{where}: {k}={values[k]!r} is not one of {', '.join(map(str, choices))}")
    return cls(**values)


def parse_config(cls, args: argparse.Namespace, base: dict | None = None):
    """Resolve ``cls`` from (1) field defaults, (2) ``base``, (3) ``--config FILE``, (4) flags given."""
    data = dict(base or {})
    if getattr(args, "config", None):
        data.update({k.replace("-", "_"): v for k, v in load_file(args.config).items()})
    names = {f.name for f in dataclasses.fields(cls)}
    data.update({k: v for k, v in vars(args).items() if k in names})
    return from_dict(cls, data)


def to_dict(cfg) -> dict:
    """A JSON-ready dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))
