"""The ``predictions`` table: one row per stored prediction, from any entry point.

The row's ``metadata`` is built by ``galaxylib.store.records`` alone, so every entry
point stores the same keys with the same types.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MetadataJSON = JSON().with_variant(JSONB(), "postgresql")
# The longest ``filename`` a row holds: PostgreSQL refuses a longer one (SQLite would take it;
# predict.sh keeps to the limit on both, and names a file by its path: classify.path_name).
FILENAME_MAX_LENGTH = 512


class Base(DeclarativeBase):
    pass


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PredictionRecord(Base):
    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    filename: Mapped[str] = mapped_column(String(FILENAME_MAX_LENGTH), nullable=False)
    predicted_class: Mapped[str] = mapped_column(String(64), nullable=False)
    confidence: Mapped[float] = mapped_column(Float, nullable=False)
    # "metadata" is reserved on declarative classes, so the attribute is ``meta``.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", MetadataJSON, nullable=False, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    # The OOD check's verdict (also in metadata), a column so that it can be filtered and indexed;
    # NULL when the model has no check (migration 0002).
    in_distribution: Mapped[bool | None] = mapped_column(Boolean, nullable=True)

    __table_args__ = (
        Index("ix_predictions_created_at", "created_at"),
        Index("ix_predictions_predicted_class", "predicted_class"),
        Index("ix_predictions_confidence", "confidence"),
        Index("ix_predictions_filename", "filename"),
        Index("ix_predictions_in_distribution", "in_distribution"),
    )

    def as_dict(self) -> dict[str, Any]:
        created = self.created_at
        if created is not None and created.tzinfo is None:  # SQLite drops the zone; we store UTC
            created = created.replace(tzinfo=dt.UTC)
        return {
            "id": self.id,
            "filename": self.filename,
            "predicted_class": self.predicted_class,
            "confidence": self.confidence,
            "metadata": self.meta,
            "in_distribution": self.in_distribution,
            "created_at": created.isoformat() if created else None,
        }


# The columns a writer fills, in one order, read off the table itself: the ORM insert, the bulk
# COPY and the held-connection INSERT all take their column list from here.
WRITTEN_COLUMNS: tuple[str, ...] = tuple(c.name for c in PredictionRecord.__table__.columns if not c.primary_key)
# ... and the attribute each is set through (``metadata`` is ``meta`` on the class)
WRITTEN_ATTRIBUTES: tuple[str, ...] = tuple(
    PredictionRecord.__mapper__.get_property_by_column(PredictionRecord.__table__.columns[name]).key
    for name in WRITTEN_COLUMNS
)


def row_values(row: dict[str, Any], now: dt.datetime | None = None) -> dict[str, Any]:
    """A prediction row (``filename``, ``predicted_class``, ``confidence``, ``metadata``, and
    optionally ``in_distribution`` and ``created_at``) as the attribute values a writer stores."""
    return {
        "filename": row["filename"],
        "predicted_class": row["predicted_class"],
        "confidence": float(row["confidence"]),
        "meta": row.get("metadata", {}),
        "in_distribution": row.get("in_distribution"),
        "created_at": row.get("created_at") or now or utcnow(),
    }


@dataclass(frozen=True)
class PredictionFilter:
    """The filters shared by listing and deleting."""

    predicted_class: str | None = None
    min_confidence: float | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    filename: str | None = None
    in_distribution: bool | None = None

    def is_empty(self) -> bool:
        return all(
            v is None
            for v in (
                self.predicted_class,
                self.min_confidence,
                self.since,
                self.until,
                self.filename,
                self.in_distribution,
            )
        )

    def clauses(self) -> list:
        c = PredictionRecord
        out = []
        if self.predicted_class is not None:
            out.append(c.predicted_class == self.predicted_class)
        if self.min_confidence is not None:
            out.append(c.confidence >= self.min_confidence)
        if self.since is not None:
            out.append(c.created_at >= self.since)
        if self.until is not None:
            out.append(c.created_at <= self.until)
        if self.filename is not None:
            out.append(c.filename == self.filename)
        if self.in_distribution is not None:
            out.append(c.in_distribution.is_(self.in_distribution))
        return out
