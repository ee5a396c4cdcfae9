"""Who claims a PV name and who owns it, derived from records and IOC statuses (pure).

Data model v2 stores no name index: every reader (the directory behind the
ChannelFinder API and the pages, ``recsync pv``) derives claims and owners from the
record documents (``P/records/<iocid>/<record>``, with their keys' mod_revisions) and
the IOC documents' statuses (``P/iocs/<iocid>``) with this rule, so all of them agree.

* A *provider* of a name N is a record document whose record is named N or lists N
  among its aliases; it comes with the mod_revision of the record's key. A record is
  rewritten only when it is new or changed, so that revision says when its IOC last
  uploaded it as new or changed.
* The *claimants* of N are the IOCs with at least one provider of N. An IOC's *claim*
  has the highest revision among its providers of N (one, unless an IOC sent a name
  twice).
* The *owner* of N: among the claimants whose IOC is live (`LIVE_STATUSES`), the one
  with the highest claim revision; when none is live, the claimant with the highest
  claim revision. Ties (one etcd transaction wrote both records, which no v2 bridge
  does) go to the IOC id that sorts first, so every reader picks the same owner.
* The *channel record* of N is the owner's record named N when it has one, else its
  record that lists N as an alias with the highest revision (ties: the record name
  that sorts first).
* A name with more than one claimant is a *duplicate*.

So the most recent uploader of a new or changed record owns the name, an unchanged
re-upload (which writes nothing) does not take it from a live owner, and ownership
moves to a live claimant while the owner is not live, without any write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: IOC document statuses whose IOC is live: its claims win over those of IOCs that are
#: not. A status added later for an IOC that is expected back soon (reconnecting)
#: belongs here too.
LIVE_STATUSES: frozenset[str] = frozenset({"uploading", "active"})


def is_live(status: object) -> bool:
    """Whether an IOC document's ``status`` field makes its IOC live."""
    return isinstance(status, str) and status in LIVE_STATUSES


def record_names(record: str, aliases: Iterable[str]) -> list[str]:
    """The names a record provides: its own, then each alias once (an alias equal to
    the record's name, or repeated, adds nothing)."""
    names = [record]
    seen = {record}
    for alias in aliases:
        if alias not in seen:
            seen.add(alias)
            names.append(alias)
    return names


@dataclass(frozen=True, slots=True)
class Provider:
    """IOC `iocid`'s record `record` provides some name; its key's mod_revision."""

    iocid: str
    record: str
    revision: int


@dataclass(frozen=True, slots=True)
class Claim:
    """IOC `iocid` claims some name; `revision` is its claim's, `live` its IOC's."""

    iocid: str
    revision: int
    live: bool


def preference(claim: Claim) -> tuple[bool, int, str]:
    """The sort key of the rule: the smallest key owns the name."""
    return (not claim.live, -claim.revision, claim.iocid)


def ranked(claims: Iterable[Claim]) -> list[Claim]:
    """`claims` in the rule's order: the owner first, then the others as the rule
    ranks them (live ones first, then by revision, newest first)."""
    return sorted(claims, key=preference)


def owner(claims: Iterable[Claim]) -> Claim | None:
    """The owner among `claims` (at most one claim per IOC); None when there is none."""
    return min(claims, key=preference, default=None)


def claims(providers: Iterable[Provider], live: Callable[[str], bool]) -> list[Claim]:
    """One claim per IOC among `providers` (all of one name), with the highest revision
    of its providers; `live` says whether an IOC is live. In first-seen IOC order."""
    best: dict[str, int] = {}
    for provider in providers:
        known = best.get(provider.iocid)
        if known is None or provider.revision > known:
            best[provider.iocid] = provider.revision
    return [Claim(iocid, revision, live(iocid)) for iocid, revision in best.items()]


def channel_record(name: str, providers: Iterable[Provider]) -> Provider | None:
    """Which of one IOC's `providers` of `name` its channel is (module docstring)."""
    return min(providers, key=lambda p: (p.record != name, -p.revision, p.record), default=None)


@dataclass(frozen=True, slots=True)
class Ownership:
    """A name resolved: its owner, the owner's channel record, every claimant ranked
    (the owner first)."""

    name: str
    owner: Claim
    record: Provider
    claimants: tuple[Claim, ...]

    @property
    def duplicate(self) -> bool:
        return len(self.claimants) > 1


def resolve(
    name: str, providers: Sequence[Provider], live: Callable[[str], bool]
) -> Ownership | None:
    """Everything the rule says about `name` given all its `providers`; None when it has
    none."""
    order = ranked(claims(providers, live))
    if not order:
        return None
    first = order[0]
    record = channel_record(name, (p for p in providers if p.iocid == first.iocid))
    assert record is not None  # the owner has a provider, by construction
    return Ownership(name, first, record, tuple(order))
