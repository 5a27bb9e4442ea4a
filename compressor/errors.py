"""The one exception type users see.

Every mistake a user can make (a bad recipe, a missing model, an unsupported architecture, a corrupt file)
ends as a `CompressorError` whose message is a single line saying what is wrong and how to fix it. The CLI
prints that line and exits with status 2; anything else escaping is a bug in the toolkit.
"""


class CompressorError(Exception):
    """A user-facing error: one line, what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class RecipeError(CompressorError):
    """A recipe that cannot be parsed or validated; the message starts with `file:line:` where known."""


class SourceError(CompressorError):
    """A model source that cannot be resolved, downloaded or read."""


class UnsupportedModelError(CompressorError):
    """A model whose architecture no adapter describes."""


class PublishError(CompressorError):
    """A push to the Hub that cannot start or was refused: no token, a bad repo id, no write access, no network."""


#: what a library constructor raises on a config.json with impossible values (an empty image size, zero heads, a
#: string where a number belongs): building a model from a damaged file is refused with one line, whatever the
#: constructor tripped on
BUILD_ERRORS = (ArithmeticError, LookupError, TypeError, ValueError, AttributeError, AssertionError,
                NotImplementedError, RecursionError)
