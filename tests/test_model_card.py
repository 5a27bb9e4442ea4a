"""The model card speaks of the model by its name, and of loading as it will happen: from the local directory it
was written to, or from the Hub repository it was pushed to."""

from __future__ import annotations

from compressor.model_card import card_for_hub, model_name


def test_the_card_title_is_the_model_name_not_the_source_path(compressed_vit_dir, hf_vit_dir):
    card = (compressed_vit_dir / "README.md").read_text()
    title = next(line for line in card.splitlines() if line.startswith("# "))
    assert title == f"# {hf_vit_dir.name}, compressed with `act`"
    assert model_name("../shared/data/vit-cifar10/") == "vit-cifar10"
    assert model_name("facebook/detr-resnet-50") == "facebook/detr-resnet-50"


def test_a_local_card_loads_from_the_directory_and_a_pushed_card_downloads_the_repository(compressed_vit_dir):
    card = (compressed_vit_dir / "README.md").read_text()
    assert f'compressor.load("{compressed_vit_dir}")' in card
    assert "local directory" in card and "download" not in card
    pushed = card_for_hub(card, "my-org/vit-act")
    assert 'compressor.load("my-org/vit-act")' in pushed and str(compressed_vit_dir) not in pushed.split("## Recipe")[0]
    assert "downloads the repository" in pushed and "local directory" not in pushed
