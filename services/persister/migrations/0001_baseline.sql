-- The whole schema of sysmonstm's PostgreSQL database, on one of two storage
-- paths chosen HERE, once, per database:
--   * timescaledb: the extension is in this database already, or it can be
--     created (available and preloaded); a hypertable, compression,
--     retention policies, continuous aggregates.
--   * plain: native daily range partitions (created ahead and for every day a
--     batch touches, dropped by the persister's retention) and rollup tables
--     that `sysmon_rollup_settle()` fills from a queue the rows' statement
--     trigger appends to in the same transaction.
-- The session setting `sysmon.storage` ('auto' | 'plain' | 'timescaledb',
-- default auto) forces a path; `sysmonstm_persister::migrate_with` sets it
-- from the persister's `storage` option. Readers never branch: the same
-- names (metrics, metrics_fs … metrics_proc, metrics_1m, metrics_5m,
-- metrics_1h, sysmon_history, machines, alerts, notification_failures)
-- answer the same queries on both paths.
--
-- This baseline replaced the pre-release migrations 0001…0010 before the
-- first release; a database they made is refused by the persister (it
-- cannot be upgraded in place: drop it and let the persister create it anew).
-- Where a figure below says "measured", `just bench ingest` prints today's.

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

-- The metric names of the contract and the raw column each one reads. The
-- rollups, the plain path's trigger and settle functions and sysmon_history
-- are generated from this table: a metric is added here.
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
-- partitioned by day. The hypertable gets no index on `ts` of its own: see
-- `metrics_ts_brin` below.
CREATE FUNCTION sysmon_series_table(p_name text, p_columns text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT mode FROM sysmon_storage) = 'timescaledb' THEN
        EXECUTE format('CREATE TABLE %I (%s)', p_name, p_columns);
        PERFORM create_hypertable(p_name::regclass, 'ts', chunk_time_interval => INTERVAL '1 day',
                                  create_default_indexes => false);
    ELSE
        EXECUTE format('CREATE TABLE %I (%s) PARTITION BY RANGE (ts)', p_name, p_columns);
    END IF;
END $$;

-- The tables partitioned by day (plain path), or hypertables with a
-- retention policy (timescaledb).
CREATE FUNCTION sysmon_series_tables() RETURNS text[] LANGUAGE sql IMMUTABLE AS
$$ SELECT ARRAY['metrics'] $$;

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

-- One row per snapshot, its per-device detail included. The primary key
-- (machine_id, ts) makes a redelivered snapshot change nothing.
--
-- `detail` holds the filesystems, disks, interfaces, temperatures and top
-- processes as JSON text:
--   {"fs":[[mount, fs_type, total_bytes, used_bytes, free_bytes], …],
--    "disks":[[name, read_bps, write_bps], …],
--    "ifaces":[[name, rx_bps, tx_bps, rx_errors_ps, tx_errors_ps], …],
--    "temps":[[label, celsius], …],
--    "procs":[[pid, name, cpu_percent, rss_bytes], …]}
-- one inner array per device in the agent's order, empty sections left out
-- (NULL when all are), an absent rate as null, NaN and infinities as the
-- strings "NaN", "Infinity", "-Infinity". `procs` lists the top processes
-- by CPU (the first `procs_top_cpu`), then those by memory. Read it through
-- the views metrics_fs … metrics_proc, or as `detail::jsonb`.
--
-- Why one row and one text field: as five child tables the detail was 13
-- rows of a typical snapshot, each with its own primary-key index (a binary
-- COPY of 1 M snapshots took 83 s as child rows, 22 s as one row, measured
-- on the 2-core reference box); as 19 parallel arrays PostgreSQL received
-- each array through its receive function, one call per element, which cost
-- 3.1 times as much as all the scalar columns together. As one text field it
-- costs little more than copying its bytes: the whole row went in twice as
-- fast (1.55 s -> 0.78 s for 200 000 snapshots) and is 19 % smaller. It is
-- `text`, not `json`/`jsonb`, because those parse it again on the way in
-- (`json` took 50 % longer than `text`); the persister is its only writer.
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
    procs_top_cpu       smallint,
    detail              text,
    PRIMARY KEY (machine_id, ts)
$$);
COMMENT ON TABLE metrics IS 'sysmonstm: one row per agent snapshot; written only by sysmonstm-persister';
COMMENT ON COLUMN metrics.detail IS
    'sysmonstm: per-device detail as JSON (see the baseline migration); read through the metrics_fs … metrics_proc views';

