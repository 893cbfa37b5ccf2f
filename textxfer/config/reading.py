"""Reading a recipe: YAML (1.2 scalars), `${VAR}` expansion, `--set key.path=value` overrides, the bundled
recipes by name, and the typed build into the schema with errors that name the key and what is allowed."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from textxfer.config.schema import Recipe, to_dict
from textxfer.config.validate import validate
from textxfer.core.errors import UserError


class RecipeLoader(yaml.SafeLoader):
    """The safe loader with YAML 1.2's plain scalars: `3e-2` and `1e4` are numbers (PyYAML's YAML 1.1 rules give the
    strings '3e-2' and '1e4': learning rates are written that way), and only true/false are booleans. YAML 1.1 also
    reads `no`, `off`, `yes`, `on` as booleans, which turned `mixed_precision: no` into False; here they stay
    strings, and a key's type in the recipe schema decides what they mean (`_coerce`: a boolean key takes them).

    It refuses what PyYAML lets through: a key given twice in a mapping (last-wins dropped a whole section), aliases
    expanding to over `MAX_ALIAS_VALUES` values (a bomb: 10 aliases on each of 9 levels are 10^9 values, which the
    typed build walks) and an alias inside the value it names. `name` (`Recipe x.yaml`) starts its messages."""

    MAX_ALIAS_VALUES = 100_000

    def __init__(self, stream: str, name: str | None = None):
        super().__init__(stream)
        self.name = name or self.name
        self._alias_values, self._sizes = 0, {}

    def _at(self, mark: yaml.Mark) -> str:
        """`Recipe x.yaml, line 3`: where a problem is, in the words of a message."""
        return f"{self.name if not self.name.startswith('<') else 'The recipe'}, line {mark.line + 1}"

    def _size(self, node: yaml.Node) -> int:
        """How many values `node` stands for with every alias inside it written out (memoised: linear time)."""
        if id(node) not in self._sizes:
            inside = node.value if isinstance(node, yaml.SequenceNode) else [
                n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
            self._sizes[id(node)] = 1 + sum(map(self._size, inside))
        return self._sizes[id(node)]

    def compose_node(self, parent, index):
        """Count what each alias expands to; refuse a bomb or a recursive alias before anything walks it."""
        event = self.peek_event()
        target = self.anchors.get(event.anchor) if isinstance(event, yaml.AliasEvent) else None
        if target is None:
            return super().compose_node(parent, index)
        if target.end_mark is None:  # a list or mapping gets its end mark once composed: this one holds the alias
            raise UserError(f"{self._at(event.start_mark)}: the alias *{event.anchor} is inside the value "
                            f"&{event.anchor} names, which would make it contain itself. Write that part out.")
        self._alias_values += self._size(target)
        if self._alias_values > self.MAX_ALIAS_VALUES:
            raise UserError(
                f"{self._at(event.start_mark)}: the recipe's anchors and aliases expand to more than "
                f"{self.MAX_ALIAS_VALUES:,} values (at the alias *{event.anchor}), far more than any recipe needs: "
                f"aliases of aliases like these are an alias bomb. Nest fewer aliases, or write the values out.")
        return super().compose_node(parent, index)

    def _key(self, node: yaml.Node) -> Any:
        """A key as the built dict hashes it (`true` and `True` are one key); a collection key stands for itself."""
        return self.construct_object(node) if isinstance(node, yaml.ScalarNode) else ("node", id(node))

    def flatten_mapping(self, node):
        """Refuse a key given twice, then resolve merge keys (`<<: *base`) as YAML defines them: a key written in
        the mapping overrides a merged one, and of several merged mappings the first to give a key wins. (PyYAML's
        version compares keys by identity, so `a: 3` written over a merged `a` was lost when that mapping was
        merged again.) One pair per key is kept, so merges of merges cannot grow."""
        explicit: dict[Any, tuple] = {}
        sources: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                for sub in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                    if not isinstance(sub, yaml.MappingNode):
                        raise yaml.constructor.ConstructorError(None, None, f"`<<` merges a mapping or a list of "
                                                                f"mappings, not a {sub.id}", sub.start_mark)
                    self.flatten_mapping(sub)
                    sources.append(sub)
                continue
            if key_node.tag == "tag:yaml.org,2002:value":
                key_node.tag = "tag:yaml.org,2002:str"
            if (key := self._key(key_node)) in explicit:
                raise UserError(f"{self._at(key_node.start_mark)}: key `{key_node.value}` appears twice (first on "
                                f"line {explicit[key][0].start_mark.line + 1}); merge the two into one.")
            explicit[key] = (key_node, value_node)
        if sources:
            merged: dict[Any, tuple] = {}
            for pair in (pair for sub in sources for pair in sub.value):
                merged.setdefault(self._key(pair[0]), pair)
            node.value = [pair for key, pair in merged.items() if key not in explicit] + list(explicit.values())


class TagRefused(yaml.constructor.ConstructorError):
    """A tag the safe loader has no constructor for: `!!python/object:...` (refused as unsafe) or an unknown one."""


def _refuse_tag(loader: RecipeLoader, node: yaml.Node) -> Any:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    why = ("builds a Python object: tags that build Python objects are not allowed in recipes, which are read as "
           "safe YAML" if tag.startswith("!!python/") else "is not one recipes understand")
    raise TagRefused(None, None, f"the tag `{tag}` {why}. Remove it and write the value as plain YAML (a string, "
                     "number, list or mapping)", node.start_mark)


RecipeLoader.add_constructor(None, _refuse_tag)


_BOOL = "tag:yaml.org,2002:bool"


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."))


def load_yaml(text: str, name: str | None = None) -> Any:
    """Read YAML text with `RecipeLoader` (safe); `name` (`Recipe path/x.yaml`) starts the loader's messages."""
    loader = RecipeLoader(text, name)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, key: str = "") -> str:
    """Expand `${VAR}` and `${VAR:-default}`; a variable set but empty counts as unset (the default applies). An
    unset or empty variable without default is an error naming the key; so is a default holding another `${...}`,
    which the pattern cannot nest (it would leave `${B:-/x}` in a path)."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if default is not None and "${" in default:
            raise UserError(f"Recipe key `{key}` nests a variable in the default of ${{{name}:-...}}; a default "
                            f"cannot hold another `${{...}}`. Give a plain one, e.g. ${{{name}:-/data}}, or set {name}.")
        if os.environ.get(name, "") != "":
            return os.environ[name]
        if default is not None:
            return default
        state = "is empty (empty counts as unset)" if name in os.environ else "is not set"
        raise UserError(f"Recipe key `{key}` uses ${{{name}}}, but the environment variable {name} {state}. "
                        f"Set it (e.g. `export {name}=...`) or give a default: ${{{name}:-value}}.")

    return _ENV.sub(sub, value)


_PLAIN_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
                type(None): "null", list: "a list", dict: "a mapping"}


def _type_name(tp: Any) -> str:
    """An annotation in a user's words: `a whole number or null`, `one of 'fsdp', 'deepspeed' or null`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        words = []
        for arg in typing.get_args(tp):
            values = typing.get_args(arg) if typing.get_origin(arg) is Literal else ()
            words.append(f"one of {', '.join(map(repr, values))}" if len(values) > 1 else _type_name(arg))
        return " or ".join(words)
    if tp in _PLAIN_NAMES:
        return _PLAIN_NAMES[tp]
    if dataclasses.is_dataclass(tp):
        return "a mapping of its keys"
    if origin is not None:
        return _PLAIN_NAMES.get(origin, str(tp).replace("typing.", ""))
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


