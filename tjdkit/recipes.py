"""Named YAML recipes: find, load, apply CLI overrides, validate into typed dataclasses.

A recipe is a YAML mapping with a `command` (which subcommand it drives), a
`description`, and sections that mirror the dataclasses in `tjdkit.config`. Validation
is strict: an unknown key or a wrong type is an error naming the key and the file, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import random
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from importlib import metadata
from typing import Any, Iterable, Mapping, Optional, TypeVar

import yaml

from tjdkit.errors import TjdkitError

T = TypeVar("T")


def builtin_recipe_dir() -> Path:
    """Recipes ship inside the wheel as tjdkit/_recipes; a source checkout keeps them at the top."""
    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "_recipes"
    return installed if installed.is_dir() else package_dir.parent / "recipes"


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    path: Path
    command: str
    description: str


def list_recipes() -> list[RecipeInfo]:
    infos = []
    for path in sorted(builtin_recipe_dir().glob("*.yaml")):
        data = _read_yaml(path)
        infos.append(
            RecipeInfo(path.stem, path, str(data.get("command", "?")), str(data.get("description", "")))
        )
    return infos


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe name (`chat`) or a path to a YAML file."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or candidate.parent != Path("."):
        if not candidate.is_file():
            raise TjdkitError(f"recipe file not found: {candidate}")
        return candidate
    builtin = builtin_recipe_dir() / f"{text}.yaml"
    if builtin.is_file():
        return builtin
    if candidate.is_file():
        return candidate
    known = ", ".join(info.name for info in list_recipes()) or "none"
    raise TjdkitError(f"unknown recipe '{text}' (known: {known}; or pass a path to a .yaml file)")


def read_recipe(name_or_path: str | Path) -> dict:
    """The recipe's YAML mapping as written (unvalidated): for choosing its schema."""
    return _read_yaml(find_recipe(name_or_path))


def recipe_text(name_or_path: str | Path) -> str:
    return _read_text(find_recipe(name_or_path))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TjdkitError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): a recipe is a YAML file") from None
    except OSError as exc:
        raise TjdkitError(f"cannot read recipe {path}: {exc.strerror or exc}") from None


def copy_recipe(name_or_path: str | Path, dest: str | Path, overwrite: bool = False) -> Path:
    source = find_recipe(name_or_path)
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not overwrite:
        raise TjdkitError(f"{dest} already exists (use --force to overwrite)")
    from tjdkit.fileio import atomic_write_text, check_output_file

    check_output_file(dest, what="recipes cp")
    return atomic_write_text(dest, _read_text(source))


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value) with the value parsed as YAML (3 -> int, true -> bool)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise TjdkitError(f"bad --set '{text}': expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_recipe(
    name_or_path: str | Path,
    schema: type[T],
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> T:
    """Load a recipe, apply `--set` overrides then explicit CLI flags, and validate it.

    `flags` maps dotted keys to values; a None value means the flag was not given.
    """
    path = find_recipe(name_or_path)
    data = _read_yaml(path)
    source = str(path)
    expected = getattr(schema, "command", None)
    command = data.get("command", expected)
    if expected is not None and command != expected:
        raise TjdkitError(f"{source}: this is a '{command}' recipe, not a '{expected}' one")
    data.pop("command", None)
    from_cli: set[str] = set()
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value, source)
        from_cli.add(key)
    for key, value in (flags or {}).items():
        if value is not None:
            _set_dotted(data, key, value, source)
            from_cli.add(key)
    return from_mapping(schema, data, source=source, cli_keys=from_cli)


def from_mapping(schema: type[T], data: Any, source: str, cli_keys: set[str] | None = None) -> T:
    """Validate a plain mapping into the dataclass `schema`, naming the key and file on error."""
    return _convert(data, schema, "", _Where(source, cli_keys or set()))


