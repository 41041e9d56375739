-- `jobs` is a queue: each job's row changes status two or three times in seconds, and every
-- change leaves the old version's entries in the status index (status is indexed, so no update
-- is HOT). After a burst, those dead entries sit at the newest end of `pending`: with 150,000
-- jobs leased and completed on top of 1,000,000 pending, a list of the newest pending jobs walked
-- about 1,100 index pages of them (the first ones visiting the heap too: 130-150 ms), until a
-- vacuum. By autovacuum's default rule (dead rows past 50 + 20 % of the table) that vacuum
-- waits for 200,000 dead rows at a million jobs; queue tables are usually given a few per cent
-- instead (docs/performance.md, "The list after a burst"). The projector's upkeep reads this
-- setting as autovacuum does.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02);
