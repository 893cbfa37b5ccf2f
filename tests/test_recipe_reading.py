"""Reading a recipe's YAML and its `--set` overrides: duplicate keys, alias bombs, text values that YAML would
change, malformed keys, unsafe tags and `${VAR}` expansion all end in a clear `UserError` (or the text as written)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from textxfer.config.reading import (
    apply_overrides,
    expand_env,
    load_recipe,
    load_yaml,
    parse_override,
    read_yaml,
)
from textxfer.core.errors import UserError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# Duplicate keys


def test_a_duplicate_section_is_refused_naming_both_lines_and_the_file(tmp_path):
    path = write(tmp_path, """\
        training: {epochs: 5, learning_rate: 3.0e-5}
        strategy: {name: full}
        training: {batch_size: 8}
        """)
    with pytest.raises(UserError) as e:
        read_yaml(path)
    message = str(e.value)
    assert str(path) in message and "line 3" in message and "first on line 1" in message, message
    assert "`training` appears twice" in message and "merge the two" in message, message


def test_a_duplicate_key_inside_one_mapping_is_refused(tmp_path):
    path = write(tmp_path, """\
        training:
          epochs: 5
          batch_size: 8
          epochs: 1
        """)
    with pytest.raises(UserError, match=r"line 4: key `epochs` appears twice \(first on line 2\)"):
        read_yaml(path)
    with pytest.raises(UserError, match=r"key `a` appears twice"):
        load_yaml("{a: 1, b: 2, a: 3}")


def test_merge_keys_still_work_and_an_explicit_key_overrides_a_merged_one():
    data = load_yaml(textwrap.dedent("""\
        base: &base {a: 1, b: 2}
        mid: &mid
          <<: *base
          a: 3
        top: {<<: *mid, c: 4}
        again: *mid
        listed: {<<: [*base, {d: 5}], b: 6}
        inline: {<<: &m {<<: *base, b: 7}}
        later: *m
        """))
    assert data["mid"] == {"a": 3, "b": 2}
    assert data["top"] == {"a": 3, "b": 2, "c": 4}
    assert data["again"] == {"a": 3, "b": 2}
    assert data["listed"] == {"a": 1, "b": 6, "d": 5}
    assert data["inline"] == {"a": 1, "b": 7} and data["later"] == {"a": 1, "b": 7}


# Alias bombs


BOMB = "\n".join(["data:", "  labels:", "    - &l0 [" + ", ".join(["x"] * 10) + "]"]
                 + [f"    - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]) + "\n"


def test_an_alias_bomb_is_refused_quickly(tmp_path):
    """Nine levels of ten aliases each expand to 10^9 values: refused while composing, in well under a second. Run
    in a child with a memory cap and a timeout, so that a regression fails the test instead of eating the machine."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB, encoding="utf-8")
    code = textwrap.dedent(f"""\
        import resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from textxfer.config.reading import load_recipe
        from textxfer.core.errors import UserError
        start = time.monotonic()
        try:
            load_recipe({str(path)!r})
        except UserError as e:
            print(f"{{time.monotonic() - start:.3f}}", e)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    seconds, message = r.stdout.split(" ", 1)
    assert float(seconds) < 2, r.stdout
    assert "anchors and aliases expand to more than" in message and str(path) in message, message


def test_ordinary_anchors_are_not_counted_as_a_bomb():
    labels = ", ".join(f"l{i}" for i in range(300))
    data = load_yaml(f"a: &a [{labels}]\nb: *a\nc: *a\nd: {{<<: &m {{k: *a}}}}\ne: *m\n")
    assert len(data["b"]) == len(data["c"]) == len(data["e"]["k"]) == 300


def test_a_recursive_alias_is_refused():
    with pytest.raises(UserError, match="contain itself"):
        load_yaml("a: &a [1, *a]\n")


# --set values


@pytest.mark.parametrize(("raw", "expected"), [
    ("baseline #3 (lr 5e-5)", "baseline #3 (lr 5e-5)"),
    ("|", "|"), (">", ">"), (" ", " "), ("#3", "#3"), ("&a", "&a"), ("a #b", "a #b"),
    ("", ""), ('""', ""), ("''", ""), ("~", None), ("null", None), ("Null", None), ("NULL", None),
    ("5", 5), ("3e-5", 3e-5), ("true", True), ("no", "no"), ("[a,b]", ["a", "b"]), ("{a: 1}", {"a": 1}),
    ("plain text", "plain text"), (" padded ", "padded"), ("'quoted # not a comment'", "quoted # not a comment"),
])
def test_set_values_keep_the_text_yaml_would_cut_or_drop(raw, expected):
    path, value = parse_override(f"a.b={raw}")
    assert path == ["a", "b"]
    assert value == expected and type(value) is type(expected), (raw, value)


def test_set_values_reach_the_recipe_as_written():
    recipe = load_recipe("quickstart", ["description=baseline #3 (lr 5e-5)", "data.delimiter=|",
                                        "data.label_delimiter=;"])
    assert recipe.description == "baseline #3 (lr 5e-5)"
    assert recipe.data.delimiter == "|" and recipe.data.label_delimiter == ";"


@pytest.mark.parametrize("text", ["=5", " =5", "training..epochs=2", ".x=1", "x.=1", "training. .epochs=1",
                                  "training.epochs"])
def test_a_malformed_set_key_is_refused(text):
    with pytest.raises(UserError, match=r"give KEY=VALUE with a dotted key, e\.g\. training\.epochs=5"):
        apply_overrides({}, [text])


# Unsafe tags


def test_a_python_tag_is_refused_as_unsafe_naming_the_line(tmp_path):
    path = write(tmp_path, """\
        description: x
        model: !!python/object/apply:os.system ["echo hi"]
        """)
    with pytest.raises(UserError) as e:
        read_yaml(path)
    message = str(e.value)
    assert "line 2" in message and str(path) in message and "Python objects" in message, message
    assert "not valid YAML" not in message and "Fix the syntax" not in message, message


# ${VAR} expansion


def test_an_empty_variable_is_called_empty(monkeypatch):
    monkeypatch.setenv("TX_EMPTY_VAR", "")
    with pytest.raises(UserError, match="TX_EMPTY_VAR is empty"):
        expand_env("${TX_EMPTY_VAR}/train.csv", "data.train")
    assert expand_env("${TX_EMPTY_VAR:-/d}/train.csv", "data.train") == "/d/train.csv"


def test_a_nested_default_is_refused(monkeypatch):
    monkeypatch.delenv("TX_UNSET_A", raising=False)
    monkeypatch.delenv("TX_UNSET_B", raising=False)
    with pytest.raises(UserError, match=r"data\.train.*cannot hold another"):
        expand_env("${TX_UNSET_A:-${TX_UNSET_B:-/x}}/train.csv", "data.train")
