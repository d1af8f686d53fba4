-- One wide row per snapshot. The primary key (machine_id, ts) makes a
-- redelivered snapshot change nothing: the persister inserts with
-- ON CONFLICT DO NOTHING.
CREATE TABLE metrics (
    machine_id          text             NOT NULL,
    ts                  timestamptz      NOT NULL,
    seq                 bigint           NOT NULL,
    interval_ms         integer          NOT NULL,
    cpu_percent         real,
    mem_total_bytes     bigint,
    mem_used_bytes      bigint,
    mem_available_bytes bigint,
    swap_total_bytes    bigint,
    swap_used_bytes     bigint,
    load1               double precision,
    load5               double precision,
    load15              double precision,
    uptime_s            bigint,
    process_count       integer,
    received_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (machine_id, ts)
);

COMMENT ON TABLE metrics IS 'sysmonstm: one row per agent snapshot; written only by sysmonstm-persister';
