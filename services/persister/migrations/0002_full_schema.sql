-- The full schema, on one of two storage paths chosen HERE, once, per
-- database:
--   * timescaledb: the extension is in this database already, or it can be
--     created (available and preloaded); hypertables, compression,
--     retention policies, continuous aggregates.
--   * plain: native daily range partitions (created ahead and for every day a
--     batch touches, dropped by the persister's retention) and rollup tables
--     kept by a statement trigger in the same transaction as the rows.
-- The session setting `sysmon.storage` ('auto' | 'plain' | 'timescaledb',
-- default auto) forces a path; `sysmonstm_persister::migrate_with` sets it
-- from the persister's `storage` option. Readers never branch: the same
-- names (metrics, metrics_1m, metrics_1h, sysmon_history, machines, alerts)
-- answer the same queries on both paths.

CREATE TABLE sysmon_storage (
    only_row   boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    mode       text        NOT NULL CHECK (mode IN ('timescaledb', 'plain')),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE sysmon_storage IS 'sysmonstm: which storage path this database uses';

DO $$
DECLARE
    want text := coalesce(nullif(current_setting('sysmon.storage', true), ''), 'auto');
    chosen text := 'plain';
BEGIN
    IF want NOT IN ('auto', 'plain', 'timescaledb') THEN
        RAISE EXCEPTION 'sysmon.storage must be auto, plain or timescaledb, not %', want
            USING ERRCODE = '22023';
    END IF;
    IF want <> 'plain' THEN
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
            chosen := 'timescaledb';
        ELSIF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
              AND current_setting('shared_preload_libraries') ~ 'timescaledb' THEN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            chosen := 'timescaledb';
        ELSIF want = 'timescaledb' THEN
            RAISE EXCEPTION 'storage = timescaledb, but the extension is not available here '
                '(install it and add it to shared_preload_libraries)';
        END IF;
    END IF;
    INSERT INTO sysmon_storage (mode) VALUES (chosen);
END $$;

-- The metric names of the contract and the raw column each one reads.
CREATE TABLE sysmon_metric (
    name       text PRIMARY KEY,
    raw_column text NOT NULL,
    ord        int  NOT NULL
);
INSERT INTO sysmon_metric VALUES
    ('cpu', 'cpu_percent', 1), ('memory', 'mem_used_percent', 2),
    ('swap', 'swap_used_percent', 3), ('load1', 'load1', 4), ('load5', 'load5', 5),
    ('load15', 'load15', 6), ('net_rx', 'net_rx_bps', 7), ('net_tx', 'net_tx_bps', 8),
    ('disk_read', 'disk_read_bps', 9), ('disk_write', 'disk_write_bps', 10),
    ('processes', 'process_count', 11);

-- A time-series table: a hypertable with daily chunks, or a table
-- partitioned by day.
CREATE FUNCTION sysmon_series_table(p_name text, p_columns text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT mode FROM sysmon_storage) = 'timescaledb' THEN
        EXECUTE format('CREATE TABLE %I (%s)', p_name, p_columns);
        PERFORM create_hypertable(p_name::regclass, 'ts', chunk_time_interval => INTERVAL '1 day');
    ELSE
        EXECUTE format('CREATE TABLE %I (%s) PARTITION BY RANGE (ts)', p_name, p_columns);
    END IF;
END $$;

-- The tables partitioned by day (plain path).
CREATE FUNCTION sysmon_series_tables() RETURNS text[] LANGUAGE sql IMMUTABLE AS
$$ SELECT ARRAY['metrics', 'metrics_fs', 'metrics_disk', 'metrics_net', 'metrics_temp', 'metrics_proc'] $$;

-- Plain path: creates the daily partitions of every series table for the
-- UTC days p_from..p_to (inclusive) that are missing; returns how many it
-- created. Safe when two persisters race for the same day.
CREATE FUNCTION sysmon_ensure_partitions(p_from date, p_to date) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    t text;
    made int := 0;
    part text;
BEGIN
    IF (SELECT mode FROM sysmon_storage) <> 'plain' THEN
        RETURN 0;
    END IF;
    FOR d IN SELECT generate_series(p_from, p_to, INTERVAL '1 day')::date LOOP
        FOREACH t IN ARRAY sysmon_series_tables() LOOP
            part := t || '_p' || to_char(d, 'YYYYMMDD');
            CONTINUE WHEN to_regclass(part) IS NOT NULL;
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    part, t, d::text || ' 00:00:00+00', (d + 1)::text || ' 00:00:00+00');
                made := made + 1;
            EXCEPTION WHEN duplicate_table OR unique_violation THEN
                NULL; -- another persister made it first
            END;
        END LOOP;
    END LOOP;
    RETURN made;
END $$;

-- Plain path: drops the daily partitions that end at or before p_cutoff;
-- returns how many.
CREATE FUNCTION sysmon_drop_partitions(p_cutoff timestamptz) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    dropped int := 0;
BEGIN
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = ANY (sysmon_series_tables())
          AND c.relname ~ '_p[0-9]{8}$'
          AND (to_date(right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' <= p_cutoff
    LOOP
        EXECUTE format('DROP TABLE %I', r.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;

-- The v0 table's rows move into the new one.
ALTER TABLE metrics RENAME TO metrics_v0;
ALTER TABLE metrics_v0 RENAME CONSTRAINT metrics_pkey TO metrics_v0_pkey;

SELECT sysmon_series_table('metrics', $$
    machine_id          text             NOT NULL,
    ts                  timestamptz      NOT NULL,
    seq                 bigint           NOT NULL,
    interval_ms         integer          NOT NULL,
    cpu_percent         real,
    cpu_user_percent    real,
    cpu_system_percent  real,
    cpu_iowait_percent  real,
    cpu_per_core        real[],
    mem_total_bytes     bigint,
    mem_used_bytes      bigint,
    mem_available_bytes bigint,
    mem_used_percent    real,
    swap_total_bytes    bigint,
    swap_used_bytes     bigint,
    swap_used_percent   real,
    load1               double precision,
    load5               double precision,
    load15              double precision,
    uptime_s            bigint,
    process_count       integer,
    net_rx_bps          double precision,
    net_tx_bps          double precision,
    disk_read_bps       double precision,
    disk_write_bps      double precision,
    temperature_max_c   real,
    agent_spool_pending bigint,
    agent_spool_dropped bigint,
    received_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (machine_id, ts)
$$);
COMMENT ON TABLE metrics IS 'sysmonstm: one row per agent snapshot; written only by sysmonstm-persister';

SELECT sysmon_series_table('metrics_fs', $$
    machine_id   text        NOT NULL,
    ts           timestamptz NOT NULL,
    mount        text        NOT NULL,
    fs_type      text        NOT NULL,
    total_bytes  bigint      NOT NULL,
    used_bytes   bigint      NOT NULL,
    free_bytes   bigint      NOT NULL,
    used_percent real,
    PRIMARY KEY (machine_id, ts, mount)
$$);
SELECT sysmon_series_table('metrics_disk', $$
    machine_id      text        NOT NULL,
    ts              timestamptz NOT NULL,
    name            text        NOT NULL,
    read_bps        real,
    write_bps       real,
    PRIMARY KEY (machine_id, ts, name)
$$);
SELECT sysmon_series_table('metrics_net', $$
    machine_id      text        NOT NULL,
    ts              timestamptz NOT NULL,
    name            text        NOT NULL,
    rx_bps          real,
    tx_bps          real,
    rx_errors_ps    real,
    tx_errors_ps    real,
    PRIMARY KEY (machine_id, ts, name)
$$);
SELECT sysmon_series_table('metrics_temp', $$
    machine_id text        NOT NULL,
    ts         timestamptz NOT NULL,
    label      text        NOT NULL,
    celsius    real        NOT NULL,
    PRIMARY KEY (machine_id, ts, label)
$$);
-- Top processes: kind 'cpu' (top_cpu) or 'memory' (top_memory), rank 1.. in
-- the agent's order.
SELECT sysmon_series_table('metrics_proc', $$
    machine_id  text        NOT NULL,
    ts          timestamptz NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('cpu', 'memory')),
    rank        smallint    NOT NULL,
    pid         integer     NOT NULL,
    name        text        NOT NULL,
    cpu_percent real,
    rss_bytes   bigint,
    PRIMARY KEY (machine_id, ts, kind, rank)
$$);

-- Rollups at 1 minute and 1 hour: N_avg, N_min, N_max per metric, samples.
DO $$
DECLARE
    ts_path boolean := (SELECT mode FROM sysmon_storage) = 'timescaledb';
    aggs text;
    acc_cols text;
    acc_aggs text;
    acc_merge text;
    view_cols text;
    w record;
BEGIN
    SELECT string_agg(format('avg(%2$I)::float8 AS %1$I, min(%2$I)::float8 AS %3$I, max(%2$I)::float8 AS %4$I',
                             name || '_avg', raw_column, name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('%1$I float8 NOT NULL DEFAULT 0, %2$I bigint NOT NULL DEFAULT 0, %3$I float8, %4$I float8',
                             name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('coalesce(sum(%1$I::float8), 0), count(%1$I), min(%1$I), max(%1$I)', raw_column), ', ' ORDER BY ord),
           string_agg(format('%1$I = a.%1$I + EXCLUDED.%1$I, %2$I = a.%2$I + EXCLUDED.%2$I, '
                             '%3$I = LEAST(a.%3$I, EXCLUDED.%3$I), %4$I = GREATEST(a.%4$I, EXCLUDED.%4$I)',
                             name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('%1$I / nullif(%2$I, 0) AS %3$I, %4$I, %5$I',
                             name || '_sum', name || '_n', name || '_avg', name || '_min', name || '_max'), ', ' ORDER BY ord)
      INTO aggs, acc_cols, acc_aggs, acc_merge, view_cols
      FROM sysmon_metric;

    FOR w IN SELECT * FROM (VALUES ('metrics_1m', INTERVAL '1 minute'), ('metrics_1h', INTERVAL '1 hour')) v(name, width) LOOP
        IF ts_path THEN
            EXECUTE format(
                'CREATE MATERIALIZED VIEW %I WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS '
                'SELECT machine_id, time_bucket(%L::interval, ts) AS bucket, %s, count(*) AS samples '
                'FROM metrics GROUP BY machine_id, time_bucket(%L::interval, ts) WITH NO DATA',
                w.name, w.width, aggs, w.width);
        ELSE
            EXECUTE format('CREATE TABLE %I (machine_id text NOT NULL, bucket timestamptz NOT NULL, '
                           'samples bigint NOT NULL, %s, PRIMARY KEY (machine_id, bucket))',
                           w.name || '_acc', acc_cols);
            EXECUTE format('CREATE VIEW %I AS SELECT machine_id, bucket, %s, samples FROM %I',
                           w.name, view_cols, w.name || '_acc');
        END IF;
    END LOOP;

    IF ts_path THEN
        ALTER TABLE metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'machine_id',
                                 timescaledb.compress_orderby = 'ts DESC');
        PERFORM add_compression_policy('metrics', INTERVAL '1 day');
        PERFORM add_retention_policy(t::regclass, INTERVAL '30 days') FROM unnest(sysmon_series_tables()) t;
        PERFORM add_continuous_aggregate_policy('metrics_1m', start_offset => INTERVAL '3 days',
            end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute');
        PERFORM add_continuous_aggregate_policy('metrics_1h', start_offset => INTERVAL '30 days',
            end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes');
        PERFORM add_retention_policy('metrics_1m', INTERVAL '90 days');
    ELSE
        -- Rows that ON CONFLICT skipped are not in `ins`: a redelivery adds
        -- nothing to a rollup.
        EXECUTE format($f$
            CREATE FUNCTION sysmon_rollup() RETURNS trigger LANGUAGE plpgsql AS $b$
            BEGIN
                INSERT INTO metrics_1m_acc AS a
                SELECT machine_id, date_bin('1 minute', ts, '2000-01-01 00:00:00+00'), count(*), %1$s
                FROM ins GROUP BY 1, 2 ORDER BY 1, 2
                ON CONFLICT (machine_id, bucket) DO UPDATE SET samples = a.samples + EXCLUDED.samples, %2$s;
                INSERT INTO metrics_1h_acc AS a
                SELECT machine_id, date_bin('1 hour', ts, '2000-01-01 00:00:00+00'), count(*), %1$s
                FROM ins GROUP BY 1, 2 ORDER BY 1, 2
                ON CONFLICT (machine_id, bucket) DO UPDATE SET samples = a.samples + EXCLUDED.samples, %2$s;
                RETURN NULL;
            END $b$ $f$, acc_aggs, acc_merge);
        CREATE TRIGGER sysmon_rollup AFTER INSERT ON metrics
            REFERENCING NEW TABLE AS ins FOR EACH STATEMENT EXECUTE FUNCTION sysmon_rollup();
    END IF;
END $$;

-- Partitions for today and the next days, and for the v0 rows.
SELECT sysmon_ensure_partitions(current_date - 1, current_date + 7);
SELECT sysmon_ensure_partitions(min(ts)::date, max(ts)::date) FROM metrics_v0 HAVING count(*) > 0;
INSERT INTO metrics (machine_id, ts, seq, interval_ms, cpu_percent, mem_total_bytes, mem_used_bytes,
                     mem_available_bytes, swap_total_bytes, swap_used_bytes, load1, load5, load15,
                     uptime_s, process_count, received_at)
SELECT machine_id, ts, seq, interval_ms, cpu_percent, mem_total_bytes, mem_used_bytes,
       mem_available_bytes, swap_total_bytes, swap_used_bytes, load1, load5, load15,
       uptime_s, process_count, received_at
FROM metrics_v0;
DROP TABLE metrics_v0;

CREATE TABLE machines (
    machine_id         text PRIMARY KEY,
    hostname           text,
    os_name            text,
    os_version         text,
    kernel_version     text,
    architecture       text,
    cpu_model          text,
    core_count         integer,
    memory_total_bytes bigint,
    agent_version      text,
    boot_time          timestamptz,
    info_at            timestamptz,
    last_seen          timestamptz
);
COMMENT ON TABLE machines IS 'sysmonstm: facts of every machine (MachineInfo) and when its last snapshot was taken';

CREATE TABLE alerts (
    id         bigserial PRIMARY KEY,
    machine_id text        NOT NULL,
    rule       text        NOT NULL,
    severity   text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state      text        NOT NULL CHECK (state IN ('firing', 'resolved', 'acknowledged')),
    metric     text        NOT NULL,
    value      double precision,
    threshold  double precision,
    since      timestamptz NOT NULL,
    ts         timestamptz NOT NULL,
    message    text        NOT NULL DEFAULT '',
    msg_id     text        NOT NULL UNIQUE
);
CREATE INDEX alerts_machine_ts ON alerts (machine_id, ts DESC);
CREATE INDEX alerts_ts ON alerts (ts DESC);
COMMENT ON TABLE alerts IS 'sysmonstm: every alert event from the ALERTS stream, once (msg_id)';

-- History of one metric of one machine, from the coarsest source that
-- fits: raw up to 2 h, 1 min up to 3 days, else 1 h; with p_step, the
-- coarsest source not coarser than p_step, re-bucketed by p_step.
CREATE FUNCTION sysmon_history(p_machine text, p_metric text, p_from timestamptz, p_to timestamptz,
                               p_step interval DEFAULT NULL)
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
                    WHEN p_step >= INTERVAL '1 minute' THEN '1m' ELSE 'raw' END;
    ELSE
        src := CASE WHEN p_to - p_from <= INTERVAL '2 hours' THEN 'raw'
                    WHEN p_to - p_from <= INTERVAL '3 days' THEN '1m' ELSE '1h' END;
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
        tbl := CASE src WHEN '1m' THEN 'metrics_1m' ELSE 'metrics_1h' END;
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
