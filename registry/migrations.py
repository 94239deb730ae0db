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


# Migration 5 reads the usage's token details into columns of both answer tables.
_TOKEN_DETAILS = """
        ALTER TABLE {table} ADD COLUMN cached_tokens BIGINT;
        ALTER TABLE {table} ADD COLUMN reasoning_tokens BIGINT;
        UPDATE {table} SET
            cached_tokens = TRY_CAST(json_extract_string(usage_json, '$.prompt_tokens_details.cached_tokens') AS BIGINT),
            reasoning_tokens = TRY_CAST(json_extract_string(usage_json, '$.completion_tokens_details.reasoning_tokens') AS BIGINT)
            WHERE usage_json IS NOT NULL;
"""

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
    Migration(
        3,
        "scoring",
        """
        CREATE SEQUENCE change_seq START 1;
        ALTER TABLE traffic ADD COLUMN seq BIGINT DEFAULT nextval('change_seq');
        ALTER TABLE outcomes ADD COLUMN seq BIGINT DEFAULT nextval('change_seq');
        ALTER TABLE shadow_results ADD COLUMN seq BIGINT DEFAULT nextval('change_seq');
        CREATE TABLE prices (
            model VARCHAR PRIMARY KEY,
            input_cost_per_token DOUBLE NOT NULL,
            output_cost_per_token DOUBLE NOT NULL,
            cache_read_input_token_cost DOUBLE,
            output_cost_per_reasoning_token DOUBLE,
            source VARCHAR NOT NULL,
            updated_at TIMESTAMP NOT NULL
        );
        CREATE SEQUENCE period_id START 1;
        CREATE TABLE evaluation_periods (
            period_id BIGINT PRIMARY KEY DEFAULT nextval('period_id'),
            slot VARCHAR NOT NULL,
            champion_version VARCHAR NOT NULL,
            settings_hash VARCHAR NOT NULL,
            settings_json JSON NOT NULL,
            reason VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL
        );
        CREATE TABLE period_challengers (
            period_id BIGINT NOT NULL,
            version_id VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            alpha DOUBLE NOT NULL,
            joined_at TIMESTAMP NOT NULL,
            PRIMARY KEY (period_id, version_id)
        );
        CREATE TABLE scores (
            period_id BIGINT NOT NULL,
            request_id VARCHAR NOT NULL,
            version_id VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL,
            labelled BOOLEAN NOT NULL,
            quality DOUBLE,
            cost_usd DOUBLE,
            latency_ms DOUBLE,
            net DOUBLE
        );
        CREATE TABLE paired (
            period_id BIGINT NOT NULL,
            request_id VARCHAR NOT NULL,
            version_id VARCHAR NOT NULL,
            d_net DOUBLE NOT NULL,
            d_quality DOUBLE NOT NULL,
            d_cost DOUBLE NOT NULL,
            paired_at TIMESTAMP NOT NULL
        );
        CREATE TABLE pair_moments (
            period_id BIGINT NOT NULL,
            version_id VARCHAR NOT NULL,
            measure VARCHAR NOT NULL,
            n BIGINT NOT NULL,
            mean DOUBLE NOT NULL,
            m2 DOUBLE NOT NULL,
            PRIMARY KEY (period_id, version_id, measure)
        );
        CREATE TABLE scoring_watermarks (
            slot VARCHAR PRIMARY KEY,
            period_id BIGINT NOT NULL,
            seq BIGINT NOT NULL
        );
        CREATE TABLE metric_values (
            request_id VARCHAR NOT NULL,
            version_id VARCHAR NOT NULL,
            metric_key VARCHAR NOT NULL,
            value DOUBLE,
            error VARCHAR,
            cost_usd DOUBLE,
            computed_at TIMESTAMP NOT NULL,
            seq BIGINT DEFAULT nextval('change_seq'),
            PRIMARY KEY (request_id, version_id, metric_key)
        );
        CREATE SEQUENCE snapshot_id START 1;
        CREATE TABLE leaderboard_snapshots (
            snapshot_id BIGINT PRIMARY KEY DEFAULT nextval('snapshot_id'),
            slot VARCHAR NOT NULL,
            period_id BIGINT,
            taken_at TIMESTAMP NOT NULL,
            board_json JSON NOT NULL
        );
        """,
    ),
    Migration(
        4,
        "scoring by request seq",
        # Scoring joins a request's answers on traffic's integer `seq` instead of the
        # request id string: the rows of recent requests sit together at the end of each
        # table, so a refresh reads only what changed. Scores and pairs are derived data,
        # rebuilt from the raw rows on the next refresh; descriptive statistics become
        # mergeable sums with a latency histogram, so a refresh never rescans the period.
        """
        ALTER TABLE shadow_results ADD COLUMN request_seq BIGINT;
        UPDATE shadow_results SET request_seq = traffic.seq FROM traffic
            WHERE traffic.request_id = shadow_results.request_id;
        ALTER TABLE outcomes ADD COLUMN request_seq BIGINT;
        UPDATE outcomes SET request_seq = traffic.seq FROM traffic WHERE traffic.request_id = outcomes.request_id;
        DROP TABLE scores;
        DROP TABLE paired;
        DELETE FROM pair_moments;
        DELETE FROM scoring_watermarks;
        CREATE TABLE scores (
            period_id BIGINT NOT NULL,
            request_seq BIGINT NOT NULL,
            version_id VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            labelled BOOLEAN NOT NULL,
            metric_failed BOOLEAN NOT NULL,
            quality DOUBLE,
            cost_usd DOUBLE,
            latency_ms DOUBLE,
            net DOUBLE,
            received_at TIMESTAMP NOT NULL
        );
        CREATE TABLE paired (
            period_id BIGINT NOT NULL,
            request_seq BIGINT NOT NULL,
            version_id VARCHAR NOT NULL,
            d_net DOUBLE NOT NULL,
            d_quality DOUBLE NOT NULL,
            d_cost DOUBLE NOT NULL,
            paired_at TIMESTAMP NOT NULL,
            watermark_seq BIGINT NOT NULL
        );
        CREATE TABLE answer_stats (
            period_id BIGINT NOT NULL,
            version_id VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            latency_bucket INTEGER NOT NULL,
            answers BIGINT NOT NULL,
            errors BIGINT NOT NULL,
            metric_errors BIGINT NOT NULL,
            scored BIGINT NOT NULL,
            quality_sum DOUBLE NOT NULL,
            priced BIGINT NOT NULL,
            cost_sum DOUBLE NOT NULL,
            valued BIGINT NOT NULL,
            net_sum DOUBLE NOT NULL,
            PRIMARY KEY (period_id, version_id, source, latency_bucket)
        );
        """,
    ),
    Migration(
        5,
        "token details as columns, no per-answer scores",
        # The cached and reasoning token counts are priced apart; reading them once, when
        # a row is written, spares the scorer a parse of every answer's usage JSON. The
        # scorer now recomputes an answer's earlier contribution from the rows it had then,
        # so per-answer scores are no longer stored; pairs, moments and sums carry over.
        """
        DROP TABLE scores;
        """ + "".join(_TOKEN_DETAILS.format(table=table) for table in ("traffic", "shadow_results")),
    ),
    Migration(
        6,
        "pairs without write time and watermark",
        # A refresh computes the moments of the pairs it appends from the rows it appends,
        # so nothing reads back when a pair was written; the leaderboard snapshots record
        # how the evidence grew. Each column was about a tenth of the cost of appending pairs.
        """
        ALTER TABLE paired DROP COLUMN paired_at;
        ALTER TABLE paired DROP COLUMN watermark_seq;
        """,
    ),
    Migration(
        7,
        "metric values keyed by the label they read",
        # A metric that reads the label is computed once the label is there, and again when
        # it is corrected: its value is kept per label (`label_key`, the md5 of the label's
        # JSON; '' for a metric that reads none), so scoring as of an earlier seq still
        # finds the value it used then. Values computed before this key existed read no
        # label by it: they keep '' and a label-reading metric computes afresh.
        """
        CREATE TABLE metric_values_keyed (
            request_id VARCHAR NOT NULL,
            version_id VARCHAR NOT NULL,
            metric_key VARCHAR NOT NULL,
            label_key VARCHAR NOT NULL DEFAULT '',
            value DOUBLE,
            error VARCHAR,
            cost_usd DOUBLE,
            computed_at TIMESTAMP NOT NULL,
            seq BIGINT DEFAULT nextval('change_seq'),
            PRIMARY KEY (request_id, version_id, metric_key, label_key)
        );
        INSERT INTO metric_values_keyed
            SELECT request_id, version_id, metric_key, '', value, error, cost_usd, computed_at, seq FROM metric_values;
        DROP TABLE metric_values;
        ALTER TABLE metric_values_keyed RENAME TO metric_values;
        """,
    ),
    Migration(
        8,
        "tool calls in answers",
        # An answer is its text and its tool calls: a JSON list of {name, arguments} in the
        # order the model made them, NULL when it made none. Earlier rows made none that
        # were kept, so they stay NULL.
        """
        ALTER TABLE traffic ADD COLUMN tool_calls_json JSON;
        ALTER TABLE shadow_results ADD COLUMN tool_calls_json JSON;
        """,
    ),
    Migration(
        9,
        "request tags and slices",
        # A request's tags (explicit ones, and `user` / `metadata.<key>` read from the request
        # at ingest) as a MAP: a slice's condition `tags['k'] = 'v'` reads this small typed
        # column only, never the request bodies, and parses no JSON per row. Rows stored
        # before have none. Each slice looked at in a period gets its own share of α, fixed
        # the first time it is looked at, like a challenger's.
        """
        ALTER TABLE traffic ADD COLUMN tags MAP(VARCHAR, VARCHAR);
        CREATE TABLE period_slices (
            period_id BIGINT NOT NULL,
            slice VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            alpha DOUBLE NOT NULL,
            first_seen TIMESTAMP NOT NULL,
            PRIMARY KEY (period_id, slice)
        );
        """,
    ),
    Migration(
        10,
        "each challenger's worst pairs",
        # `requests --worst` pages through a challenger's pairs of a period by their net
        # difference, most negative first: the first 1000 of that order (d_net, then the newer
        # request first) are kept apart, per period and challenger, so a page among them reads
        # a few thousand rows instead of sorting every pair. The scorer keeps them as pairs
        # enter (`scorer.pairing.WORST_DEPTH`, the same 1000); here they are read off `paired`
        # by a top-k per challenger (a window over every pair sorts them all: half a minute at 10 M).
        """
        CREATE TABLE worst_pairs (
            period_id BIGINT NOT NULL,
            version_id VARCHAR NOT NULL,
            request_seq BIGINT NOT NULL,
            d_net DOUBLE NOT NULL
        );
        INSERT INTO worst_pairs
            SELECT period_id, version_id, p.request_seq, p.d_net FROM (
                SELECT period_id, version_id, unnest(min_by({'request_seq': request_seq, 'd_net': d_net},
                                                            {'d_net': d_net, 'newer': -request_seq}, 1000)) AS p
                FROM paired GROUP BY 1, 2);
        """,
    ),
)

LATEST = MIGRATIONS[-1].version
