"""Named, checked edits of upstream source text.

An edit replaces one exactly-matching anchor. Applying it asserts the anchor occurs exactly once
in the source; otherwise it raises :class:`EditDidNotApplyError` naming the edit and the upstream
version, so a change upstream can never leave a half-patched fork behind.
"""
from __future__ import annotations

from dataclasses import dataclass


class EditDidNotApplyError(RuntimeError):
    """An edit's anchor matched zero or several times in the upstream source."""


@dataclass(frozen=True)
class SourceEdit:
    """One reviewable change to an upstream file.

    Attributes:
        name: short identifier shown in errors, ``grpo-custom diff`` and ``doctor``.
        reason: one line saying why the fork needs this change.
        anchor: exact upstream text (whole lines) that must occur exactly once.
        replacement: the text that takes the anchor's place.
    """

    name: str
    reason: str
    anchor: str
    replacement: str

    @classmethod
    def insert_after(cls, name: str, reason: str, anchor: str, text: str) -> "SourceEdit":
        """An edit that keeps ``anchor`` and adds ``text`` right after it."""
        return cls(name, reason, anchor, anchor + text)

    @classmethod
    def insert_before(cls, name: str, reason: str, anchor: str, text: str) -> "SourceEdit":
        """An edit that keeps ``anchor`` and adds ``text`` right before it."""
        return cls(name, reason, anchor, text + anchor)

    def apply(self, source: str, upstream: str) -> str:
        """Return ``source`` with this edit applied; ``upstream`` names the file and version for errors."""
        count = source.count(self.anchor)
        if count != 1:
            first_line = self.anchor.strip().splitlines()[0] if self.anchor.strip() else self.anchor
            raise EditDidNotApplyError(
                f"grpo-custom edit {self.name!r} expected its anchor exactly once in {upstream}, found it "
                f"{count} times (anchor starts with {first_line!r}). The installed upstream differs from the "
                "version this fork was written for."
            )
        return source.replace(self.anchor, self.replacement, 1)


def apply_edits(source: str, edits: tuple[SourceEdit, ...] | list[SourceEdit], upstream: str) -> str:
    """Apply ``edits`` in order; every anchor must match exactly once (see :meth:`SourceEdit.apply`)."""
    names = [edit.name for edit in edits]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Duplicate edit names: {duplicates}")
    for edit in edits:
        source = edit.apply(source, upstream)
    return source
