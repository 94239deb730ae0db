"""The database schema, as numbered forward-only migrations.

A migration is never edited once released: a change to the schema is a new entry at the
end. `schema_migrations` records which ones a database has, so an older shadowzoo can
refuse a database written by a newer one instead of misreading it. Timestamps are stored
as UTC `TIMESTAMP` values.
"""

from __future__ import annotations

from typing import NamedTuple


class Migration(NamedTuple):
    """One step of the schema: its number, a short name, and its SQL statements."""

    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "registry",
        """
        CREATE TABLE slots (
            slot VARCHAR PRIMARY KEY,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE skills (
            sha VARCHAR PRIMARY KEY,
            content VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE variants (
            version_id VARCHAR PRIMARY KEY,
            slot VARCHAR NOT NULL,
            label VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            config_json JSON NOT NULL,
            skill_sha VARCHAR,
            fingerprint VARCHAR NOT NULL,
            parent VARCHAR,
            status VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            spec_path VARCHAR,
            meta_json JSON,
            created_at TIMESTAMP NOT NULL,
            UNIQUE (slot, fingerprint)
        );
        CREATE TABLE aliases (
            slot VARCHAR NOT NULL,
            alias VARCHAR NOT NULL,
            version_id VARCHAR NOT NULL,
            since TIMESTAMP NOT NULL,
            PRIMARY KEY (slot, alias)
        );
        CREATE SEQUENCE promotions_id START 1;
        CREATE TABLE promotions (
            id BIGINT PRIMARY KEY DEFAULT nextval('promotions_id'),
            slot VARCHAR NOT NULL,
            from_version VARCHAR,
            to_version VARCHAR,
            action VARCHAR NOT NULL,
            actor VARCHAR NOT NULL,
            reason VARCHAR,
            evidence_json JSON,
            moved_at TIMESTAMP NOT NULL
        );
        """,
    ),
)

LATEST = MIGRATIONS[-1].version
