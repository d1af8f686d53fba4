//! The child rows of a batch (filesystems, disks, interfaces, temperatures,
//! top processes): one UNNEST insert per table, in the batch's transaction.
//! Their primary keys make a redelivered snapshot add nothing.

use chrono::{DateTime, Utc};

use crate::decode::Decoded;

type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// Machine and timestamp of every child row, in order.
fn keys<T>(
    snaps: &[Decoded],
    pick: impl Fn(&Decoded) -> &[T],
) -> (Vec<String>, Vec<DateTime<Utc>>) {
    let mut ids = Vec::new();
    let mut ts = Vec::new();
    for s in snaps {
        for _ in pick(s) {
            ids.push(s.row.machine_id.clone());
            ts.push(s.row.ts);
        }
    }
    (ids, ts)
}

macro_rules! field {
    ($snaps:expr, $list:ident, $f:ident) => {
        $snaps
            .iter()
            .flat_map(|s| s.$list.iter().map(|c| c.$f.clone()))
            .collect::<Vec<_>>()
    };
}

pub async fn insert_all(tx: &mut Tx<'_>, snaps: &[Decoded]) -> Result<(), sqlx::Error> {
    if snaps.iter().any(|s| !s.filesystems.is_empty()) {
        let (ids, ts) = keys(snaps, |s| &s.filesystems);
        sqlx::query(
            "INSERT INTO metrics_fs (machine_id, ts, mount, fs_type, total_bytes, used_bytes,
                 free_bytes, used_percent)
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[],
                 $5::int8[], $6::int8[], $7::int8[], $8::float4[])
             ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(ts)
        .bind(field!(snaps, filesystems, mount))
        .bind(field!(snaps, filesystems, fs_type))
        .bind(field!(snaps, filesystems, total_bytes))
        .bind(field!(snaps, filesystems, used_bytes))
        .bind(field!(snaps, filesystems, free_bytes))
        .bind(field!(snaps, filesystems, used_percent))
        .execute(&mut **tx)
        .await?;
    }
    if snaps.iter().any(|s| !s.disks.is_empty()) {
        let (ids, ts) = keys(snaps, |s| &s.disks);
        sqlx::query(
            "INSERT INTO metrics_disk (machine_id, ts, name, read_bps, write_bps)
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::float4[],
                 $5::float4[])
             ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(ts)
        .bind(field!(snaps, disks, name))
        .bind(field!(snaps, disks, read_bps))
        .bind(field!(snaps, disks, write_bps))
        .execute(&mut **tx)
        .await?;
    }
    if snaps.iter().any(|s| !s.interfaces.is_empty()) {
        let (ids, ts) = keys(snaps, |s| &s.interfaces);
        sqlx::query(
            "INSERT INTO metrics_net (machine_id, ts, name, rx_bps, tx_bps, rx_errors_ps,
                 tx_errors_ps)
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::float4[],
                 $5::float4[], $6::float4[], $7::float4[])
             ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(ts)
        .bind(field!(snaps, interfaces, name))
        .bind(field!(snaps, interfaces, rx_bps))
        .bind(field!(snaps, interfaces, tx_bps))
        .bind(field!(snaps, interfaces, rx_errors_ps))
        .bind(field!(snaps, interfaces, tx_errors_ps))
        .execute(&mut **tx)
        .await?;
    }
    if snaps.iter().any(|s| !s.temperatures.is_empty()) {
        let (ids, ts) = keys(snaps, |s| &s.temperatures);
        sqlx::query(
            "INSERT INTO metrics_temp (machine_id, ts, label, celsius)
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::float4[])
             ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(ts)
        .bind(field!(snaps, temperatures, label))
        .bind(field!(snaps, temperatures, celsius))
        .execute(&mut **tx)
        .await?;
    }
    if snaps.iter().any(|s| !s.processes.is_empty()) {
        let (ids, ts) = keys(snaps, |s| &s.processes);
        let kinds: Vec<String> = snaps
            .iter()
            .flat_map(|s| s.processes.iter().map(|p| p.kind.to_owned()))
            .collect();
        sqlx::query(
            "INSERT INTO metrics_proc (machine_id, ts, kind, rank, pid, name, cpu_percent,
                 rss_bytes)
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int2[],
                 $5::int4[], $6::text[], $7::float4[], $8::int8[])
             ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(ts)
        .bind(kinds)
        .bind(field!(snaps, processes, rank))
        .bind(field!(snaps, processes, pid))
        .bind(field!(snaps, processes, name))
        .bind(field!(snaps, processes, cpu_percent))
        .bind(field!(snaps, processes, rss_bytes))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