-- TimescaleDB path: beside the primary key, a BRIN index on `ts` instead of
-- TimescaleDB's default B-tree. Its only reader is the continuous
-- aggregates' refresh, which asks for a span of time; rows arrive in time
-- order, so a BRIN index (a few bytes per 1 MB of table) finds that span as
-- well and costs the writer next to nothing, where the B-tree took an index
-- entry and its WAL for every row. History of one machine uses the primary
-- key. autosummarize keeps the summaries current without a VACUUM.
DO $$
BEGIN
    IF (SELECT mode FROM sysmon_storage) = 'timescaledb' THEN
        CREATE INDEX metrics_ts_brin ON metrics USING brin (ts) WITH (autosummarize = on);
    END IF;
END $$;

-- One row per device per snapshot, from `metrics.detail`. A filter on
-- machine_id and ts reaches the primary key of `metrics`.
CREATE VIEW metrics_fs AS
SELECT m.machine_id, m.ts, e->>0 AS mount, e->>1 AS fs_type, (e->>2)::int8 AS total_bytes,
       (e->>3)::int8 AS used_bytes, (e->>4)::int8 AS free_bytes,
       CASE WHEN (e->>2)::int8 > 0 THEN ((e->>3)::float8 * 100 / (e->>2)::int8)::real END AS used_percent
FROM metrics m, jsonb_array_elements(m.detail::jsonb -> 'fs') AS e
WHERE m.detail IS NOT NULL;

CREATE VIEW metrics_disk AS
SELECT m.machine_id, m.ts, e->>0 AS name, (e->>1)::real AS read_bps, (e->>2)::real AS write_bps
FROM metrics m, jsonb_array_elements(m.detail::jsonb -> 'disks') AS e
WHERE m.detail IS NOT NULL;

CREATE VIEW metrics_net AS
SELECT m.machine_id, m.ts, e->>0 AS name, (e->>1)::real AS rx_bps, (e->>2)::real AS tx_bps,
       (e->>3)::real AS rx_errors_ps, (e->>4)::real AS tx_errors_ps
FROM metrics m, jsonb_array_elements(m.detail::jsonb -> 'ifaces') AS e
WHERE m.detail IS NOT NULL;

CREATE VIEW metrics_temp AS
SELECT m.machine_id, m.ts, e->>0 AS label, (e->>1)::real AS celsius
FROM metrics m, jsonb_array_elements(m.detail::jsonb -> 'temps') AS e
WHERE m.detail IS NOT NULL;

-- kind 'cpu' (top by CPU) or 'memory' (top by memory); rank 1 = the top.
CREATE VIEW metrics_proc AS
SELECT m.machine_id, m.ts,
       CASE WHEN e.ord <= m.procs_top_cpu THEN 'cpu' ELSE 'memory' END AS kind,
       (CASE WHEN e.ord <= m.procs_top_cpu THEN e.ord ELSE e.ord - m.procs_top_cpu END)::smallint AS rank,
       (e.v->>0)::int4 AS pid, e.v->>1 AS name, (e.v->>2)::real AS cpu_percent, (e.v->>3)::int8 AS rss_bytes
FROM metrics m, jsonb_array_elements(m.detail::jsonb -> 'procs') WITH ORDINALITY AS e(v, ord)
WHERE m.detail IS NOT NULL;

COMMENT ON VIEW metrics_fs IS 'sysmonstm: one row per filesystem per snapshot (from metrics.detail)';
COMMENT ON VIEW metrics_disk IS 'sysmonstm: one row per disk per snapshot (from metrics.detail)';
COMMENT ON VIEW metrics_net IS 'sysmonstm: one row per interface per snapshot (from metrics.detail)';
COMMENT ON VIEW metrics_temp IS 'sysmonstm: one row per sensor per snapshot (from metrics.detail)';
COMMENT ON VIEW metrics_proc IS 'sysmonstm: one row per top process per snapshot (from metrics.detail)';

