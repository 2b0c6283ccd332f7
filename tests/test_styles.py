"""Style presets: the built-ins, user overrides from files and Python, clear errors, the listing."""

from __future__ import annotations

import json
import re

import pytest

from portraitkit.models.bases import tiny_tokenizer
from portraitkit.cli import main
from portraitkit.core.errors import PortraitkitError
from portraitkit.sample.styles import DEFAULT_STYLES, FAMILIES, Style, load_styles, select_styles


def clip_tokens(text: str) -> int:
    """Tokens CLIP's BPE needs for common English: about one per word and punctuation mark,
    plus the start and end tokens."""
    return len(re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]", text.lower())) + 2


@pytest.mark.parametrize("family", FAMILIES)
def test_builtin_styles_are_complete_portrait_recipes(family):
    styles = load_styles(family=family)
    tokenizer = tiny_tokenizer()
    assert len(styles) >= 8 and set(DEFAULT_STYLES) <= set(styles)
    for style in styles.values():
        prompt, negative = style.render("zwx", "woman")
        assert "zwx woman" in prompt and "{" not in prompt, style.name
        # FLUX.2 [klein] guides against the empty prompt, as its pipeline does: no negative words
        assert (negative or family == "flux2") and style.description and style.steps >= 20 and 1 < style.guidance_scale <= 8
        # CLIP truncates at 77 tokens: a style's words past that would be silently dropped.
        assert clip_tokens(prompt) <= 77 and clip_tokens(negative) <= 77, style.name
        # The tiny bases read the whole prompt too (no truncation warnings in the CPU demo); a
        # style with new words needs `python scripts/make_tiny_tokenizer.py` to keep it so.
        for text in (prompt, negative):
            assert len(tokenizer(text).input_ids) <= tokenizer.model_max_length, style.name


def test_sd15_and_sdxl_get_their_own_prompts_and_guidance():
    sd, sdxl = load_styles(family="sd")["studio"], load_styles(family="sdxl")["studio"]
    assert sd.prompt != sdxl.prompt and sd.negative_prompt != sdxl.negative_prompt
    assert sdxl.guidance_scale < sd.guidance_scale


def test_user_yaml_overrides_one_field_and_adds_a_style(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "studio:\n  guidance_scale: 4.5\n"
        "beach:\n  description: On a beach at sunset\n  prompt: photo of {token} {class_word} on a beach\n"
    )
    builtin = load_styles(family="sd")
    styles = load_styles(path, family="sd")
    assert styles["studio"].guidance_scale == 4.5
    assert styles["studio"].prompt == builtin["studio"].prompt  # only the field the user set changed
    beach = styles["beach"]
    assert beach.render("sks", "man")[0] == "photo of sks man on a beach"
    # What the new style leaves out comes from the family's defaults.
    assert beach.negative_prompt == builtin["corporate"].negative_prompt and beach.steps == builtin["corporate"].steps


def test_user_json_file_python_dict_and_style_object(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"styles": {"cafe": {"prompt": "{token} {class_word} in a cafe", "sdxl": {"steps": 25}}}}))
    mine = Style("mine", "my own", "{token} {class_word}, my words", "ugly", 6.0, 20)
    styles = load_styles(path, {"studio": {"description": "changed in Python"}}, mine, family="sdxl")
    assert styles["cafe"].steps == 25 and styles["cafe"].description == "your own style"
    assert styles["studio"].description == "changed in Python"
    assert styles["mine"] is mine


@pytest.mark.parametrize("content, message", [
    ("studio:\n  negative: blurry\n", "unknown field 'negative'"),
    ("odd:\n  prompt: a photo of a person\n", "lacks ['class_word', 'token']"),
    ("odd:\n  prompt: '{token} {class_word} {age}'\n", "unknown placeholders ['age']"),
    ("odd:\n  prompt: '{token} {class_word}'\n  steps: many\n", "whole number of steps"),
    ("studio: [1, 2\n", "not valid YAML"),
    ("defaults:\n  sd: {steps: 5}\n", "only the built-in file has"),
])
def test_bad_style_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(PortraitkitError, match=re.escape(message)):
        load_styles(path)


def test_missing_file_and_unknown_style_names():
    with pytest.raises(PortraitkitError, match="does not exist"):
        load_styles("no/such/styles.yaml")
    styles = load_styles()
    with pytest.raises(PortraitkitError, match="unknown style.*studdio"):
        select_styles(styles, ["studio", "studdio"])
    assert [s.name for s in select_styles(styles, None)] == list(DEFAULT_STYLES)


def test_cli_lists_one_style_per_line_name_first(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("beach:\n  description: On a beach at sunset\n  prompt: photo of {token} {class_word} on a beach\n")
    assert main(["styles", "--styles-file", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(load_styles()) + 1
    names = [line.split()[0] for line in lines]
    assert names[0] == "studio" and names[-1] == "beach"
    assert lines[-1].split(None, 1)[1] == "On a beach at sunset"
