"""Configs are frozen dataclasses; this module turns them into command lines (with tyro) and reads files.

A default is written once, on its field, whose attribute docstring is its ``--help``. A nested
:class:`resnetlab.models.ModelConfig` takes ``--model.shortcut B`` or ``--shortcut B``; ``--config FILE``
(YAML, TOML or JSON) sets defaults that flags override; unknown keys are errors. For example
``parse(TrainConfig, ["--lr", "0.5"], prog="resnetlab train")``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import types
import typing
from typing import Annotated, Literal, Union

import tyro
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


def _split_commas(args: list[str]) -> list[str]:
    return [part.strip() for a in args for part in a.split(",") if part.strip()]


def _comma_list(item: type, metavar: str):
    # Lists are written "20,56" (or "20 56"): the README's and earlier releases' form.
    return tyro.constructors.PrimitiveConstructorSpec(
        nargs="*", metavar=metavar,
        instance_from_str=lambda args: tuple(item(v) for v in _split_commas(args)),
        is_instance=lambda v: isinstance(v, tuple),
        str_from_instance=lambda v: [",".join(map(str, v))])


Ints = Annotated[tuple[int, ...], _comma_list(int, "N[,N...]")]
"""A tuple of integers, given as ``1,2,3`` or ``1 2 3``."""
Floats = Annotated[tuple[float, ...], _comma_list(float, "X[,X...]")]
"""A tuple of numbers, given as ``0.5,0.25`` or ``0.5 0.25``."""
Strs = Annotated[tuple[str, ...], _comma_list(str, "S[,S...]")]
"""A tuple of strings, given as ``a,b`` or ``a b``."""
Positional = tyro.conf.Positional


# ----------------------------------------------------------------------------------------------- files

def load_file(path: str | os.PathLike) -> dict:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON file into a dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"config file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"config file {path}: unknown extension {ext!r} (use .yaml, .toml or .json)")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        if ext == ".toml":
            data = tomllib.loads(raw.decode())
        elif ext == ".json":
            data = json.loads(raw)
        else:
            data = yaml.safe_load(raw) or {}
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:  # TOMLDecodeError is a ValueError
        if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:  # one line, not PyYAML's excerpt
            e = f"{e.problem} at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
        raise ValueError(f"config file {path} could not be parsed: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    return data


# ----------------------------------------------------------------------------------------------- dicts

def _strip(annotation):
    """``(base annotation, optional?)`` without ``None`` (``typing.get_type_hints`` drops ``Annotated``)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def _convert(where: str, annotation, value):
    """``value`` (from a file or a recorded config) as the field's type, or a ``ValueError`` naming it."""
    base, optional = _strip(annotation)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: a value is required")
    origin = typing.get_origin(base)
    if dataclasses.is_dataclass(base):
        return value if isinstance(value, base) else from_dict(base, value, where)
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise ValueError(f"{where}={value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        item = typing.get_args(base)[0]
        items = _split_commas([value]) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(where, item, v) for v in items)
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if base in expected:
        if base is float and not isinstance(value, bool):
            try:  # YAML reads 1e-3 as a string
                return float(value)
            except (TypeError, ValueError):
                pass
        elif isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return value
        raise ValueError(f"{where}: expected {expected[base]}, got {value!r}")
    return value


def _model_class(cls) -> type | None:
    """The config class that ``cls`` nests as its field ``model``, if any."""
    base = _strip(typing.get_type_hints(cls).get("model"))[0]
    return base if dataclasses.is_dataclass(base) else None


def from_dict(cls, data: dict, where: str = "config"):
    """Build ``cls`` from a dict (nested dicts for nested configs); unknown keys are errors listing the valid
    ones. In a config that nests ``model``, the model's options may also be given flat (``shortcut: B``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k.replace("-", "_"): v for k, v in data.items()}
    model_cls = _model_class(cls)
    if model_cls is not None:
        flat = {k: data.pop(k) for k in list(data) if k not in names and k in
                {f.name for f in dataclasses.fields(model_cls)}}
        if isinstance(data.get("model"), str):  # "model: resnet56" names the model
            flat["name"] = data.pop("model")
        if flat:
            nested = data.get("model") or {}
            base = dataclasses.asdict(nested) if dataclasses.is_dataclass(nested) else dict(nested)
            data["model"] = {**base, **flat}
    unknown = sorted(k for k in data if k not in names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    values = {k: _convert(f"{where}: {k}" if where != "config" else k, hints[k], v) for k, v in data.items()}
    return cls(**values)


def from_strings(cls, values: dict[str, str], base=None, where: str = "config"):
    """Like :func:`from_dict` for values written as text (``"true"``, ``"8"``, ``"B"``), on top of ``base``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    typed = {}
    for key, text in values.items():
        key = key.replace("-", "_")
        if key not in names:
            raise ValueError(f"{where}: unknown key {key}; valid: {', '.join(sorted(names))}")
        base_type, optional = _strip(hints[key])
        low = text.strip().lower()
        if optional and (low in ("null", "default") or low == "none" and base_type is not str
                         and typing.get_origin(base_type) is not Literal):
            typed[key] = None
        elif base_type is bool:
            if low not in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                raise ValueError(f"{where}: {key} expects true or false, got {text!r}")
            typed[key] = low in ("true", "yes", "on", "1")
        elif base_type in (int, float):
            try:
                typed[key] = base_type(text)
            except ValueError:
                raise ValueError(f"{where}: {key} expects a number, got {text!r}") from None
        else:
            typed[key] = text.strip()
    start = dataclasses.asdict(base) if base is not None else {}
    return from_dict(cls, {**start, **typed}, where)


