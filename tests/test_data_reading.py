"""How labelled data is read: an image folder whole, as one split, whatever its file names say; ImageNet class
folders (synsets or names) matched to a timm ImageNet model's class indices; labels checked against the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints_timm import create_tiny_timm_model
from compressor.data.loading import load_labelled
from compressor.errors import CompressorError
from compressor.evaluate.classification import check_labels, class_columns
from compressor.evaluate.runner import evaluate
from compressor.sources import load_source
from tests.shared_assets import shared

#: three ImageNet-1k classes, one of them named by its class name instead of its synset
SYNSETS = ["n01440764", "n01443537", "n01484850"]
FOLDERS = ["n01440764", "goldfish", "n01484850"]


def _cifar_images(parquet: Path, count: int) -> list:
    return load_labelled(str(parquet)).images(0, count)


def _write(folder: Path, images: list, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        image.save(folder / name)


def test_an_image_folder_is_read_whole_whatever_its_file_names_say(cifar10_test_parquet, tmp_path, capsys):
    # the ImageNet validation sample's names: `datasets`' image folder made a one-image "train" split of these
    images = _cifar_images(cifar10_test_parquet, 6)
    _write(tmp_path / "n02917067", images[:2], ["n02917067_bullet_train.JPEG", "n02917067_1_test.png"])
    _write(tmp_path / "n01440764", images[2:4], ["n01440764_tench_validation.JPEG", "n01440764_2.jpg"])
    _write(tmp_path / "n01443537", images[4:], ["n01443537_goldfish_train.JPEG", "n01443537_dev.png"])
    (tmp_path / ".ipynb_checkpoints").mkdir()
    images[0].save(tmp_path / ".ipynb_checkpoints" / "stray.png")  # hidden: not data
    data = load_labelled(str(tmp_path), progress=True)
    assert len(data) == 6
    assert data.label_names == ["n01440764", "n01443537", "n02917067"]
    assert data.labels(0, 6) == [0, 0, 1, 1, 2, 2]
    assert [image.size for image in data.images(0, 6)] == [(32, 32)] * 6
    assert capsys.readouterr().err == f"read 6 images in 3 classes (2 each) from {tmp_path}\n"


def test_the_count_per_class_is_a_range_when_classes_differ(cifar10_test_parquet, tmp_path, capsys):
    images = _cifar_images(cifar10_test_parquet, 4)
    _write(tmp_path / "cat", images[:3], ["a.png", "b.png", "c.png"])
    _write(tmp_path / "ship", images[3:], ["d.png"])
    load_labelled(str(tmp_path), progress=True)
    assert capsys.readouterr().err == f"read 4 images in 2 classes (1 to 3 per class) from {tmp_path}\n"


def test_a_split_names_a_sub_folder(cifar10_test_parquet, tmp_path):
    images = _cifar_images(cifar10_test_parquet, 3)
    _write(tmp_path / "train" / "cat", images[:2], ["a.png", "b.png"])
    _write(tmp_path / "test" / "ship", images[2:], ["c.png"])
    data = load_labelled(str(tmp_path), split="test")
    assert len(data) == 1 and data.label_names == ["ship"]


def test_imagenet_synsets_and_names_map_to_imagenet_indices():
    from timm.data import ImageNetInfo

    expected = [ImageNetInfo().label_names().index(synset) for synset in SYNSETS]
    assert class_columns(None, 1000, FOLDERS).tolist() == expected
    assert class_columns(None, 1000, ["tench, Tinca tinca"]).tolist() == expected[:1]  # HF's id2label spelling
    with pytest.raises(CompressorError, match="1000 classes"):
        class_columns(None, 1000, ["n01440764", "not-a-synset"])
    with pytest.raises(CompressorError, match="10 classes"):  # only a 1,000-class model is taken as ImageNet's
        class_columns(None, 10, SYNSETS)


def test_a_timm_imagenet_model_is_scored_on_synset_folders(cifar10_test_parquet, tmp_path):
    """A real tiny timm ResNet with 1,000 outputs and no names, made to always predict goldfish: its top-1 on folders
    of three ImageNet classes is exactly the goldfish folder's share, which only the synset mapping gives."""
    import torch
    from timm.data import ImageNetInfo
    from timm.models import save_for_hf

    model = create_tiny_timm_model("resnet50", layers=(1, 1, 1, 1), num_classes=1000)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[ImageNetInfo().label_names().index("n01443537")] = 10.0
    save_for_hf(model, tmp_path / "timm-imagenet", safe_serialization=True)
    images = _cifar_images(cifar10_test_parquet, 5)
    data_dir = tmp_path / "data"
    _write(data_dir / FOLDERS[0], images[:1], ["a.JPEG"])
    _write(data_dir / FOLDERS[1], images[1:3], ["b.JPEG", "c.JPEG"])
    _write(data_dir / FOLDERS[2], images[3:], ["d.JPEG", "e.JPEG"])
    data = load_labelled(str(data_dir))
    result = evaluate(load_source(str(tmp_path / "timm-imagenet")), data, progress=False)
    assert result["metrics"]["top1"] == pytest.approx(2 / 5)


