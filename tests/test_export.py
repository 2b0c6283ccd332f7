"""Exporting picks: the zip holds the chosen portraits and their recipes; Drive copies; uploads."""

from __future__ import annotations

import json
import zipfile

import pytest
from PIL import Image, PngImagePlugin

from portraitkit import colab
from portraitkit.core.errors import PortraitkitError
from portraitkit.pick.export import export_picks, load_picks, recipes, save_picks


def make_portraits(folder, names=("studio_0.png", "studio_1.png", "outdoor_0.png")):
    """PNGs with an A1111 `parameters` chunk, a manifest.json and a ranking.json (issue 6's layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest, ranking = [], []
    for index, name in enumerate(names):
        style = name.split("_")[0]
        parameters = (f"a {style} photo of sks person\nNegative prompt: blurry\n"
                      f"Steps: 25, Sampler: DPM++ 2M, CFG scale: 6.5, Seed: {index}, Size: 64x64, Model: tiny-sd, LoRA scale: 0.8")
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
        Image.new("RGB", (64, 64), (40 * index, 90, 160)).save(folder / name, pnginfo=info)
        manifest.append({"file": name, "style": style, "seed": index, "prompt": f"a {style} photo of sks person",
                         "negative_prompt": "blurry", "lora_scale": 0.8, "steps": 25, "guidance_scale": 6.5})
        ranking.append({"file": name, "rank": index + 1, "identity_distance": None if index == 2 else 0.3 + index / 10,
                        "score": 0.9 - index / 10, "reasons": ["no face found"] if index == 2 else []})  # as pick writes it
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "ranking.json").write_text(json.dumps(ranking))
    return folder


def test_zip_holds_the_picks_and_their_recipes(tmp_path):
    images = make_portraits(tmp_path / "portraits")
    drive = tmp_path / "drive" / "portraitkit" / "picks"
    zip_path = export_picks(images, ["outdoor_0.png", "studio_0.png"], tmp_path / "picks.zip", copy_to=drive)

    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        assert names == {"portraits/outdoor_0.png", "portraits/studio_0.png", "recipes.json", "recipes.txt"}
        assert archive.read("portraits/studio_0.png") == (images / "studio_0.png").read_bytes()
        rows = json.loads(archive.read("recipes.json"))
        text = archive.read("recipes.txt").decode()
    assert [row["file"] for row in rows] == ["outdoor_0.png", "studio_0.png"]
    studio = rows[1]
    assert studio["seed"] == 0 and studio["style"] == "studio" and studio["lora_scale"] == 0.8
    assert studio["rank"] == 1 and studio["score"] == pytest.approx(0.9)
    assert studio["parameters"].startswith("a studio photo of sks person\nNegative prompt: blurry\nSteps: 25")
    assert "Seed: 2" in text and "rank 1" in text

    assert sorted(p.name for p in drive.iterdir()) == ["outdoor_0.png", "recipes.json", "recipes.txt", "studio_0.png"]
    assert json.loads((drive / "recipes.json").read_text()) == rows
    # the PNG copied to Drive keeps its recipe chunk
    assert Image.open(drive / "studio_0.png").info["parameters"] == studio["parameters"]


def test_recipes_work_without_manifest_or_ranking(tmp_path):
    images = make_portraits(tmp_path / "portraits")
    (images / "manifest.json").unlink()
    (images / "ranking.json").unlink()
    Image.new("RGB", (8, 8)).save(images / "plain.png")
    rows = recipes(images, ["studio_1.png", "plain.png"])
    assert rows[0]["parameters"].endswith("LoRA scale: 0.8") and "rank" not in rows[0]
    assert rows[1] == {"file": "plain.png", "parameters": None}


def test_export_refuses_nothing_picked_and_missing_files(tmp_path):
    images = make_portraits(tmp_path / "portraits")
    with pytest.raises(PortraitkitError, match="tick at least one"):
        export_picks(images, [], tmp_path / "picks.zip")
    with pytest.raises(PortraitkitError, match="gone.png is missing"):
        export_picks(images, ["studio_0.png", "gone.png"], tmp_path / "picks.zip")
    assert not (tmp_path / "picks.zip").exists()  # no half-written zip


def test_picks_are_saved_and_read_back(tmp_path):
    assert load_picks(tmp_path) == []
    save_picks(tmp_path, ["b.png", "a.png", "b.png"])
    assert load_picks(tmp_path) == ["b.png", "a.png"]


def test_saving_uploads(tmp_path, portrait_path):
    content = portrait_path.read_bytes()
    first = colab.save_upload("../../My Photo (1).JPG", content, tmp_path / "photos")
    assert first == tmp_path / "photos" / "My_Photo_1_.JPG" and first.read_bytes() == content
    assert colab.save_upload("My Photo (1).JPG", content, tmp_path / "photos") == first  # same file again
    other = colab.save_upload("My Photo (1).JPG", content[:-10], tmp_path / "photos")
    assert other.name == "My_Photo_1__1.JPG"  # another file with the same name is kept beside it
    assert colab.save_upload("notes.txt", b"hello", tmp_path / "photos") is None
    with pytest.raises(PortraitkitError, match="arrived empty.*files.upload"):
        colab.save_upload("big.jpg", b"", tmp_path / "photos")
    assert [p.name for p in colab.list_photos(tmp_path / "photos")] == ["My_Photo_1_.JPG", "My_Photo_1__1.JPG"]


def test_outside_colab(tmp_path, monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "google.colab", raising=False)
    assert not colab.in_colab()
    assert colab.work_folder(str(tmp_path / "work")) == (tmp_path / "work").resolve()
    with pytest.raises(PortraitkitError, match="only in Colab"):
        colab.upload_photos(tmp_path)
    assert "No GPU found" in colab.describe_gpu() or "GPU:" in colab.describe_gpu()


def test_colab_upload_saves_into_the_folder(tmp_path, monkeypatch, portrait_path):
    import sys
    import types

    content = portrait_path.read_bytes()
    monkeypatch.chdir(tmp_path)

    def upload():  # what google.colab.files.upload does: a copy in the current folder, and a dict
        (tmp_path / "me.jpg").write_bytes(content)
        (tmp_path / "notes.txt").write_bytes(b"x")
        return {"me.jpg": content, "notes.txt": b"x"}

    fake = types.ModuleType("google.colab")
    fake.files = types.SimpleNamespace(upload=upload)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", fake)
    assert colab.in_colab()
    saved = colab.upload_photos(tmp_path / "drive" / "photos")
    assert saved == [tmp_path / "drive" / "photos" / "me.jpg"] and saved[0].read_bytes() == content
    assert not (tmp_path / "me.jpg").exists()