def to_dict(cfg) -> dict:
    """A JSON-ready dict of a config (tuples become lists, nested configs dicts)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# ----------------------------------------------------------------------------------------------- argv

def _optional_bools(cls, prefix: str = "") -> set[str]:
    """Flags of the ``Optional[bool]`` fields (``None``: "the model's/recipe's default"), nested ones too."""
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        base, optional = _strip(hints[f.name])
        if dataclasses.is_dataclass(base):
            out |= _optional_bools(base, f"{prefix}{f.name}.")
        elif base is bool and optional:
            out.add(f"--{prefix}{f.name}".replace("_", "-"))
    return out


def _rewrite_argv(cls, argv: list[str]) -> list[str]:
    """Short forms tyro does not know: ``--shortcut B`` for ``--model.shortcut B`` and ``--model NAME`` for
    ``--model.name NAME`` (options of the nested model config that the outer config does not declare
    itself), and ``--preact`` / ``--no-preact`` for ``Optional[bool]`` fields (tyro wants a value there)."""
    model_cls = _model_class(cls)
    own = {f.name.replace("_", "-") for f in dataclasses.fields(cls)}
    nested = [f.name.replace("_", "-") for f in dataclasses.fields(model_cls)] if model_cls is not None else []
    aliases = {f"--{no}{flag}": f"--model.{no}{flag}" for flag in nested if flag not in own for no in ("", "no-")}
    tristate = _optional_bools(cls)
    out = []
    for i, a in enumerate(argv):
        if a == "--":
            out += argv[i:]
            break
        name, eq, value = a.partition("=")
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if name == "--model" and (eq or (nxt is not None and not nxt.startswith("-"))):
            name = "--model.name"
        name = aliases.get(name, name)
        negated = name.replace(".no-", ".").replace("--no-", "--")
        if not eq and name in tristate and nxt not in ("True", "False", "None"):
            out += [name, "True"]
        elif not eq and name != negated and negated in tristate:
            out += [negated, "False"]
        else:
            out.append(name + eq + value)
    return out


def _pop_config_file(argv: list[str]) -> tuple[str | None, list[str]]:
    path, rest, args = None, [], iter(argv)
    for a in args:
        if a == "--config":
            path = next(args, None)
            if path is None:
                raise ValueError("--config needs a file name")
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
    return path, rest


CONFIG_HELP = ("--config FILE: a YAML, TOML or JSON file of defaults (the keys are the flags' names); flags "
               "given on the command line override it.")


def _flag_names(argv: list[str]) -> set[str]:
    """The field paths (``lr``, ``model.shortcut``) that the rewritten flags in ``argv`` set."""
    flags = argv[:argv.index("--")] if "--" in argv else argv
    paths = (a[2:].partition("=")[0].rpartition(".") for a in flags if a.startswith("--"))
    return {head + dot + last.removeprefix("no-").replace("-", "_") for head, dot, last in paths}


def _key_paths(data: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in data.items():
        out |= _key_paths(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}".replace("-", "_")}
    return out


def given_model(cfg):
    """``cfg.model`` if the command line (or its config file) gave any model option, else ``None``: then a
    checkpoint's recorded architecture applies. For a config built in Python: if it differs from the default."""
    explicit = getattr(cfg, "_given", None)  # the field paths parse saw set, e.g. {"lr", "model.name"}
    if explicit is None:
        return None if cfg.model == type(cfg.model)() else cfg.model
    return cfg.model if any(k == "model" or k.startswith("model.") for k in explicit) else None


def name_given(cfg) -> bool | None:
    """Whether ``cfg.model.name`` was set explicitly (``--model NAME``); ``None`` if unknown."""
    explicit = getattr(cfg, "_given", None)
    return None if explicit is None else ("model.name" in explicit or "model" in explicit)


def parse(cls, argv: list[str] | None, *, prog: str, description: str | None = None, base: dict | None = None):
    """Resolve ``cls`` from (1) field defaults, (2) ``base``, (3) ``--config FILE``, (4) the flags given."""
    path, argv = _pop_config_file(sys.argv[1:] if argv is None else argv)
    from_file = load_file(path) if path is not None else {}
    default = from_dict(cls, {**(base or {}), **from_file})
    nests_model = _model_class(cls) is not None
    text = (description or (cls.__doc__ or "").strip().split("\n\n")[0]) + "\n\n" + CONFIG_HELP
    if nests_model:
        text += (" Model options may be given without their prefix: --shortcut B for --model.shortcut B, "
                 "--model NAME for --model.name NAME.")
    args = _rewrite_argv(cls, argv)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cfg = tyro.cli(cls, args=args, default=default, prog=prog, description=text, use_underscores=False)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        raise ValueError(_one_line(err.getvalue(), prog)) from None
    own = {f.name for f in dataclasses.fields(cls)}  # flat model keys in a file count as model.* keys
    file_keys = {k if "." in k or not nests_model or k in own else f"model.{k}" for k in _key_paths(from_file)}
    object.__setattr__(cfg, "_given", frozenset(_flag_names(args) | file_keys))
    return cfg


def _one_line(text: str, prog: str) -> str:
    """tyro's boxed, multi-line error as one line: what is wrong, then where to read more."""
    lines = text.splitlines()
    lines = lines[1:] if len(lines) > 3 else lines  # the first is the box's title
    keep = [s for s in (line.strip().strip("│╭╮╰╯─").strip() for line in lines)
            if s and not set(s) <= set("─-═ ") and not s.startswith("For full helptext")]
    return " ".join(keep).replace("  ", " ") + f" (see {prog} --help)"

