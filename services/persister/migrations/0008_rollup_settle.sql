-- Plain path: the batch's trigger keeps only the 1-minute rollup; the
-- 5-minute and 1-hour rollups follow from a queue a few seconds later.
--
-- The statement trigger upserted the current 1-minute, 5-minute and 1-hour
-- bucket of every machine in every batch: three upserts, each a conflict
-- check and an update, for every machine in it; together ~60 % of
-- PostgreSQL's time per batch at 1 000 machines (perf, `just bench ingest`
-- with BENCH_STORAGE=plain). Now the trigger upserts the 1-minute rollup as
-- before and appends the same per-minute partial aggregates (sums, counts,
-- minima, maxima of the newly inserted rows only) to
-- `sysmon_rollup_pending`, a plain append with no index. `sysmon_rollup_settle()`,
-- which the persister calls every few seconds, takes everything queued
-- (DELETE … RETURNING, so each queued row is merged exactly once even when
-- several persisters settle at the same time) and merges it into
-- `metrics_5m_acc` and `metrics_1h_acc` with the same sums, counts, minima
-- and maxima: the merge is exact and its order does not matter. Until it
-- runs, `metrics_5m` and `metrics_1h` lag by those few seconds; `metrics_1m`
-- does not lag.

DO $$
DECLARE
    acc_aggs text;
    acc_merge text;
    acc_from text;
    acc_names text;
    acc_cols text;
BEGIN
    IF (SELECT mode FROM sysmon_storage) <> 'plain' THEN
        RETURN;
    END IF;
    SELECT string_agg(format('coalesce(sum(%1$I::float8), 0), count(%1$I), min(%1$I), max(%1$I)', raw_column), ', ' ORDER BY ord),
           string_agg(format('%1$I = a.%1$I + EXCLUDED.%1$I, %2$I = a.%2$I + EXCLUDED.%2$I, '
                             '%3$I = LEAST(a.%3$I, EXCLUDED.%3$I), %4$I = GREATEST(a.%4$I, EXCLUDED.%4$I)',
                             name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('sum(%1$I), sum(%2$I), min(%3$I), max(%4$I)',
                             name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('%I, %I, %I, %I', name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('%1$I float8 NOT NULL, %2$I bigint NOT NULL, %3$I float8, %4$I float8',
                             name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord)
      INTO acc_aggs, acc_merge, acc_from, acc_names, acc_cols
      FROM sysmon_metric;

    EXECUTE format('CREATE TABLE sysmon_rollup_pending (machine_id text NOT NULL, bucket timestamptz NOT NULL, '
                   'samples bigint NOT NULL, %s)', acc_cols);
    COMMENT ON TABLE sysmon_rollup_pending IS
        'sysmonstm: 1-minute partial aggregates not yet merged into metrics_5m_acc and metrics_1h_acc (plain path)';

    -- Rows that ON CONFLICT skipped are not in `ins`: a redelivery adds
    -- nothing to a rollup.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION sysmon_rollup() RETURNS trigger LANGUAGE plpgsql AS $b$
        BEGIN
            WITH m AS (
                SELECT machine_id, date_bin('1 minute', ts, '2000-01-01 00:00:00+00') AS bucket,
                       count(*) AS samples, %1$s
                FROM ins GROUP BY 1, 2
            ), queued AS (
                INSERT INTO sysmon_rollup_pending SELECT * FROM m
            )
            INSERT INTO metrics_1m_acc AS a SELECT * FROM m ORDER BY 1, 2
            ON CONFLICT (machine_id, bucket) DO UPDATE SET samples = a.samples + EXCLUDED.samples, %2$s;
            RETURN NULL;
        END $b$ $f$, acc_aggs, acc_merge);

    -- Returns how many queued rows it merged.
    EXECUTE format($f$
        CREATE FUNCTION sysmon_rollup_settle() RETURNS bigint LANGUAGE plpgsql AS $b$
        DECLARE
            n bigint;
        BEGIN
            WITH d AS (
                DELETE FROM sysmon_rollup_pending RETURNING *
            ), five AS (
                INSERT INTO metrics_5m_acc AS a (machine_id, bucket, samples, %1$s)
                SELECT machine_id, date_bin('5 minutes', bucket, '2000-01-01 00:00:00+00'), sum(samples), %2$s
                FROM d GROUP BY 1, 2 ORDER BY 1, 2
                ON CONFLICT (machine_id, bucket) DO UPDATE SET samples = a.samples + EXCLUDED.samples, %3$s
            ), hour AS (
                INSERT INTO metrics_1h_acc AS a (machine_id, bucket, samples, %1$s)
                SELECT machine_id, date_bin('1 hour', bucket, '2000-01-01 00:00:00+00'), sum(samples), %2$s
                FROM d GROUP BY 1, 2 ORDER BY 1, 2
                ON CONFLICT (machine_id, bucket) DO UPDATE SET samples = a.samples + EXCLUDED.samples, %3$s
            )
            SELECT count(*) INTO n FROM d;
            RETURN n;
        END $b$ $f$, acc_names, acc_from, acc_merge);
END $$;
