"""Model folders the project ships load in transformers 4.x and 5.x alike.

transformers 5 saves a ``CLIPTextModel`` without the ``text_model.`` key prefix of Stable Diffusion's checkpoints;
transformers 4.36 (the released code's pin) then finds none of its keys and silently re-initialises the whole encoder
at random. Every text encoder the project writes or ships must carry the prefix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

import diffsegmenter

SHIPPED = Path(diffsegmenter.__file__).parent / "models"
FIXTURES = Path(__file__).parent / "fixtures"


def text_encoder_files(root: Path) -> list[Path]:
    return sorted(root.glob("**/text_encoder*/*.safetensors"))


def unprefixed_keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return [k for k in f.keys() if not k.startswith("text_model.")]  # noqa: SIM118 (safe_open is no dict)


@pytest.mark.parametrize("root", [SHIPPED, FIXTURES], ids=["shipped", "fixtures"])
def test_every_text_encoder_has_the_classic_key_prefix(root):
    files = text_encoder_files(root)
    assert files, f"no text encoder found under {root}"
    for path in files:
        assert unprefixed_keys(path) == [], f"{path} has keys without the text_model. prefix"


def test_the_check_sees_a_missing_prefix(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "text_encoder" / "model.safetensors"
    path.parent.mkdir()
    save_file({"embeddings.token_embedding.weight": torch.zeros(2, 2)}, str(path))
    assert text_encoder_files(tmp_path) == [path]
    assert unprefixed_keys(path) == ["embeddings.token_embedding.weight"]


def test_a_shipped_model_missing_from_the_installation_names_the_folder_and_its_trainer(tmp_path, monkeypatch):
    from diffsegmenter import loading
    from diffsegmenter.hub import ModelNotFoundError

    monkeypatch.setattr(loading, "_models_root", lambda: tmp_path)
    (tmp_path / "shapes" / "unet").mkdir(parents=True)  # a partial copy: no model_index.json
    with pytest.raises(ModelNotFoundError, match=r"'shapes' is missing .*python -m research\.shapes\.train"):
        loading.resolve_model("shapes")


def test_a_shipped_transformer_folder_resolves_without_a_unet(tmp_path, monkeypatch):
    """Shipped folders are recognised by model_index.json, so a transformer-family (SD3-class) one resolves too."""
    from diffsegmenter import loading

    monkeypatch.setattr(loading, "_models_root", lambda: tmp_path)
    (tmp_path / "shapes" / "transformer").mkdir(parents=True)
    (tmp_path / "shapes" / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    assert loading.resolve_model("shapes") == str(tmp_path / "shapes")
    assert loading.resolve_model("some/hub-id") == "some/hub-id"


def test_every_shipped_model_is_in_the_package():
    from diffsegmenter import loading

    for name in loading.SHIPPED_MODELS:
        assert (Path(loading.resolve_model(name)) / "model_index.json").is_file()
