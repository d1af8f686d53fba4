-- Per-device detail moves from 19 arrays into one JSON text column.
--
-- PostgreSQL receives each array of a binary COPY through the array's
-- receive function and one function call per element. Measured on the 2-core
-- reference box (binary COPY of 200 000 bench snapshots from a file, one
-- backend, medians of 4): the 19 detail arrays took 3.1 times as long as all
-- the scalar columns of the row together; the same detail as one text field
-- costs little more than copying its bytes, so the whole row went in 2.0 times
-- as fast (1.55 s -> 0.78 s), and is 19 % smaller (823 B instead of 1 016 B).
--
-- The persister writes `detail` as
--   {"fs":[[mount, fs_type, total_bytes, used_bytes, free_bytes], …],
--    "disks":[[name, read_bps, write_bps], …],
--    "ifaces":[[name, rx_bps, tx_bps, rx_errors_ps, tx_errors_ps], …],
--    "temps":[[label, celsius], …],
--    "procs":[[pid, name, cpu_percent, rss_bytes], …]}
-- one inner array per device in the agent's order, empty sections left out,
-- an absent rate as null, NaN and infinities as the strings "NaN",
-- "Infinity", "-Infinity". It is `text`, not `json`/`jsonb`, because those
-- parse it again on the way in (`json` took 50 % longer than `text`);
-- the persister is its only writer. Read it through the views below, or as
-- `detail::jsonb`.
--
-- Rows written before this migration keep their arrays (`fs_mount` …
-- `procs_rss_bytes`, NULL in new rows): each view reads both forms, so
-- nothing is rewritten and readers see no change.

ALTER TABLE metrics ADD COLUMN detail text;
COMMENT ON COLUMN metrics.detail IS
    'sysmonstm: per-device detail as JSON (see migration 0009); read through the metrics_fs … metrics_proc views';

CREATE OR REPLACE VIEW metrics_fs AS
SELECT m.machine_id, m.ts, d.mount, d.fs_type, d.total_bytes, d.used_bytes, d.free_bytes,
       CASE WHEN d.total_bytes > 0 THEN (d.used_bytes::float8 * 100 / d.total_bytes)::real END AS used_percent
FROM metrics m,
     unnest(m.fs_mount, m.fs_type, m.fs_total_bytes, m.fs_used_bytes, m.fs_free_bytes)
         AS d(mount, fs_type, total_bytes, used_bytes, free_bytes)
WHERE m.fs_mount IS NOT NULL
UNION ALL
SELECT m.machine_id, m.ts, e->>0, e->>1, (e->>2)::int8, (e->>3)::int8, (e->>4)::int8,
       CASE WHEN (e->>2)::int8 > 0 THEN ((e->>3)::float8 * 100 / (e->>2)::int8)::real END
FROM metrics m, jsonb_array_elements(m.detail::jsonb -> 'fs') AS e
WHERE m.detail IS NOT NULL;

CREATE OR REPLACE VIEW metrics_disk AS
SELECT m.machine_id, m.ts, d.name, d.read_bps, d.write_bps
FROM metrics m, unnest(m.disks_name, m.disks_read_bps, m.disks_write_bps) AS d(name, read_bps, write_bps)
WHERE m.disks_name IS NOT NULL
UNION ALL
SELECT m.machine_id, m.ts, e->>0, (e->>1)::real, (e->>2)::real
FROM metrics m, jsonb_array_elements(m.detail::jsonb -> 'disks') AS e
WHERE m.detail IS NOT NULL;

CREATE OR REPLACE VIEW metrics_net AS
SELECT m.machine_id, m.ts, d.name, d.rx_bps, d.tx_bps, d.rx_errors_ps, d.tx_errors_ps
FROM metrics m,
     unnest(m.ifaces_name, m.ifaces_rx_bps, m.ifaces_tx_bps, m.ifaces_rx_errors_ps, m.ifaces_tx_errors_ps)
         AS d(name, rx_bps, tx_bps, rx_errors_ps, tx_errors_ps)
WHERE m.ifaces_name IS NOT NULL
UNION ALL
SELECT m.machine_id, m.ts, e->>0, (e->>1)::real, (e->>2)::real, (e->>3)::real, (e->>4)::real
FROM metrics m, jsonb_array_elements(m.detail::jsonb -> 'ifaces') AS e
WHERE m.detail IS NOT NULL;

CREATE OR REPLACE VIEW metrics_temp AS
SELECT m.machine_id, m.ts, d.label, d.celsius
FROM metrics m, unnest(m.temps_label, m.temps_celsius) AS d(label, celsius)
WHERE m.temps_label IS NOT NULL
UNION ALL
SELECT m.machine_id, m.ts, e->>0, (e->>1)::real
FROM metrics m, jsonb_array_elements(m.detail::jsonb -> 'temps') AS e
WHERE m.detail IS NOT NULL;

-- kind 'cpu' (top by CPU) or 'memory' (top by memory); rank 1 = the top.
CREATE OR REPLACE VIEW metrics_proc AS
SELECT m.machine_id, m.ts,
       CASE WHEN d.ord <= m.procs_top_cpu THEN 'cpu' ELSE 'memory' END AS kind,
       (CASE WHEN d.ord <= m.procs_top_cpu THEN d.ord ELSE d.ord - m.procs_top_cpu END)::smallint AS rank,
       d.pid, d.name, d.cpu_percent, d.rss_bytes
FROM metrics m,
     unnest(m.procs_pid, m.procs_name, m.procs_cpu_percent, m.procs_rss_bytes) WITH ORDINALITY
         AS d(pid, name, cpu_percent, rss_bytes, ord)
WHERE m.procs_pid IS NOT NULL
UNION ALL
SELECT m.machine_id, m.ts,
       CASE WHEN e.ord <= m.procs_top_cpu THEN 'cpu' ELSE 'memory' END,
       (CASE WHEN e.ord <= m.procs_top_cpu THEN e.ord ELSE e.ord - m.procs_top_cpu END)::smallint,
       (e.v->>0)::int4, e.v->>1, (e.v->>2)::real, (e.v->>3)::int8
FROM metrics m, jsonb_array_elements(m.detail::jsonb -> 'procs') WITH ORDINALITY AS e(v, ord)
WHERE m.detail IS NOT NULL;

COMMENT ON VIEW metrics_fs IS 'sysmonstm: one row per filesystem per snapshot (from metrics.detail, or the fs_* arrays of rows before 0009)';
COMMENT ON VIEW metrics_disk IS 'sysmonstm: one row per disk per snapshot (from metrics.detail, or the disks_* arrays of rows before 0009)';
COMMENT ON VIEW metrics_net IS 'sysmonstm: one row per interface per snapshot (from metrics.detail, or the ifaces_* arrays of rows before 0009)';
COMMENT ON VIEW metrics_temp IS 'sysmonstm: one row per sensor per snapshot (from metrics.detail, or the temps_* arrays of rows before 0009)';
COMMENT ON VIEW metrics_proc IS 'sysmonstm: one row per top process per snapshot (from metrics.detail, or the procs_* arrays of rows before 0009)';
