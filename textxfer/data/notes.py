"""The notes channel of the data layer: facts about the user's data that are not errors (a sniffed delimiter, a
Latin-1 fallback, skipped rows, carved splits). Every reader and split step reports through `note`, so the same
message is both logged and kept for `data check` and the run record."""

from __future__ import annotations

import logging

log = logging.getLogger("textxfer")


def note(notes: list[str], message: str) -> None:
    """A fact the user should see: kept in `Splits.notes` (printed by `data check`, logged by `train`)."""
    notes.append(message)
    log.warning(message)
