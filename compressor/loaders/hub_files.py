"""Files of a Hugging Face Hub repository, fetched into the local cache, with one set of one-line errors.

Every Hub read of the toolkit goes through `hub_file` (one file) or `hub_snapshot` (a whole repository), so an
unknown repository, a gated or private one, a missing revision or file, a network failure and offline mode read the
same wherever they happen. When nothing answers at the Hub's address, the read uses the local cache only instead of
waiting half a minute for retries (`hub_reachability`). Offline mode is huggingface_hub's own setting (`is_offline_mode()`): the hint names
HF_HUB_OFFLINE exactly when the Hub library itself refused to go online, whatever spelling of "true" set it.
"""

from __future__ import annotations

from pathlib import Path

from compressor.errors import SourceError
from compressor.loaders.hub_reachability import cache_only_when_hub_unreachable


def hub_offline() -> bool:
    """True when huggingface_hub runs offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, as the Hub library parsed
    them), read at call time so that what the Hub library obeys and what the messages say cannot differ."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode()


def offline_hint() -> str:
    """What to add to a failed Hub read: why it may have failed offline, else nothing."""
    if hub_offline():
        return ("HF_HUB_OFFLINE is set, so only the local cache is searched: unset it to download, or pass a local "
                "directory")
    return ""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type when it has none): what a one-line error may quote."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unreachable(repo_id: str, what: str) -> SourceError:
    return SourceError(f"{repo_id} is not a local directory, and {what} cannot be fetched from the Hugging Face "
                       f"Hub nor found in the local cache; "
                       f"{offline_hint() or 'check the network connection (and HF_ENDPOINT if you use a mirror)'}")


def _refusal(error: Exception, repo_id: str, revision: str | None) -> SourceError | None:
    """The one-line error when the Hub refuses the repository itself (unknown, gated, no such revision, not an id),
    which no other file of it can cure; None for a missing or unreachable file (the caller decides)."""
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(error, GatedRepoError):
        return SourceError(f"{repo_id} is gated on the Hugging Face Hub: accept its terms on the model page and "
                           f"pass a token (--token or HF_TOKEN)")
    if isinstance(error, RepositoryNotFoundError):
        return SourceError(f"{repo_id} is not a local directory, and the Hugging Face Hub has no model {repo_id!r} "
                           f"(or it is private: pass a token); give a Hub id like facebook/detr-resnet-50 or an "
                           f"existing local directory")
    if isinstance(error, RevisionNotFoundError):
        return SourceError(f"{repo_id} has no revision {revision!r}; give an existing branch, tag or commit")
    if isinstance(error, HFValidationError):
        return SourceError(f"{repo_id!r} is neither an existing local directory nor a valid Hub id (org/name)")
    return None


def hub_file(repo_id: str, filename: str, *, revision: str | None = None, token: str | bool | None = None,
             required: bool = True, kind: str = "model") -> Path | None:
    """`filename` of Hub repository `repo_id` in the local cache (downloaded when online).

    A repository that lacks the file, or a file that cannot be reached, gives None when not `required`; an unknown,
    gated or malformed repository or revision is always an error. `kind` names what the repository should be in
    the message for a missing required file ("model", "timm model", ...).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        with cache_only_when_hub_unreachable():
            return Path(hf_hub_download(repo_id, filename, revision=revision, token=token))
    except Exception as error:  # huggingface_hub raises many types: offline, 404, gated, auth, network
        explained = _refusal(error, repo_id, revision)
        if explained is not None:
            raise explained from None
        if not required:
            return None
        where = repo_id + (f"@{revision}" if revision else "")
        if isinstance(error, LocalEntryNotFoundError):  # offline, or the network is down, and not in the cache
            raise _unreachable(repo_id, f"its {filename}") from None
        if isinstance(error, EntryNotFoundError):
            raise SourceError(f"{where} has no {filename}; it is not a {kind} repository this toolkit reads"
                              ) from None
        raise SourceError(f"cannot fetch {filename} of {where} from the Hugging Face Hub: {first_line(error)}"
                          ) from None


def hub_snapshot(repo_id: str, *, revision: str | None = None, token: str | bool | None = None) -> Path:
    """Every file of Hub repository `repo_id` in the local cache (downloaded when online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        with cache_only_when_hub_unreachable():
            return Path(snapshot_download(repo_id, revision=revision, token=token))
    except Exception as error:  # as in hub_file
        explained = _refusal(error, repo_id, revision)
        if explained is not None:
            raise explained from None
        if isinstance(error, LocalEntryNotFoundError):
            raise _unreachable(repo_id, "its files") from None
        where = repo_id + (f"@{revision}" if revision else "")
        raise SourceError(f"cannot download {where} from the Hugging Face Hub: {first_line(error)}") from None