def to_mapping(obj: Any) -> Any:
    """The inverse of from_mapping, for writing resolved recipes back to YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(item) for item in obj]
    if isinstance(obj, dict):
        return {key: to_mapping(value) for key, value in obj.items()}
    return obj


def dump_recipe(obj: Any) -> str:
    data = to_mapping(obj)
    command = getattr(type(obj), "command", None)
    if command:
        data = {"command": command, **data}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# -- internals ---------------------------------------------------------------------------


@dataclass
class _Where:
    source: str
    cli_keys: set[str]

    def error(self, key: str, message: str) -> TjdkitError:
        origin = f"{self.source} (set on the command line)" if key in self.cli_keys else self.source
        return TjdkitError(f"{origin}: {key or 'recipe'}: {message}")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise TjdkitError(f"{path}: bad YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TjdkitError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    return data


def _set_dotted(data: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise TjdkitError(f"{source}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(choice) for choice in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(value: Any, tp: Any, key: str, where: _Where) -> Any:
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, key, where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        if value in args:
            return value
        raise where.error(key, f"expected one of {', '.join(map(repr, args))}, got {_describe(value)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except TjdkitError:
                continue
        raise where.error(key, f"expected {_type_name(tp)}, got {_describe(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise where.error(key, f"expected a list, got {_describe(value)}")
        item_type = args[0] if args else Any
        return [_convert(item, item_type, f"{key}[{i}]", where) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise where.error(key, f"expected a mapping, got {_describe(value)}")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, value_type, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise where.error(key, f"expected a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise where.error(key, f"expected {_type_name(tp)}, got {_describe(value)}")


def _convert_dataclass(value: Any, tp: Any, key: str, where: _Where) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise where.error(key, f"expected a section (mapping), got {_describe(value)}")
    hints = typing.get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
    for name in value:
        if name not in fields:
            full = f"{key}.{name}" if key else str(name)
            raise where.error(full, f"unknown key (allowed here: {', '.join(fields)})")
    kwargs = {}
    for name, field in fields.items():
        full = f"{key}.{name}" if key else name
        if name in value:
            converted = _convert(value[name], hints[name], full, where)
            _check_bounds(converted, field.metadata, full, where)
            kwargs[name] = converted
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise where.error(full, "missing required key")
    return tp(**kwargs)


def _check_bounds(value: Any, metadata: Mapping[str, Any], key: str, where: _Where) -> None:
    if value is None or isinstance(value, (str, bool, list, dict)):
        return
    if "min" in metadata and value < metadata["min"]:
        raise where.error(key, f"must be >= {metadata['min']}, got {value}")
    if "max" in metadata and value > metadata["max"]:
        raise where.error(key, f"must be <= {metadata['max']}, got {value}")
    if "gt" in metadata and value <= metadata["gt"]:
        raise where.error(key, f"must be > {metadata['gt']}, got {value}")


# ---- what a command ran with: its seed and its resolved settings ----------------------------

DEFAULT_SEED = 0
MAX_SEED = 2**63 - 1  # what torch.manual_seed accepts


def seed_everything(seed: Optional[int]) -> int:
    """Seed Python's `random`, numpy and torch (every device) with `seed` (None: DEFAULT_SEED); returns the seed used."""
    seed = DEFAULT_SEED if seed is None else int(seed)
    if not 0 <= seed <= MAX_SEED:
        from tjdkit.errors import TjdkitError

        raise TjdkitError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)  # numpy's legacy seed takes 32 bits
    except ImportError:
        pass
    import torch

    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def versions() -> dict[str, Optional[str]]:
    """The versions that decide a result: Python and the libraries tjdkit computes with."""
    found: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in ("tjdkit", "torch", "transformers", "accelerate", "tensorly"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def resolved_settings(command: str, recipe: Any = None, **values: Any) -> dict:
    """What a command ran with: its name, the full recipe after CLI overrides (a mapping), named values
    (model, dtype, seed, flags), and the versions. JSON-ready."""
    settings: dict[str, Any] = {"command": command}
    if recipe is not None:
        settings["recipe"] = recipe
    settings.update(values)
    settings["versions"] = versions()
    return settings
