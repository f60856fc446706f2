"""Recipes: named lookup, overrides, and strict validation that names the key and file."""

import pytest

from tjdkit.config import ChatRecipe, FactorizeRecipe, HyformerTrainRecipe, TnotRecipe, TrainRecipe, train_schema
from tjdkit.errors import TjdkitError
from tjdkit.recipes import (
    builtin_recipe_dir,
    copy_recipe,
    dump_recipe,
    find_recipe,
    list_recipes,
    load_recipe,
    parse_override,
    read_recipe,
)


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_recipes_all_validate():
    infos = list_recipes()
    assert "chat" in {info.name for info in infos}
    for info in infos:
        schema = {"chat": ChatRecipe, "tnot": TnotRecipe, "factorize": FactorizeRecipe}.get(info.command)
        if info.command == "train":
            schema = train_schema(read_recipe(info.name))
        recipe = load_recipe(info.name, schema)
        assert recipe.description, info.name
    assert train_schema(read_recipe("hyformer-smiles")) is HyformerTrainRecipe
    assert train_schema(read_recipe("stemp-cp")) is TrainRecipe


def test_defaults_from_the_chat_recipe():
    recipe = load_recipe("chat", ChatRecipe)
    assert recipe.model.name == "gemma3"
    assert recipe.generation.max_new_tokens == 128
    assert recipe.chat.format == "auto"


def test_set_overrides_are_typed_and_flags_win(tmp_path):
    recipe = load_recipe(
        "chat",
        ChatRecipe,
        overrides=["generation.max_new_tokens=7", "generation.temperature=0", "chat.system=Be brief", "generation.seed=3"],
        flags={"generation.max_new_tokens": 9, "model.name": None},
    )
    assert recipe.generation.max_new_tokens == 9  # the explicit flag beats --set
    assert recipe.generation.temperature == 0.0 and isinstance(recipe.generation.temperature, float)
    assert recipe.chat.system == "Be brief"
    assert recipe.generation.seed == 3
    assert recipe.model.name == "gemma3"  # a flag left at None changes nothing


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "command: chat\ngeneration:\n  max_tokens: 5\n")
    with pytest.raises(TjdkitError) as err:
        load_recipe(path, ChatRecipe)
    assert "generation.max_tokens" in str(err.value) and str(path) in str(err.value)
    assert "unknown key" in str(err.value)


def test_unknown_override_says_it_came_from_the_command_line():
    with pytest.raises(TjdkitError) as err:
        load_recipe("chat", ChatRecipe, overrides=["model.nmae=gpt2"])
    assert "model.nmae" in str(err.value) and "command line" in str(err.value)


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("generation:\n  max_new_tokens: lots\n", "generation.max_new_tokens"),
        ("generation:\n  max_new_tokens: 2.5\n", "generation.max_new_tokens"),
        ("generation:\n  temperature: hot\n", "generation.temperature"),
        ("chat:\n  format: fancy\n", "chat.format"),
        ("model: gemma3\n", "model"),
        ("generation:\n  top_p: 0\n", "generation.top_p"),
        ("generation:\n  max_new_tokens: 0\n", "generation.max_new_tokens"),
        ("generation:\n  seed: true\n", "generation.seed"),
    ],
)
def test_wrong_types_and_bounds_are_rejected(tmp_path, yaml_text, key):
    path = write(tmp_path, "command: chat\n" + yaml_text)
    with pytest.raises(TjdkitError) as err:
        load_recipe(path, ChatRecipe)
    assert f": {key}:" in str(err.value) and str(path) in str(err.value)


def test_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(TjdkitError, match="bad YAML.*line"):
        load_recipe(write(tmp_path, "model: [unclosed\n"), ChatRecipe)
    with pytest.raises(TjdkitError, match="must be a YAML mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n", "list.yaml"), ChatRecipe)


def test_recipe_for_another_command_is_rejected(tmp_path):
    with pytest.raises(TjdkitError, match="'train' recipe, not a 'chat' one"):
        load_recipe(write(tmp_path, "command: train\n"), ChatRecipe)


def test_unknown_recipe_and_missing_file(tmp_path):
    with pytest.raises(TjdkitError, match="unknown recipe 'nope'.*chat"):
        find_recipe("nope")
    with pytest.raises(TjdkitError, match="not found"):
        find_recipe(tmp_path / "missing.yaml")


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", "a.=1"])
def test_malformed_set(bad):
    with pytest.raises(TjdkitError, match="bad --set"):
        parse_override(bad)


def test_set_value_parsing():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=x=y") == ("a", "x=y")
    assert parse_override("a=[1, 2]") == ("a", [1, 2])


def test_dump_round_trips(tmp_path):
    recipe = load_recipe("chat", ChatRecipe, overrides=["generation.top_k=5"])
    path = write(tmp_path, dump_recipe(recipe))
    assert load_recipe(path, ChatRecipe) == recipe


def test_copy_refuses_to_overwrite(tmp_path):
    dest = copy_recipe("chat", tmp_path)
    assert dest == tmp_path / "chat.yaml"
    assert dest.read_text() == (builtin_recipe_dir() / "chat.yaml").read_text()
    with pytest.raises(TjdkitError, match="already exists"):
        copy_recipe("chat", dest)
    copy_recipe("chat", dest, overwrite=True)
