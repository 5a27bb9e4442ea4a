"""compress(progress=False) from Python is silent, library progress bars included, and leaves their settings."""

from __future__ import annotations

import datasets
import pytest
from transformers.utils import logging as transformers_logging

import compressor
from compressor.library_progress import library_progress_bars


@pytest.fixture
def library_bars_on():
    """The libraries' defaults (bars on), whatever an in-process CLI test set before; restored afterwards."""
    before = transformers_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()
    datasets.enable_progress_bars()
    yield
    if not before[0]:
        transformers_logging.disable_progress_bar()
    if not before[1]:
        datasets.disable_progress_bars()


def test_silenced_calls_restore_the_libraries_settings(library_bars_on):
    with library_progress_bars(False):
        assert not transformers_logging.is_progress_bar_enabled()
        assert not datasets.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()


def test_compress_without_progress_prints_nothing(hf_vit_dir, capfd, library_bars_on):
    compressor.compress(hf_vit_dir, "act", progress=False, latency_runs=1)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_load_without_progress_prints_no_loading_bar(compressed_vit_dir, hf_vit_dir, capfd, library_bars_on):
    compressor.load(hf_vit_dir)
    assert "Loading weights" in capfd.readouterr().err  # transformers draws its bar by default ...
    compressor.load(compressed_vit_dir, progress=False)
    compressor.load(hf_vit_dir, progress=False)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # ... and not when the call asked for silence
    assert transformers_logging.is_progress_bar_enabled()
