"""Strict dataclass <-> JSON records for the files one stage hands the next.

manifest.json (export -> bench) and results.json (bench -> report/pipeline)
used to be dicts read with ``.get()`` fallbacks, so a renamed key silently
read as None. A :class:`Record` refuses a missing required key and an unknown
key with one line naming the file, the key and the command that rewrites it.

Field conventions (``dataclasses.field`` metadata, built by :func:`opt` / :func:`req`):
``json``: the JSON key when it differs from the attribute name;
``omit_none``: the key is left out of the JSON when the value is None, so
records keep the exact keys the stage wrote (a success has no ``error`` key).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .errors import BadInput


def req(json: str | None = None) -> Any:
    """A required key (no default): its absence is BadInput."""
    return dataclasses.field(metadata={"json": json} if json else {})


def opt(default: Any = None, *, omit_none: bool = True, json: str | None = None, factory: Any = None) -> Any:
    """An optional key; left out of the JSON when None unless ``omit_none=False``."""
    meta = {"omit_none": omit_none, **({"json": json} if json else {})}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("json", f.name)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


class Record:
    """Base of the strict records (subclasses are frozen dataclasses).

    ``NESTED``: attribute -> Record class, for a nested object or a list of them.
    ``EXTRA``: attribute (a dict) collecting keys listed in ``EXTRA_KEYS``
    (or any unknown key when ``EXTRA_KEYS`` is None); they are written back flat,
    as the stage wrote them. ``FIX``: what the user runs to rewrite the file.
    """

    NESTED: ClassVar[dict[str, type["Record"]]] = {}
    EXTRA: ClassVar[str | None] = None
    EXTRA_KEYS: ClassVar[frozenset[str] | None] = frozenset()
    FIX: ClassVar[str] = "re-create the file with pocketsize"

    @classmethod
    def _fields(cls) -> dict[str, dataclasses.Field]:
        return {_key(f): f for f in dataclasses.fields(cls) if f.name != cls.EXTRA}  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, d: Any, where: str, fix: str | None = None) -> Any:
        """The record for ``d`` (parsed JSON); ``where`` names the file and position for errors."""
        fix = fix or cls.FIX
        if not isinstance(d, dict):
            raise BadInput(f"{where} is {type(d).__name__}, expected an object; {fix}")
        known = cls._fields()
        missing = [k for k, f in known.items() if _required(f) and k not in d]
        if missing:
            raise BadInput(f"{where} lacks the required field '{missing[0]}'; {fix}")
        unknown = [k for k in d if k not in known]
        extra_ok = cls.EXTRA is not None and (cls.EXTRA_KEYS is None or set(unknown) <= cls.EXTRA_KEYS)
        if unknown and not extra_ok:
            bad = [k for k in unknown if cls.EXTRA_KEYS is None or k not in cls.EXTRA_KEYS] if cls.EXTRA else unknown
            raise BadInput(f"{where} has an unknown field '{bad[0]}'; {fix}")
        kw = {f.name: cls._convert(f.name, d[k], f"{where}.{k}", fix) for k, f in known.items() if k in d}
        if cls.EXTRA is not None:
            kw[cls.EXTRA] = {k: d[k] for k in unknown}
        rec = cls(**kw)
        rec.check(where, fix)
        return rec

    @classmethod
    def _convert(cls, name: str, value: Any, where: str, fix: str) -> Any:
        sub = cls.NESTED.get(name)
        if sub is None or value is None:
            return value
        if isinstance(value, list):
            return [sub.from_json(v, f"{where}[{i}]", fix) for i, v in enumerate(value)]
        return sub.from_json(value, where, fix)

    def check(self, where: str, fix: str) -> None:
        """Per-record value checks beyond presence (override); raise BadInput."""

    # A read-only dict view by JSON key, for templates and callers written
    # against the old dicts (report.py); new code reads the attributes.
    def get(self, key: str, default: Any = None) -> Any:
        f = self._fields().get(key)
        if f is not None:
            return getattr(self, f.name)
        return (getattr(self, self.EXTRA) or {}).get(key, default) if self.EXTRA else default

    def __getitem__(self, key: str) -> Any:
        f = self._fields().get(key)
        if f is not None:
            return getattr(self, f.name)
        extra = (getattr(self, self.EXTRA) or {}) if self.EXTRA else {}
        return extra[key]

    def to_json(self) -> dict[str, Any]:
        """The JSON object, keys in field order, extras flat at the end."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name == self.EXTRA:
                continue
            v = getattr(self, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue
            out[_key(f)] = _dump(v)
        if self.EXTRA is not None:
            out.update(getattr(self, self.EXTRA) or {})
        return out


def _dump(v: Any) -> Any:
    if isinstance(v, Record):
        return v.to_json()
    if isinstance(v, list):
        return [_dump(x) for x in v]
    return v


def check_version(version: Any, supported: int, where: str, fix: str) -> None:
    """An int no newer than this pocketsize understands."""
    if not isinstance(version, int) or isinstance(version, bool):
        raise BadInput(f"{where}.format_version is {version!r}, expected an integer; {fix}")
    if version > supported:
        raise BadInput(f"{where} has format_version {version}, newer than this pocketsize reads ({supported}); "
                       "upgrade pocketsize")
