"""What `shards verify` may print of a name it found in a set: the format's own names as they
are, anything else by where it is and how long it is, never its text.

A tampered or hostile set can carry patient text where the format has names: a tar member name
(``<SURNAME>^<GIVEN>_<MRN>.mp4``), the key part of one, an extension, a field name of a sample's
``.json``, or a ``.json`` ``key`` value. verify's output is a log channel (terminals, CI logs,
tickets), so such a name is shown as its position (the shard file, the member's number in its
tar, the field's number in its object) and its length. No digest of it is shown either: a short
hash of a short name can be confirmed by guessing (is patient X in this set?), and a keyed one
would differ between processes, so a cluster run's problems would not equal a local run's.
"""

from __future__ import annotations

from echocmr.shards.format import EXTENSIONS, validate_key


def is_sample_key(text: object) -> bool:
    """True if ``text`` is a sample key of the format (``<site>-<16 hex>``)."""
    try:
        validate_key(text)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def hidden(text: object, what: str = "a name") -> str:
    """``text`` described without its text: ``(a name of 18 characters, not shown)``."""
    size = len(text) if isinstance(text, str | bytes) else None
    length = f" of {size} character{'s' if size != 1 else ''}" if size is not None else ""
    return f"({what}{length} that is not the format's, not shown)"


def shown_key(key: object) -> str:
    """A sample key as it is when it is one, else `hidden`."""
    return key if is_sample_key(key) else hidden(key, "a key")  # type: ignore[return-value]


def is_member_name(name: str) -> bool:
    """True if ``name`` is a member name the format writes: ``<sample key>.<extension>``."""
    key, dot, ext = name.partition(".")
    return bool(dot) and ext in EXTENSIONS and is_sample_key(key)


def member(position: int, name: str) -> str:
    """A tar member for a message: ``member site_a-….json`` when its name is the format's,
    ``member 3 (a name of 22 characters that is not the format's, not shown)`` otherwise
    (``position`` counts the tar's members from 1)."""
    return f"member {name}" if is_member_name(name) else f"member {position} {hidden(name)}"


def shown_ext(ext: str) -> str:
    """A member's extension: ``.json`` for the format's own, else `hidden`."""
    return f".{ext}" if ext in EXTENSIONS else hidden(ext, "an extension")