def test_labels_outside_the_classes_name_the_first_row():
    check_labels([0, 9, 3], 10, lambda row: f"row {row}")
    with pytest.raises(CompressorError, match="row 2 has the label 10, outside the 10 classes"):
        check_labels([0, 9, 10, -1], 10, lambda row: f"row {row}")
    with pytest.raises(CompressorError, match="row 0 has the label -1"):
        check_labels([-1], 10, lambda row: f"row {row}")


def test_a_folder_of_split_folders_is_not_read_as_classes(cifar10_test_parquet, tmp_path):
    images = _cifar_images(cifar10_test_parquet, 2)
    _write(tmp_path / "train" / "cat", images[:1], ["a.png"])
    _write(tmp_path / "test" / "cat", images[1:], ["b.png"])
    with pytest.raises(CompressorError, match=r"holds splits \(test, train\), not class folders; pass --split"):
        load_labelled(str(tmp_path))


def test_a_subset_of_a_subset_names_rows_of_the_data_as_given(cifar10_test_parquet):
    data = load_labelled(str(cifar10_test_parquet))
    part = data.subset(50, seed=1).subset(5, seed=2)
    first = part.rows[0]
    assert part.labels(0, 1) == data.labels(first, first + 1)
    assert part.where(0) == f"row {first} of {cifar10_test_parquet} (column img)"


def _jpeg(size: int = 64, seed: int = 0, **save) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def test_every_real_coco_jpeg_is_complete_and_every_cut_one_is_refused_before_decoding():
    from compressor.data.images import check_header

    folder = shared("coco128-val") / "val2017"
    photos = sorted(folder.glob("*.jpg"))
    assert len(photos) == 128
    for photo in photos:
        check_header(photo, str(photo))  # a header check must not refuse a whole photo
    whole = photos[0].read_bytes()
    for keep in (0.3, 0.9, 0.999):
        with pytest.raises(CompressorError, match="is a truncated JPEG"):
            check_header(whole[:int(len(whole) * keep)], "cut.jpg")


def test_a_jpeg_with_a_thumbnail_and_bytes_after_its_end_is_complete_but_cut_it_is_not():
    """An EXIF thumbnail carries its own end marker before the image's scans; bytes appended after the end marker
    (camera trailers) do not make a whole file look cut."""
    from PIL import Image

    from compressor.data.images import check_header

    exif = Image.Exif()
    exif[0x010F] = "camera"
    thumbnail = _jpeg(16, seed=1)
    # a JPEG's APP1 EXIF segment, then the thumbnail inside it: built by hand, PIL does not write thumbnails
    payload = b"Exif\x00\x00" + exif.tobytes() + thumbnail
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    image = _jpeg(128)
    with_thumbnail = image[:2] + app1 + image[2:]
    check_header(with_thumbnail + b"\x00" * 1000 + b"trailer", "whole.jpg")
    with pytest.raises(CompressorError, match="truncated JPEG"):
        check_header(with_thumbnail[:-len(image) // 3], "cut.jpg")
    progressive = _jpeg(128, progressive=True)
    check_header(progressive, "progressive.jpg")
    with pytest.raises(CompressorError, match="truncated JPEG"):
        check_header(progressive[:-200], "cut.jpg")
