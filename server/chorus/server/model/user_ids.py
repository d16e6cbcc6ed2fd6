"""What makes two user ids the same person: one rule for the roster, `Report` and OTLP.

HR exports, identity providers and the AI tools spell the same work email differently
(`Dev1@Example.com`, `dev1@example.com `). A user id is compared trimmed, and an id that is an
email (it holds an `@`) case-folded: mail systems treat addresses case-insensitively in
practice, while other ids (employee numbers, usernames) keep their case. The roster stores ids
in this form and refuses two rows that differ only in case or spaces; ingest normalises every
id before it is looked up or pseudonymised, so the pseudonym is the same whatever the spelling.
"""

from __future__ import annotations


def normalise(user: str) -> str:
    """The canonical form of a user id: trimmed; case-folded when it is an email."""
    user = user.strip()
    return user.casefold() if "@" in user else user
