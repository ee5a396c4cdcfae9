"""Upload rules: what a (re-)upload changes, and when the unchanged-run fast path holds.

A session's upload is compared with what its IOC has stored:

* a record is changed when the fingerprint of its new document differs from the
  stored one's; only new and changed records are written;
* its names (record name and aliases) are *claimed* in the name index
  (bridge/rules/names.py): with force when the record is new or changed, *fresh*
  (the entry is created blind, guarded by "absent") when the IOC did not provide the
  name before;
* aliases a stored record no longer carries are *dropped*, and so are the names of
  stored records the upload did not send again (*stale*, deleted at the end); both
  are unclaimed unless another record of this upload claims the name.

The fast path: a complete upload leaves one digest per run of records in the IOC
document (``record_digests``). The next upload of the IOC may use them
(`stored_upload`) when they are present; runs whose frames match arrive as kept
runs, neither read nor written, their index entries left alone unless the IOC has a
shared mark (then confirmed). The first changed run, a DelRecord, or a different run
or record count at the end leaves the fast path: the stored records are loaded then.
The digests are dropped from the document when an upload begins, so a partial
upload is never taken for a complete one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from bridge import documents as docs
from bridge.documents import parse_ioc, record_names
from bridge.etcd.ops import Entry, Write
from bridge.model import KeptRun, Record
from bridge.rules.names import Claim

#: Largest record document stored as sent. Bigger ones get their longest info values
#: cut (see `fit_record`), so one huge info tag cannot wedge an IOC's upload forever.
MAX_RECORD_BYTES = 1 << 20
#: Appended to an info value that was cut to fit `MAX_RECORD_BYTES`.
TRUNCATED_MARK = "...[truncated by recsync-bridge]"

#: (fingerprint of the stored value, alias names) of one record stored before the upload.
Stored = tuple[bytes, tuple[str, ...]]


def fingerprint(value: bytes) -> bytes:
    """8 bytes that tell an unchanged stored record from a changed one."""
    return hashlib.blake2b(value, digest_size=8).digest()


def name_hash(name: str) -> int:
    """64 bits standing for a name in a session's set of claimed names.

    Python's own string hash: consistent within the process, which is all a
    session needs, and far cheaper than a cryptographic one.
    """
    return hash(name)


def stored(value: bytes) -> Stored:
    """What a session remembers of one record stored before its upload."""
    return fingerprint(value), tuple(record_names(value)[1:])


def fit_record(record: Record, iocid: str, limit: int = MAX_RECORD_BYTES) -> Record | None:
    """`record` with info values cut until its document fits `limit` bytes.

    Every info value longer than a cap is cut to the cap plus `TRUNCATED_MARK`; the cap
    halves until the document fits. Deterministic, so an unchanged re-upload stays
    unchanged. None if even tiny infos leave it too big (huge aliases or DESC).
    """
    longest = max((len(v) for v in record.infos.values()), default=0)
    cap = longest
    while True:
        infos = {
            key: v if len(v) <= cap else v[:cap] + TRUNCATED_MARK
            for key, v in record.infos.items()
        }
        trial = replace(record, infos=infos)
        if len(docs.record_value(trial, iocid)) <= limit:
            return trial
        if cap == 0:
            return None
        cap //= 2


# -- records that arrive -----------------------------------------------------------------


@dataclass(slots=True)
class RecordsPlan:
    """What one batch of arriving records changes.

    Apply in this order: `puts` (records before claims, so an entry never points at
    a record not yet stored), then claim `claims`, confirm `unchanged` (unless the
    IOC's index is trusted, see `StoredUpload`), then unclaim those of `dropped` that
    `unclaimable` lets go once `claimed` joined the session's claimed names.
    """

    puts: list[Write] = field(default_factory=list)
    #: Names of new or changed records (force), or new to the IOC (fresh).
    claims: list[Claim] = field(default_factory=list)
    #: Names of unchanged records.
    unchanged: list[Claim] = field(default_factory=list)
    #: Aliases that re-sent records no longer carry.
    dropped: list[str] = field(default_factory=list)
    #: Stored records sent again: off the session's stale list.
    seen: list[str] = field(default_factory=list)
    #: Every name the batch claims, changed or not.
    claimed: list[str] = field(default_factory=list)


def plan_records(
    keys: docs.Keys,
    iocid: str,
    items: Iterable[tuple[Record, bytes]],
    existing: Mapping[str, Stored],
) -> RecordsPlan:
    """Compare arriving records (each with its encoded document) with what is stored.

    `existing`: the session's records stored before the upload and not yet seen in
    it. A name sent twice in one upload is compared once: the second is new.
    """
    plan = RecordsPlan()
    prefix = keys.records_prefix(iocid)
    seen: set[str] = set()
    for record, value in items:
        old = None if record.name in seen else existing.get(record.name)
        if old is not None:
            seen.add(record.name)
            plan.seen.append(record.name)
        changed = old is None or old[0] != fingerprint(value)
        if changed:
            plan.puts.append(((prefix + docs.encode_component(record.name)).encode(), value))
        if old is not None:
            plan.dropped.extend(a for a in old[1] if a not in record.aliases)
        for name, is_alias in docs.pv_names(record):
            plan.claimed.append(name)
            # A name is new to the index unless the IOC stored it before (as this
            # record's name or alias): then it is created without reading first.
            fresh = old is None or (is_alias and name not in old[1])
            claim = Claim(name, record.name, record.rtype, is_alias, changed, fresh)
            (plan.claims if changed or fresh else plan.unchanged).append(claim)
    return plan


def unclaimable(names: Iterable[str], claimed: Collection[int]) -> list[str]:
    """The names to unclaim: those no record of this upload claimed (`name_hash`es)."""
    return [n for n in names if name_hash(n) not in claimed]


def stale_names(stale: Mapping[str, Stored]) -> list[str]:
    """Every name (record name, then aliases) of stored records the upload did not send."""
    return [x for n, (_, aliases) in stale.items() for x in (n, *aliases)]


@dataclass(slots=True)
class Withdrawal:
    """What DelRecord of records sent earlier in the upload changes.

    Delete `deletes`, unclaim `names` unconditionally, take `names` off the
    session's claimed names and `removed` off its stale list; the IOC's counts drop
    by `records` and `aliases`.
    """

    deletes: list[Write]
    names: list[str]
    records: int
    aliases: int


def plan_withdrawal(
    keys: docs.Keys, iocid: str, removed: Sequence[str], found: Mapping[str, Entry]
) -> Withdrawal:
    """DelRecord: `found` holds the removed records as stored (keyed by key)."""
    deletes: list[Write] = []
    names: list[str] = []
    records = aliases = 0
    for name in removed:
        key = keys.record(iocid, name)
        raw = found.get(key)
        held = [name, *record_names(raw.value)[1:]] if raw is not None else [name]
        if raw is not None:
            records += 1
            aliases += len(held) - 1
        names.extend(held)
        deletes.append((key.encode(), None))
    return Withdrawal(deletes, names, records, aliases)


# -- the fast path -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredUpload:
    """The IOC's last complete upload as its document describes it.

    `index_trusted`: the IOC has no shared mark, so the index entries of its
    unchanged records are exactly as it left them (bridge/rules/names.py).
    """

    digests: tuple[str, ...]
    records: int
    index_trusted: bool


def stored_upload(ioc_value: bytes | None, shared_mark: bool) -> StoredUpload | None:
    """The stored upload runs may be kept against, or None: load the stored records.

    None when the IOC document is absent, unreadable, or has no digests (its last
    upload did not complete, withdrew records, or was stored without runs).
    """
    doc = parse_ioc(ioc_value) if ioc_value is not None else None
    if doc is None or doc.record_digests is None or doc.records is None or doc.records < 0:
        return None
    return StoredUpload(tuple(doc.record_digests), doc.records, not shared_mark)


def run_matches(stored: StoredUpload, run: KeptRun) -> bool:
    """A run that came as unchanged really is the stored one at its index."""
    return run.index < len(stored.digests) and stored.digests[run.index] == run.digest


def kept_claims(run: KeptRun) -> list[Claim]:
    """The claims a kept run stands for (unchanged: confirmed only if the index is not
    trusted)."""
    names, rtypes = run.names, run.rtypes
    return [
        *(Claim(n, n, t, False, False) for n, t in zip(names, rtypes, strict=True)),
        *(
            Claim(a, names[i], rtypes[i], True, False)
            for a, i in zip(run.aliases, run.alias_of, strict=True)
        ),
    ]


def unchanged_at_end(stored: StoredUpload, runs: int, records: int) -> bool:
    """An upload that kept every run so far ends unchanged: same run and record count.

    Otherwise it leaves the fast path at its end (loads the stored records and
    deletes those it did not send).
    """
    return runs == len(stored.digests) and records == stored.records


def digests_to_store(withdrew: bool, digests: Sequence[str], records: int) -> list[str] | None:
    """The ``record_digests`` of a finished upload: None unless they describe what is stored.

    None after a DelRecord (the frames then hold records that are not stored), or
    when records came without digests (the server did not cut runs).
    """
    complete = not withdrew and (bool(digests) or not records)
    return list(digests) if complete else None
