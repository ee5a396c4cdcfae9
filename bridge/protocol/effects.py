"""What a session asks its server to do: the session/server contract.

A `bridge.protocol.session.Session` never does I/O; every method that takes input
returns a list of these effects, and the server (`bridge.server.connection`) carries
them out in order:

* `Send`: write the bytes to the peer in one write (not after a `Close`).
* `Commit`: hand the transaction to the processors after every earlier one of the
  same session has completed; a failed commit ends the session.
* `Close`: drop the connection and log ``reason`` once, naming the peer. Count it
  under ``limit``, the configuration key of the limit it enforces (``maxRecords``,
  ``uploadTimeout``, ...), or as a protocol error when ``limit`` is None. A session
  that closes emits no other effect about it: the server never pairs effects.
* `Notice`: log ``text`` once, naming the peer; count it under ``limit`` if it names
  one (something was skipped because of that limit). The session already gives
  each kind of notice at most once.

The same convention holds for the decoder: a `bridge.protocol.wire.Skipped` frame
carries the limit that made it skip the frame (``maxBodyLength``) or None, and the
session's notice passes it on; a `bridge.protocol.wire.FramingError` (bad magic) is
always a broken protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.model import Transaction


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes (exactly one frame) to the peer in one write."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Commit:
    """Hand this transaction to the processors, after every earlier one of the session.

    ``size`` is an upper-bound estimate of the bytes the transaction holds
    (`bridge.protocol.session.Session.bytes_held`), counted against the server's
    memory budget until the commit completes.
    """

    transaction: Transaction
    size: int = 0


@dataclass(frozen=True, slots=True)
class Close:
    """Drop the connection; ``reason`` is logged once with the peer.

    ``limit`` names the limit that ends the session (its configuration key, e.g.
    ``"maxRecords"``), or is None when the peer broke the protocol.
    """

    reason: str
    limit: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth one log line; ``limit`` names the limit hit, if any."""

    text: str
    limit: str | None = None


Effect = Send | Commit | Close | Notice
