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
    Migration(
        2,
        "traffic",
        """
        CREATE TABLE traffic (
            request_id VARCHAR PRIMARY KEY,
            client_request_id VARCHAR,
            slot VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL,
            request_json JSON NOT NULL,
            champion_version VARCHAR,
            status INTEGER,
            output VARCHAR,
            prompt_tokens BIGINT,
            completion_tokens BIGINT,
            usage_json JSON,
            latency_ms DOUBLE,
            stream BOOLEAN NOT NULL DEFAULT false,
            partial BOOLEAN NOT NULL DEFAULT false,
            error VARCHAR,
            source VARCHAR NOT NULL,
            ingested_at TIMESTAMP NOT NULL
        );
        CREATE INDEX traffic_client_request_id ON traffic (client_request_id);
        CREATE TABLE outcomes (
            outcome_id VARCHAR PRIMARY KEY,
            request_key VARCHAR NOT NULL,
            request_id VARCHAR,
            kind VARCHAR NOT NULL,
            value_json JSON NOT NULL,
            received_at TIMESTAMP NOT NULL
        );
        CREATE TABLE shadow_results (
            request_id VARCHAR NOT NULL,
            version_id VARCHAR NOT NULL,
            role VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            output VARCHAR,
            prompt_tokens BIGINT,
            completion_tokens BIGINT,
            usage_json JSON,
            cost_usd DOUBLE,
            latency_ms DOUBLE,
            error VARCHAR,
            attempts INTEGER NOT NULL DEFAULT 0,
            finished_at TIMESTAMP NOT NULL,
            PRIMARY KEY (request_id, version_id)
        );
        CREATE TABLE spool_segments (
            segment VARCHAR PRIMARY KEY,
            records BIGINT NOT NULL,
            status VARCHAR NOT NULL,
            reason VARCHAR,
            ingested_at TIMESTAMP NOT NULL
        );
        CREATE TABLE pauses (
            scope VARCHAR NOT NULL,
            target VARCHAR NOT NULL,
            actor VARCHAR NOT NULL,
            reason VARCHAR,
            since TIMESTAMP NOT NULL,
            PRIMARY KEY (scope, target)
        );
        """,
    ),
)

LATEST = MIGRATIONS[-1].version
