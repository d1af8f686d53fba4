-- A 5-minute rollup, `metrics_5m`, between metrics_1m and metrics_1h, so a
-- month at 5-minute steps reads 8 640 rows instead of re-bucketing 43 200
-- one-minute rows. Same shape as the others (N_avg, N_min, N_max per metric
-- of sysmon_metric, samples) on both storage paths:
--   * timescaledb: a continuous aggregate on the raw hypertable (not on
--     metrics_1m: averages over raw rows stay exact where a metric is NULL
--     in some rows, like 1m and 1h), refreshed every 5 minutes, kept a year.
--     Created WITH NO DATA (a refresh cannot run inside the migration's
--     transaction); until the policy's first run, real-time aggregation
--     answers from the raw rows, so readers see the same rows either way.
--   * plain: metrics_5m_acc + the metrics_5m view, filled by the same
--     statement trigger as 1m/1h (its function is replaced here), and
--     backfilled from metrics_1m_acc, whose sums, counts, minima and maxima
--     merge exactly and which is kept longer (90 days) than the raw rows.
-- sysmon_history gains the 5m source.

DO $$
DECLARE
    ts_path boolean := (SELECT mode FROM sysmon_storage) = 'timescaledb';
    aggs text;
    acc_cols text;
    acc_aggs text;
    acc_merge text;
    acc_from_1m text;
    view_cols text;
    acc_names text;
