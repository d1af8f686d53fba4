-- Per-device detail moves into the snapshot's own row, as arrays.
--
-- 0002 kept filesystems, disks, interfaces, temperatures and top processes
-- in five child tables: 13 rows for a typical snapshot, each with its own
-- primary-key index. Measured on the 2-core reference box, a binary COPY of
-- 1 M snapshots took 83 s as child rows and 22 s as one row with arrays
-- (`just bench ingest` prints today's figures), so the detail is stored as
-- parallel arrays in `metrics`, one element per device, in the agent's
-- order. The old names stay as views, so readers (Grafana, psql) still see
-- one row per device.

ALTER TABLE metrics
    ADD COLUMN fs_mount            text[],
    ADD COLUMN fs_type             text[],
    ADD COLUMN fs_total_bytes      bigint[],
    ADD COLUMN fs_used_bytes       bigint[],
    ADD COLUMN fs_free_bytes       bigint[],
    ADD COLUMN disks_name          text[],
    ADD COLUMN disks_read_bps      real[],
    ADD COLUMN disks_write_bps     real[],
    ADD COLUMN ifaces_name         text[],
    ADD COLUMN ifaces_rx_bps       real[],
    ADD COLUMN ifaces_tx_bps       real[],
    ADD COLUMN ifaces_rx_errors_ps real[],
    ADD COLUMN ifaces_tx_errors_ps real[],
    ADD COLUMN temps_label         text[],
    ADD COLUMN temps_celsius       real[],
    -- procs_*: the top processes by CPU (the first procs_top_cpu entries),
    -- then those by memory.
    ADD COLUMN procs_top_cpu       smallint,
    ADD COLUMN procs_pid           integer[],
    ADD COLUMN procs_name          text[],
    ADD COLUMN procs_cpu_percent   real[],
    ADD COLUMN procs_rss_bytes     bigint[];

-- The child rows already stored move into their snapshot's row.
UPDATE metrics m
SET fs_mount = c.mount, fs_type = c.fs_type, fs_total_bytes = c.total, fs_used_bytes = c.used,
    fs_free_bytes = c.free
FROM (SELECT machine_id, ts, array_agg(mount ORDER BY mount) mount,
             array_agg(fs_type ORDER BY mount) fs_type, array_agg(total_bytes ORDER BY mount) total,
             array_agg(used_bytes ORDER BY mount) used, array_agg(free_bytes ORDER BY mount) free
      FROM metrics_fs GROUP BY machine_id, ts) c
WHERE m.machine_id = c.machine_id AND m.ts = c.ts;

UPDATE metrics m
SET disks_name = c.name, disks_read_bps = c.r, disks_write_bps = c.w
FROM (SELECT machine_id, ts, array_agg(name ORDER BY name) name, array_agg(read_bps ORDER BY name) r,
             array_agg(write_bps ORDER BY name) w
      FROM metrics_disk GROUP BY machine_id, ts) c
WHERE m.machine_id = c.machine_id AND m.ts = c.ts;

UPDATE metrics m
SET ifaces_name = c.name, ifaces_rx_bps = c.rx, ifaces_tx_bps = c.tx, ifaces_rx_errors_ps = c.rxe,
    ifaces_tx_errors_ps = c.txe
FROM (SELECT machine_id, ts, array_agg(name ORDER BY name) name, array_agg(rx_bps ORDER BY name) rx,
             array_agg(tx_bps ORDER BY name) tx, array_agg(rx_errors_ps ORDER BY name) rxe,
             array_agg(tx_errors_ps ORDER BY name) txe
      FROM metrics_net GROUP BY machine_id, ts) c
WHERE m.machine_id = c.machine_id AND m.ts = c.ts;

UPDATE metrics m
SET temps_label = c.label, temps_celsius = c.celsius
FROM (SELECT machine_id, ts, array_agg(label ORDER BY label) label, array_agg(celsius ORDER BY label) celsius
      FROM metrics_temp GROUP BY machine_id, ts) c
WHERE m.machine_id = c.machine_id AND m.ts = c.ts;

UPDATE metrics m
SET procs_top_cpu = c.n_cpu, procs_pid = c.pid, procs_name = c.name, procs_cpu_percent = c.cpu,
    procs_rss_bytes = c.rss
FROM (SELECT machine_id, ts, count(*) FILTER (WHERE kind = 'cpu')::smallint n_cpu,
             array_agg(pid ORDER BY kind, rank) pid, array_agg(name ORDER BY kind, rank) name,
             array_agg(cpu_percent ORDER BY kind, rank) cpu, array_agg(rss_bytes ORDER BY kind, rank) rss
      FROM metrics_proc GROUP BY machine_id, ts) c
WHERE m.machine_id = c.machine_id AND m.ts = c.ts;

DROP TABLE metrics_fs, metrics_disk, metrics_net, metrics_temp, metrics_proc;

CREATE OR REPLACE FUNCTION sysmon_series_tables() RETURNS text[] LANGUAGE sql IMMUTABLE AS
$$ SELECT ARRAY['metrics'] $$;

-- One row per device, as before. A filter on machine_id and ts reaches the
-- index of `metrics`.
CREATE VIEW metrics_fs AS
SELECT m.machine_id, m.ts, d.mount, d.fs_type, d.total_bytes, d.used_bytes, d.free_bytes,
       CASE WHEN d.total_bytes > 0 THEN (d.used_bytes::float8 * 100 / d.total_bytes)::real END AS used_percent
FROM metrics m,
     unnest(m.fs_mount, m.fs_type, m.fs_total_bytes, m.fs_used_bytes, m.fs_free_bytes)
         AS d(mount, fs_type, total_bytes, used_bytes, free_bytes)
WHERE m.fs_mount IS NOT NULL;

CREATE VIEW metrics_disk AS
SELECT m.machine_id, m.ts, d.name, d.read_bps, d.write_bps
FROM metrics m, unnest(m.disks_name, m.disks_read_bps, m.disks_write_bps) AS d(name, read_bps, write_bps)
WHERE m.disks_name IS NOT NULL;

CREATE VIEW metrics_net AS
SELECT m.machine_id, m.ts, d.name, d.rx_bps, d.tx_bps, d.rx_errors_ps, d.tx_errors_ps
FROM metrics m,
     unnest(m.ifaces_name, m.ifaces_rx_bps, m.ifaces_tx_bps, m.ifaces_rx_errors_ps, m.ifaces_tx_errors_ps)
         AS d(name, rx_bps, tx_bps, rx_errors_ps, tx_errors_ps)
WHERE m.ifaces_name IS NOT NULL;

CREATE VIEW metrics_temp AS
SELECT m.machine_id, m.ts, d.label, d.celsius
FROM metrics m, unnest(m.temps_label, m.temps_celsius) AS d(label, celsius)
WHERE m.temps_label IS NOT NULL;

-- kind 'cpu' (top by CPU) or 'memory' (top by memory); rank 1 = the top.
CREATE VIEW metrics_proc AS
SELECT m.machine_id, m.ts,
       CASE WHEN d.ord <= m.procs_top_cpu THEN 'cpu' ELSE 'memory' END AS kind,
       (CASE WHEN d.ord <= m.procs_top_cpu THEN d.ord ELSE d.ord - m.procs_top_cpu END)::smallint AS rank,
       d.pid, d.name, d.cpu_percent, d.rss_bytes
FROM metrics m,
     unnest(m.procs_pid, m.procs_name, m.procs_cpu_percent, m.procs_rss_bytes) WITH ORDINALITY
         AS d(pid, name, cpu_percent, rss_bytes, ord)
WHERE m.procs_pid IS NOT NULL;

COMMENT ON VIEW metrics_fs IS 'sysmonstm: one row per filesystem per snapshot (from metrics.fs_* arrays)';
COMMENT ON VIEW metrics_disk IS 'sysmonstm: one row per disk per snapshot (from metrics.disks_* arrays)';
COMMENT ON VIEW metrics_net IS 'sysmonstm: one row per interface per snapshot (from metrics.ifaces_* arrays)';
COMMENT ON VIEW metrics_temp IS 'sysmonstm: one row per sensor per snapshot (from metrics.temps_* arrays)';
COMMENT ON VIEW metrics_proc IS 'sysmonstm: one row per top process per snapshot (from metrics.procs_* arrays)';