_WORDS_TRUE = {"true", "yes", "on", "y"}


_WORDS_FALSE = {"false", "no", "off", "n"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert where lossless (int -> float, env expansion)."""
    if isinstance(value, str):
        value = expand_env(value, key)
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as e:
                errors.append(e)
        if len(errors) == 1 and isinstance(value, dict):  # an optional section: its own key's error is the one
            raise errors[0]
        raise UserError(f"Recipe key `{key}` is {value!r}, but it must be {_type_name(tp)}.")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"Recipe key `{key}` is {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}.{hint}"
            )
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"Recipe key `{key}` must be a list, not {value!r}.")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _WORDS_TRUE | _WORDS_FALSE:
            return value.strip().lower() in _WORDS_TRUE
        raise UserError(f"Recipe key `{key}` must be true or false, not {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"Recipe key `{key}` must be a number, not {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"Recipe key `{key}` must be a whole number, not {value!r}.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"Recipe key `{key}` must be a string, not {value!r}.")
    return value


def _expand_any(value: Any, key: str) -> Any:
    """Expand environment variables inside free-form values (dicts and lists under `Any` keys)."""
    if isinstance(value, str):
        return expand_env(value, key)
    if isinstance(value, dict):
        return {k: _expand_any(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_any(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"`{prefix}`" if prefix else "The recipe"
        raise UserError(f"{where} must be a mapping of keys to values, not {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.6)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise UserError(
                f"Unknown recipe key `{key}`.{hint} Allowed keys here: {', '.join(names)}."
            )
        tp = hints[k]
        kwargs[k] = _expand_any(v, key) if tp is Any else _coerce(v, tp, key)
    return cls(**kwargs)


_NULLS = {"null", "Null", "NULL", "~"}
"""The `--set` values that mean null; any other text YAML reads as null stays the text (`--set x= ` is a space)."""


def _override_value(raw: str, text: str) -> Any:
    """`--set key=raw`'s value: YAML, so numbers, booleans, lists and mappings keep their type, but text YAML would
    cut or drop stays as written: `baseline #3` (a comment), `|` (empty block scalar), ` `, `#x`, `&a` (null), or
    invalid YAML (`,`). Only `null`/`~` spell null; `key=` and a quoted `""` stay the empty string."""
    loader = RecipeLoader(raw, f"--set {text}")
    try:
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError:
        return raw
    finally:
        loader.dispose()
    if raw.strip() in _NULLS:
        return None
    if node is None or not isinstance(node, yaml.ScalarNode) or not (value is None or isinstance(value, str)):
        return raw if node is None else value
    cut = raw[node.end_mark.index:].strip() != ""  # a comment followed the scalar
    dropped = value is None or (value == "" and node.style not in ("'", '"'))
    return raw if cut or dropped else value


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as YAML so numbers and booleans keep their type, the text as
    written where YAML would change it: see `_override_value`). A missing `=` or an empty key or part is an error."""
    path, sep, raw = text.partition("=")
    parts = [p.strip() for p in path.strip().split(".")]
    if not sep or not all(parts):
        why = ("there is no `=`" if not sep else "the key before `=` is empty" if not path.strip()
               else f"`{path.strip()}` has an empty part between dots")
        raise UserError(f"--set {text}: give KEY=VALUE with a dotted key, e.g. training.epochs=5 ({why}).")
    return parts, _override_value(raw, text)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each `--set key.path=value` in the raw recipe `data` (in place), making the sections a path names."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


BUNDLED_RECIPES = Path(__file__).resolve().parent / "recipes"
"""The recipes shipped inside the package (`textxfer recipes` lists them; `textxfer train NAME` runs one)."""


def bundled_recipes() -> list[Path]:
    """The bundled recipe files, by name."""
    return sorted(BUNDLED_RECIPES.glob("*.yaml"))


def resolve_recipe(path: str | Path) -> Path:
    """A recipe file: `path` itself where it exists, else the bundled recipe of that name (`quickstart`,
    `quickstart.yaml`), as `tune run` resolves its built-in configs; a clear error naming both otherwise."""
    path = Path(path)
    if path.is_file():
        return path
    if path.parent == Path("."):
        bundled = BUNDLED_RECIPES / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
        if bundled.is_file():
            return bundled
    names = ", ".join(p.stem for p in bundled_recipes())
    raise UserError(
        f"Recipe file {path} does not exist, and no bundled recipe has that name. Give the path of a YAML recipe, "
        f"or the name of a bundled one: {names} (`textxfer recipes` describes them)."
    )


def read_yaml(path: str | Path) -> dict:
    """The recipe file (or bundled recipe) `path` as a dict; what it cannot read is an error naming file and line."""
    path = resolve_recipe(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), name=f"Recipe {path}")
    except TagRefused as e:
        raise UserError(f"Recipe {path}, line {e.problem_mark.line + 1}: {e.problem}.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise UserError(f"Recipe {path} is not valid YAML{where}: {problem}. Fix the syntax there.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"Recipe {path} must be a YAML mapping (keys like model:, data:, training:).")
    return data


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None, in_memory: dict[str, str] | None = None) -> Recipe:
    """Read a recipe from YAML (or a dict), apply `key.path=value` overrides, validate and return it.

    `in_memory`: {split: description} of splits given from Python (`textxfer.train(train=df)`); the description
    replaces `data.<split>`, so a recipe without `data.train` is valid when train data comes that way."""
    raw = read_yaml(path) if path is not None else dict(data or {})
    apply_overrides(raw, list(overrides or []))
    if in_memory and isinstance(raw.get("data") or {}, dict):  # a malformed `data:` is reported by _build
        raw["data"] = {**(raw.get("data") or {}), **in_memory}
    recipe = _build(Recipe, raw)
    validate(recipe)
    return recipe


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True), encoding="utf-8")
