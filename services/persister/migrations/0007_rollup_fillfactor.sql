-- Plain path: room on every page of the rollup accumulators for the next
-- version of each row.
--
-- The statement trigger updates the current bucket of every machine in a
-- batch, at each of the three widths, many times over before the bucket
-- closes. With full pages (fillfactor 100) each update puts the new row
-- version on another page and adds an entry to the primary key for it; with
-- half of each page kept free the update stays on its page (a HOT update:
-- no index entry, and the old version is pruned in place). Pages written
-- from now on keep the space; those already full stay as they are.
DO $$
DECLARE
    t text;
BEGIN
    IF (SELECT mode FROM sysmon_storage) = 'plain' THEN
        FOREACH t IN ARRAY ARRAY['metrics_1m_acc', 'metrics_5m_acc', 'metrics_1h_acc'] LOOP
            EXECUTE format('ALTER TABLE %I SET (fillfactor = 50)', t);
        END LOOP;
    END IF;
END $$;