-- Rollups at 1 minute, 5 minutes and 1 hour: N_avg, N_min, N_max per metric
-- of sysmon_metric, and samples.
--   * timescaledb: continuous aggregates on the raw hypertable (not on each
--     other: averages over raw rows stay exact where a metric is NULL in
--     some rows), with real-time aggregation, so they answer from the raw
--     rows until a policy has refreshed them. Created WITH NO DATA (a
--     refresh cannot run inside the migration's transaction).
--   * plain: `<name>_acc` tables of sums, counts, minima and maxima (so
--     averages merge exactly, in any order) and the views `<name>` over
--     them. The statement trigger on `metrics` only appends the per-minute
--     partial aggregates of the rows it inserted to `sysmon_rollup_pending`
--     (an append, no index: a batch's transaction takes no lock on any
--     rollup row); `sysmon_rollup_settle()`, which the persister calls every
--     `rollup_settle_ms`, merges the queue into all three. The rollups lag
--     the rows by up to that (5 s by default); `sysmon_history` reads raw
--     rows for ranges up to 2 hours, so a chart of the last minutes does not
--     see it. Upserting the rollups in the trigger instead took ~60 % of
--     PostgreSQL's time per batch at 1 000 machines, and a machine's minute
--     was updated once per batch instead of once per settle.
DO $$
DECLARE
    ts_path boolean := (SELECT mode FROM sysmon_storage) = 'timescaledb';
    aggs text;
    acc_cols text;
    acc_aggs text;
    acc_merge text;
    acc_from text;
    acc_names text;
    pending_cols text;
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
           string_agg(format('sum(%1$I), sum(%2$I), min(%3$I), max(%4$I)',
                             name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('%I, %I, %I, %I', name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('%1$I float8 NOT NULL, %2$I bigint NOT NULL, %3$I float8, %4$I float8',
                             name || '_sum', name || '_n', name || '_min', name || '_max'), ', ' ORDER BY ord),
           string_agg(format('%1$I / nullif(%2$I, 0) AS %3$I, %4$I, %5$I',
                             name || '_sum', name || '_n', name || '_avg', name || '_min', name || '_max'), ', ' ORDER BY ord)
      INTO aggs, acc_cols, acc_aggs, acc_merge, acc_from, acc_names, pending_cols, view_cols
      FROM sysmon_metric;

    FOR w IN SELECT * FROM (VALUES ('metrics_1m', INTERVAL '1 minute'), ('metrics_1h', INTERVAL '1 hour'),
                                   ('metrics_5m', INTERVAL '5 minutes')) v(name, width) LOOP
        IF ts_path THEN
            EXECUTE format(
                'CREATE MATERIALIZED VIEW %I WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS '
                'SELECT machine_id, time_bucket(%L::interval, ts) AS bucket, %s, count(*) AS samples '
                'FROM metrics GROUP BY machine_id, time_bucket(%L::interval, ts) WITH NO DATA',
                w.name, w.width, aggs, w.width);
        ELSE
            -- Half of each page kept free: a settle updates a bucket's row
            -- many times before the bucket closes, and with room on its page
            -- the update stays there (a HOT update: no index entry, the old
            -- version pruned in place).
            EXECUTE format('CREATE TABLE %I (machine_id text NOT NULL, bucket timestamptz NOT NULL, '
                           'samples bigint NOT NULL, %s, PRIMARY KEY (machine_id, bucket)) WITH (fillfactor = 50)',
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
        -- The 5-minute and 1-hour windows match the raw retention (30 days):
        -- a refresh over days whose raw chunks are gone would empty them.
        PERFORM add_continuous_aggregate_policy('metrics_1m', start_offset => INTERVAL '3 days',
            end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute');
        PERFORM add_continuous_aggregate_policy('metrics_5m', start_offset => INTERVAL '30 days',
            end_offset => INTERVAL '5 minutes', schedule_interval => INTERVAL '5 minutes');
        PERFORM add_continuous_aggregate_policy('metrics_1h', start_offset => INTERVAL '30 days',
            end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes');
        PERFORM add_retention_policy('metrics_1m', INTERVAL '90 days');
        PERFORM add_retention_policy('metrics_5m', INTERVAL '365 days');
        RETURN;
    END IF;

    EXECUTE format('CREATE TABLE sysmon_rollup_pending (machine_id text NOT NULL, bucket timestamptz NOT NULL, '
                   'samples bigint NOT NULL, %s)', pending_cols);
    COMMENT ON TABLE sysmon_rollup_pending IS
        'sysmonstm: 1-minute partial aggregates not yet merged into metrics_1m_acc, metrics_5m_acc and metrics_1h_acc (plain path)';

    -- Rows that ON CONFLICT skipped are not in `ins`: a redelivery adds
    -- nothing to a rollup.
    EXECUTE format($f$
        CREATE FUNCTION sysmon_rollup() RETURNS trigger LANGUAGE plpgsql AS $b$
        BEGIN
            INSERT INTO sysmon_rollup_pending
            SELECT machine_id, date_bin('1 minute', ts, '2000-01-01 00:00:00+00'), count(*), %1$s
            FROM ins GROUP BY 1, 2;
            RETURN NULL;
        END $b$ $f$, acc_aggs);
    CREATE TRIGGER sysmon_rollup AFTER INSERT ON metrics
        REFERENCING NEW TABLE AS ins FOR EACH STATEMENT EXECUTE FUNCTION sysmon_rollup();

    -- Takes everything queued (DELETE … RETURNING, so each queued row is
    -- merged exactly once even when several persisters settle at the same
    -- time) and returns how many rows it merged. Each rollup's rows are
    -- written in key order, so concurrent settles lock them in the same
    -- order. 1-minute buckets nest in 5-minute and 1-hour ones (same origin).
    EXECUTE format($f$
        CREATE FUNCTION sysmon_rollup_settle() RETURNS bigint LANGUAGE plpgsql AS $b$
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
END $$;

-- Plain path: partitions for today and the next days, so inserts never wait
-- on DDL (the persister keeps creating them ahead).
SELECT sysmon_ensure_partitions(current_date - 1, current_date + 7);

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

-- Notifications the notifier gave up on (NOTIFICATIONS): one row per
-- (alert event, channel), so a failure recorded again or redelivered adds
-- nothing. A plain table on both paths, kept like `alerts` (no retention:
-- a few rows per failed delivery). `error` is bounded here as well as by
-- the persister, which cuts longer text.
CREATE TABLE notification_failures (
    event_id         text        NOT NULL,
    channel          text        NOT NULL,
    machine_id       text        NOT NULL,
    rule             text        NOT NULL,
    msg_id           text        NOT NULL,
    attempts         bigint      NOT NULL CHECK (attempts >= 0),
    error            text        NOT NULL DEFAULT '' CHECK (char_length(error) <= 1000),
    first_attempt_at timestamptz,
    last_attempt_at  timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, channel)
);
CREATE INDEX notification_failures_machine_ts
    ON notification_failures (machine_id, last_attempt_at DESC);
CREATE INDEX notification_failures_ts ON notification_failures (last_attempt_at DESC);
COMMENT ON TABLE notification_failures IS
    'sysmonstm: notifications the notifier gave up on (NOTIFICATIONS), once per (event, channel)';

-- History of one metric of one machine, from the coarsest source that
-- fits: raw up to 2 h, 1 min up to 3 days, 5 min up to 35 days, else 1 h;
-- with p_step, the coarsest source not coarser than p_step, re-bucketed by
-- p_step unless it is the source's own width.
CREATE FUNCTION sysmon_history(p_machine text, p_metric text, p_from timestamptz,
                               p_to timestamptz, p_step interval DEFAULT NULL)
RETURNS TABLE (ts timestamptz, avg double precision, min double precision, max double precision,
               resolution text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    col text;
    src text;
    tbl text;
    width interval;
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
        -- A step equal to the source's width needs no re-bucketing: its
        -- buckets start on the same origin, one row each (the same answer,
        -- without a GROUP BY over a month of 5-minute rows: p50 34.5-48.8 ms
        -- before, 23-24 ms after, `just bench query`).
        width := CASE src WHEN '1m' THEN INTERVAL '1 minute' WHEN '5m' THEN INTERVAL '5 minutes'
                          ELSE INTERVAL '1 hour' END;
        IF p_step IS NULL OR p_step = width THEN
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
