"""Publish a compressed model directory to the Hugging Face Hub.

`push_to_hub` creates the repository if needed (`create_repo`), the branch if one is named (`create_branch`), and
uploads the directory in one commit (`upload_folder`). The model card's "how to load" line is rewritten to name the
repository. The token is taken the usual ways (`token=`, `HF_TOKEN`, `hf auth login`) and never printed: errors
name the repository and the HTTP status, never the request headers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from compressor.errors import PublishError
from compressor.loaders.config_file import read_config
from compressor.loaders.hub_files import first_line
from compressor.model_card import card_for_hub
from compressor.output_guard import COMPRESSION_KEY

#: the files a directory written by `compress` must hold to be published
REQUIRED_FILES = ("config.json", "model.safetensors", "recipe.yaml", "README.md")


def check_repo_id(repo_id: str) -> str:
    """`ORG/NAME` as the Hub accepts it, or a PublishError saying what is wrong."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PublishError(f"--repo-id {repo_id!r} is not a valid Hub repository id ({first_line(error)}); "
                           "expected ORG/NAME, e.g. my-org/detr-resnet-50-act") from None
    if repo_id.count("/") != 1:
        raise PublishError(f"--repo-id {repo_id!r}: give the namespace too, as ORG/NAME (your user name or an "
                           "organisation)")
    return repo_id


def resolve_token(token: str | None = None) -> str:
    """The token to write with: `token`, else HF_TOKEN or the one saved by `hf auth login`."""
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` with a token that has write "
                           "access")
    return found


def check_publishable(directory: str | os.PathLike) -> Path:
    """A directory written by `compress`, complete; else a PublishError before anything is sent."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PublishError(f"{directory} is not a directory; push takes a directory written by `cli.py compress`")
    config = read_config(directory)
    if COMPRESSION_KEY not in config:
        raise PublishError(f"{directory} was not written by `cli.py compress` (its config.json has no "
                           f"{COMPRESSION_KEY}); compress the model first, or push it with huggingface_hub itself")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise PublishError(f"{directory} is incomplete (no {', '.join(missing)}); re-run compress")
    return directory


def _explain(error: Exception, repo_id: str) -> PublishError:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return PublishError(f"the Hub refused to write {repo_id} (HTTP {status}): check that your token has write "
                            "access to that namespace (`hf auth whoami`)")
    if isinstance(error, HfHubHTTPError):
        return PublishError(f"the Hub refused the push to {repo_id} (HTTP {status}): {first_line(error)}")
    if isinstance(error, ValueError):  # e.g. the Hub's verdict on the card's metadata
        return PublishError(f"the Hub refused the push to {repo_id}: {error}")
    return PublishError(f"cannot reach the Hub to push {repo_id} ({type(error).__name__}); check the network and "
                        "HF_ENDPOINT")


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)  # no second copy of the weights where the file system allows it
    except OSError:
        shutil.copy2(source, destination)


def _staged_copy(directory: Path, repo_id: str, workdir: Path) -> Path:
    """The files to upload: the directory as is, with the card's load line naming the repository."""
    staged = workdir / "upload"
    shutil.copytree(directory, staged, ignore=shutil.ignore_patterns(".*"), copy_function=_link_or_copy)
    card = staged / "README.md"
    text = card_for_hub(card.read_text(encoding="utf-8"), repo_id)
    card.unlink()  # it may be a hard link to the original card, which must stay as it is
    card.write_text(text, encoding="utf-8")
    return staged


def push_to_hub(directory: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, token: str | None = None) -> str:
    """Upload `directory` (written by `compress`) to `repo_id`; returns the URL of the commit."""
    from huggingface_hub import HfApi

    directory = check_publishable(directory)
    check_repo_id(repo_id)
    api = HfApi(token=resolve_token(token))
    message = commit_message or f"Upload {directory.name} compressed with compressor"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="compressor-push-") as workdir:
            commit = api.upload_folder(folder_path=_staged_copy(directory, repo_id, Path(workdir)), repo_id=repo_id,
                                       revision=revision, commit_message=message)
    except Exception as error:  # huggingface_hub raises HTTP, network and validation errors of many types
        raise _explain(error, repo_id) from None
    return str(getattr(commit, "commit_url", None) or commit)
