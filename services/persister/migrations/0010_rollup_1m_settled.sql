-- Plain path: the 1-minute rollup is settled from the queue too.
--
-- Since 0008 the batch's trigger upserted the 1-minute rollup of every machine
-- in the batch (a conflict check and an update each) and queued the same
-- partial aggregates for the 5-minute and 1-hour rollups. Now it only queues
-- them (an append to `sysmon_rollup_pending`, no index), and
-- `sysmon_rollup_settle()`, which the persister calls every `rollup_settle_ms`,
-- merges the queue into all three. A batch's transaction then takes no lock
-- on any rollup row, and a machine's minute is updated once per settle
-- instead of once per batch (during a catch-up, dozens of batches).
--
-- The merge stays exact in any order (sums, counts, minima, maxima; each
-- queued row is taken once, by DELETE … RETURNING). `metrics_1m` now lags the
-- rows by up to `rollup_settle_ms` (5 s by default), as `metrics_5m` and
-- `metrics_1h` did already; `sysmon_history` reads raw rows for ranges up to
-- 2 hours, so a chart of the last minutes does not see the lag.

DO $$
DECLARE
    acc_aggs text;
    acc_merge text;
    acc_from text;
    acc_names text;
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
           string_agg(format('%I, %I, %I, %I', name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord)
      INTO acc_aggs, acc_merge, acc_from, acc_names
      FROM sysmon_metric;

    -- Rows that ON CONFLICT skipped are not in `ins`: a redelivery adds
    -- nothing to a rollup.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION sysmon_rollup() RETURNS trigger LANGUAGE plpgsql AS $b$
        BEGIN
            INSERT INTO sysmon_rollup_pending
            SELECT machine_id, date_bin('1 minute', ts, '2000-01-01 00:00:00+00'), count(*), %1$s
            FROM ins GROUP BY 1, 2;
            RETURN NULL;
        END $b$ $f$, acc_aggs);

    -- Returns how many queued rows it merged. Each rollup's rows are
    -- written in key order, so concurrent settles lock them in the same order.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION sysmon_rollup_settle() RETURNS bigint LANGUAGE plpgsql AS $b$
        DECLARE
            n bigint;
        BEGIN
            WITH d AS (
                DELETE FROM sysmon_rollup_pending RETURNING *
            ), one AS (
                INSERT INTO metrics_1m_acc AS a (machine_id, bucket, samples, %1$s)
                SELECT machine_id, bucket, sum(samples), %2$s
                FROM d GROUP BY 1, 2 ORDER BY 1, 2
                ON CONFLICT (machine_id, bucket) DO UPDATE SET samples = a.samples + EXCLUDED.samples, %3$s
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

    COMMENT ON TABLE sysmon_rollup_pending IS
        'sysmonstm: 1-minute partial aggregates not yet merged into metrics_1m_acc, metrics_5m_acc and metrics_1h_acc (plain path)';
END $$;