BEGIN
    SELECT string_agg(format('avg(%2$I)::float8 AS %1$I, min(%2$I)::float8 AS %3$I, max(%2$I)::float8 AS %4$I',
                             name || '_avg', raw_column, name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('%1$I float8 NOT NULL DEFAULT 0, %2$I bigint NOT NULL DEFAULT 0, %3$I float8, %4$I float8',
                             name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('coalesce(sum(%1$I::float8), 0), count(%1$I), min(%1$I), max(%1$I)', raw_column), ', ' ORDER BY ord),
           string_agg(format('%1$I = a.%1$I + EXCLUDED.%1$I, %2$I = a.%2$I + EXCLUDED.%2$I, '
                             '%3$I = LEAST(a.%3$I, EXCLUDED.%3$I), %4$I = GREATEST(a.%4$I, EXCLUDED.%4$I)',
                             name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('sum(%1$I), sum(%2$I), min(%3$I), max(%4$I)',
                             name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('%1$I / nullif(%2$I, 0) AS %3$I, %4$I, %5$I',
                             name || '_sum', name || '_n', name || '_avg', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('%I, %I, %I, %I', name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord)
      INTO aggs, acc_cols, acc_aggs, acc_merge, acc_from_1m, view_cols, acc_names
      FROM sysmon_metric;

    IF ts_path THEN
        EXECUTE format(
            'CREATE MATERIALIZED VIEW metrics_5m WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS '
            'SELECT machine_id, time_bucket(%L::interval, ts) AS bucket, %s, count(*) AS samples '
            'FROM metrics GROUP BY machine_id, time_bucket(%L::interval, ts) WITH NO DATA',
            INTERVAL '5 minutes', aggs, INTERVAL '5 minutes');
        -- The window matches the raw retention (30 days), like metrics_1h's:
        -- a refresh over days whose raw chunks are gone would empty them.
        PERFORM add_continuous_aggregate_policy('metrics_5m', start_offset => INTERVAL '30 days',
            end_offset => INTERVAL '5 minutes', schedule_interval => INTERVAL '5 minutes');
        PERFORM add_retention_policy('metrics_5m', INTERVAL '365 days');
    ELSE
        EXECUTE format('CREATE TABLE metrics_5m_acc (machine_id text NOT NULL, bucket timestamptz NOT NULL, '
                       'samples bigint NOT NULL, %s, PRIMARY KEY (machine_id, bucket))', acc_cols);
        EXECUTE format('CREATE VIEW metrics_5m AS SELECT machine_id, bucket, %s, samples FROM metrics_5m_acc',
                       view_cols);
        -- 1-minute buckets nest in 5-minute ones (same origin).
        EXECUTE format(
            'INSERT INTO metrics_5m_acc (machine_id, bucket, samples, %s) '
            'SELECT machine_id, date_bin(''5 minutes'', bucket, ''2000-01-01 00:00:00+00''), sum(samples), %s '
            'FROM metrics_1m_acc GROUP BY 1, 2',
            acc_names, acc_from_1m);
        -- Rows that ON CONFLICT skipped are not in `ins`: a redelivery adds
        -- nothing to a rollup. The trigger (0002) stays; only its function
        -- grows the 5-minute step.
        EXECUTE format($f$
            CREATE OR REPLACE FUNCTION sysmon_rollup() RETURNS trigger LANGUAGE plpgsql AS $b$
            BEGIN
                INSERT INTO metrics_1m_acc AS a
                SELECT machine_id, date_bin('1 minute', ts, '2000-01-01 00:00:00+00'), count(*), %1$s
                FROM ins GROUP BY 1, 2 ORDER BY 1, 2
                ON CONFLICT (machine_id, bucket) DO UPDATE SET samples = a.samples + EXCLUDED.samples, %2$s;
                INSERT INTO metrics_5m_acc AS a
                SELECT machine_id, date_bin('5 minutes', ts, '2000-01-01 00:00:00+00'), count(*), %1$s
                FROM ins GROUP BY 1, 2 ORDER BY 1, 2
                ON CONFLICT (machine_id, bucket) DO UPDATE SET samples = a.samples + EXCLUDED.samples, %2$s;
                INSERT INTO metrics_1h_acc AS a
                SELECT machine_id, date_bin('1 hour', ts, '2000-01-01 00:00:00+00'), count(*), %1$s
                FROM ins GROUP BY 1, 2 ORDER BY 1, 2
                ON CONFLICT (machine_id, bucket) DO UPDATE SET samples = a.samples + EXCLUDED.samples, %2$s;
                RETURN NULL;
            END $b$ $f$, acc_aggs, acc_merge);
    END IF;
END $$;

-- History of one metric of one machine, from the coarsest source that
-- fits: raw up to 2 h, 1 min up to 3 days, 5 min up to 35 days, else 1 h;
-- with p_step, the coarsest source not coarser than p_step, re-bucketed by
-- p_step.
CREATE OR REPLACE FUNCTION sysmon_history(p_machine text, p_metric text, p_from timestamptz,
                                          p_to timestamptz, p_step interval DEFAULT NULL)
RETURNS TABLE (ts timestamptz, avg double precision, min double precision, max double precision,
               resolution text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    col text;
    src text;
    tbl text;
    origin constant timestamptz := '2000-01-01 00:00:00+00';
BEGIN
    SELECT raw_column INTO col FROM sysmon_metric WHERE name = p_metric;
    IF col IS NULL THEN
        RAISE EXCEPTION 'unknown metric %', quote_literal(p_metric) USING ERRCODE = '22023',
            HINT = 'one of: ' || (SELECT string_agg(name, ', ' ORDER BY ord) FROM sysmon_metric);
    END IF;
    IF p_step IS NOT NULL AND p_step <= INTERVAL '0' THEN
        RAISE EXCEPTION 'p_step must be positive' USING ERRCODE = '22023';
    END IF;
    IF p_step IS NOT NULL THEN
        src := CASE WHEN p_step >= INTERVAL '1 hour' THEN '1h'
                    WHEN p_step >= INTERVAL '5 minutes' THEN '5m'
                    WHEN p_step >= INTERVAL '1 minute' THEN '1m' ELSE 'raw' END;
    ELSE
        src := CASE WHEN p_to - p_from <= INTERVAL '2 hours' THEN 'raw'
                    WHEN p_to - p_from <= INTERVAL '3 days' THEN '1m'
                    WHEN p_to - p_from <= INTERVAL '35 days' THEN '5m' ELSE '1h' END;
    END IF;
    IF src = 'raw' AND p_step IS NULL THEN
        RETURN QUERY EXECUTE format(
            'SELECT m.ts, m.%1$I::float8, m.%1$I::float8, m.%1$I::float8, %2$L::text FROM metrics m '
            'WHERE m.machine_id = $1 AND m.ts >= $2 AND m.ts < $3 ORDER BY m.ts', col, src)
            USING p_machine, p_from, p_to;
    ELSIF src = 'raw' THEN
        RETURN QUERY EXECUTE format(
            'SELECT date_bin($4, m.ts, $5) AS b, avg(m.%1$I)::float8, min(m.%1$I)::float8, max(m.%1$I)::float8, %2$L::text '
            'FROM metrics m WHERE m.machine_id = $1 AND m.ts >= $2 AND m.ts < $3 GROUP BY b ORDER BY b', col, src)
            USING p_machine, p_from, p_to, p_step, origin;
    ELSE
        tbl := 'metrics_' || src;
        IF p_step IS NULL THEN
            RETURN QUERY EXECUTE format(
                'SELECT r.bucket, r.%2$I, r.%3$I, r.%4$I, %5$L::text FROM %1$I r '
                'WHERE r.machine_id = $1 AND r.bucket >= $2 AND r.bucket < $3 ORDER BY r.bucket',
                tbl, p_metric || '_avg', p_metric || '_min', p_metric || '_max', src)
                USING p_machine, p_from, p_to;
        ELSE
            -- Averages of buckets weigh by their samples.
            RETURN QUERY EXECUTE format(
                'SELECT date_bin($4, r.bucket, $5) AS b, '
                'sum(r.%2$I * r.samples) / nullif(sum(r.samples) FILTER (WHERE r.%2$I IS NOT NULL), 0), '
                'min(r.%3$I), max(r.%4$I), %5$L::text FROM %1$I r '
                'WHERE r.machine_id = $1 AND r.bucket >= $2 AND r.bucket < $3 GROUP BY b ORDER BY b',
                tbl, p_metric || '_avg', p_metric || '_min', p_metric || '_max', src)
                USING p_machine, p_from, p_to, p_step, origin;
        END IF;
    END IF;
END $$;
