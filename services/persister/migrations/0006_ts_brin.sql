-- TimescaleDB path: the time index of `metrics` becomes a BRIN index.
--
-- create_hypertable gave `metrics` a B-tree on (ts DESC) beside the primary
-- key (machine_id, ts). Its only reader is the continuous aggregates'
-- refresh, which asks for a span of time; rows arrive in time order, so a
-- BRIN index (a few bytes per 1 MB of table) finds that span as well, and
-- costs the writer next to nothing, where the B-tree took an index entry
-- and its WAL for every row. History of one machine uses the primary key,
-- as before. autosummarize keeps the summaries current without a VACUUM.
DO $$
BEGIN
    IF (SELECT mode FROM sysmon_storage) = 'timescaledb' THEN
        DROP INDEX IF EXISTS metrics_ts_idx;
        CREATE INDEX metrics_ts_brin ON metrics USING brin (ts) WITH (autosummarize = on);
    END IF;
END $$;
