//! One tenant's ready keys at one priority of one job type, in order: the part of the ready
//! index that holds a key for every ready job (a million pending jobs, a million keys).
//!
//! A sorted sequence of chunks of at most [`CHUNK`] keys, each chunk a `VecDeque` (taking the
//! first key, what a lease does, moves nothing). Keys mostly arrive in order, or nearly (a job
//! enqueued now sorts after those enqueued before it; concurrent requests append a few keys out
//! of step). A full chunk hands its last key to the next chunk, or to a new last one, instead of
//! splitting, so such keys fill their chunks whole: 32 bytes a key, where `std`'s `BTreeSet`
//! filled its leaves 7 of 11 and took 67 bytes a key with its inner nodes
//! (`examples/model_memory.rs`). Only a key inside a full chunk whose next chunk is full too
//! splits it, where the key goes but never below half: keys in random order leave chunks
//! about 70 % full, never less than half.
//!
//! Finding a key's chunk is a binary search over the chunks' first keys, then one within the
//! chunk: `O(log n)`, plus `O(CHUNK)` to insert or remove inside a chunk and `O(n / CHUNK)` to
//! add or drop a chunk in the middle.

use std::collections::VecDeque;

/// Keys per chunk: 4 KiB of 32-byte keys, one allocator size class, no slack.
pub(super) const CHUNK: usize = 128;

#[derive(Default)]
pub(super) struct ReadyKeys<K> {
    /// Never an empty chunk.
    chunks: VecDeque<VecDeque<K>>,
    /// Counted as keys come and go: the ready-depth gauge reads it under the model's lock on
    /// every turn of the timer loop, where summing the chunks would take thousands of reads.
    len: usize,
}

impl<K: Ord + Copy> ReadyKeys<K> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk whose range holds `key`: the last whose first key is not above it (the first
    /// chunk for a key below them all). No chunk is ever empty.
    fn chunk_of(&self, key: &K) -> usize {
        self.chunks
            .partition_point(|c| c.front().is_some_and(|first| first <= key))
            .saturating_sub(1)
    }

    /// Adds `key`; false when it was already there.
    pub(super) fn insert(&mut self, key: K) -> bool {
        if self.chunks.is_empty() {
            self.chunks.push_back(Self::chunk_with(key));
            self.len = 1;
            return true;
        }
        let i = self.chunk_of(&key);
        let chunk = &mut self.chunks[i];
        let at = match chunk.binary_search(&key) {
            Ok(_) => return false,
            Err(at) => at,
        };
        if chunk.len() < CHUNK {
            chunk.insert(at, key);
            self.len += 1;
            return true;
        }
        // A full chunk. Its last key, or this key when it goes past that, moves on: to the
        // front of the next chunk when that has room, or into a new chunk after this one. Keys
        // arriving in order, or in ascending runs a little out of step (concurrent enqueues),
        // so leave full chunks behind them.
        let next_has_room = self.chunks.get(i + 1).is_some_and(|c| c.len() < CHUNK);
        if at == CHUNK || next_has_room {
            let moved = if at == CHUNK {
                key
            } else {
                let chunk = &mut self.chunks[i];
                let back = chunk.pop_back().expect("a full chunk");
                chunk.insert(at, key);
                back
            };
            if next_has_room {
                self.chunks[i + 1].push_front(moved);
            } else {
                self.chunks.insert(i + 1, Self::chunk_with(moved));
            }
        } else {
            // Inside a full chunk before a full one: split it where the key goes (the keys
            // after it will likely follow it), but never below half (keys in random order).
            let chunk = &mut self.chunks[i];
            let split = at.max(CHUNK / 2);
            let mut right = VecDeque::with_capacity(CHUNK);
            right.extend(chunk.drain(split..));
            if at < split {
                chunk.insert(at, key);
            } else {
                right.push_front(key);
            }
            self.chunks.insert(i + 1, right);
        }
        self.len += 1;
        true
    }

    /// Removes `key`; false when it was not there.
    pub(super) fn remove(&mut self, key: &K) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let i = self.chunk_of(key);
        let chunk = &mut self.chunks[i];
        let Ok(at) = chunk.binary_search(key) else {
            return false;
        };
        chunk.remove(at);
        if chunk.is_empty() {
            self.chunks.remove(i);
        }
        self.len -= 1;
        true
    }

    /// Refills the chunks whole, keeping the order: for keys that came in no order (a restore
    /// places jobs in the snapshot's order, which leaves chunks about 70 % full). One chunk
    /// more than the keys need at any moment.
    pub(super) fn compact(&mut self) {
        let mut out: VecDeque<VecDeque<K>> = VecDeque::new();
        for mut chunk in std::mem::take(&mut self.chunks) {
            while let Some(key) = chunk.pop_front() {
                match out.back_mut() {
                    Some(last) if last.len() < CHUNK => last.push_back(key),
                    _ => out.push_back(Self::chunk_with(key)),
                }
            }
        }
        self.chunks = out;
    }

    /// The keys in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &K> {
        self.chunks.iter().flatten()
    }

    fn chunk_with(key: K) -> VecDeque<K> {
        let mut chunk = VecDeque::with_capacity(CHUNK);
        chunk.push_back(key);
        chunk
    }
}

/// As a set: what `BTreeSet` printed.
impl<K: Ord + Copy + std::fmt::Debug> std::fmt::Debug for ReadyKeys<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A small deterministic generator (xorshift), so a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn check(keys: &ReadyKeys<u64>, model: &BTreeSet<u64>) {
        assert_eq!(keys.len(), model.len());
        assert_eq!(keys.is_empty(), model.is_empty());
        assert!(keys.iter().eq(model.iter()), "the keys leave the order");
        assert!(keys
            .chunks
            .iter()
            .all(|c| !c.is_empty() && c.len() <= CHUNK));
    }

    /// Inserts and removes, in order, in reverse, at random and in mixes of them, answer and
    /// iterate as `BTreeSet` does.
    #[test]
    fn keys_answer_as_a_btreeset_does_for_any_mix_of_inserts_and_removes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..40 {
            let (mut keys, mut model) = (ReadyKeys::default(), BTreeSet::new());
            let mut next = 1_000_000u64;
            for step in 0..4_000 {
                let r = rng.next();
                let key = match (round % 4, r % 10) {
                    // Mostly in order, as enqueues arrive.
                    (0, 0..=8) | (1, 0..=4) => {
                        next += 1 + r % 3;
                        next
                    }
                    // Reverse order.
                    (2, _) => 1_000_000 - step,
                    _ => rng.next() % 3_000_000,
                };
                match rng.next() % 5 {
                    // Take the first, as a lease does.
                    0 => {
                        let first = model.first().copied();
                        if let Some(first) = first {
                            assert_eq!(keys.iter().next(), Some(&first));
                            assert!(keys.remove(&first));
                            model.remove(&first);
                        }
                    }
                    // Remove one present (a cancel) or absent.
                    1 => {
                        let probe = if r.is_multiple_of(2) {
                            model.iter().nth((r % 97) as usize).copied().unwrap_or(key)
                        } else {
                            key
                        };
                        assert_eq!(keys.remove(&probe), model.remove(&probe));
                    }
                    _ => assert_eq!(keys.insert(key), model.insert(key)),
                }
            }
            check(&keys, &model);
            for k in model.clone() {
                assert!(keys.remove(&k));
                model.remove(&k);
            }
            check(&keys, &model);
            assert!(keys.chunks.is_empty());
        }
    }

    /// Keys in random order fill their chunks about 70 %; `compact` fills them whole and
    /// keeps the order.
    #[test]
    fn compact_refills_the_chunks_of_keys_that_came_in_no_order() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let (mut keys, mut model) = (ReadyKeys::default(), BTreeSet::new());
        for _ in 0..50_000 {
            let key = rng.next();
            assert_eq!(keys.insert(key), model.insert(key));
        }
        let fill = |k: &ReadyKeys<u64>| k.len() as f64 / (k.chunks.len() * CHUNK) as f64;
        assert!(
            fill(&keys) < 0.8,
            "chunks {:.0} % full",
            fill(&keys) * 100.0
        );
        keys.compact();
        check(&keys, &model);
        assert_eq!(keys.chunks.len(), model.len().div_ceil(CHUNK));
        // And it goes on answering as before.
        for k in model.iter().step_by(7).copied().collect::<Vec<_>>() {
            assert!(keys.remove(&k));
            model.remove(&k);
        }
        assert!(keys.insert(1));
        model.insert(1);
        check(&keys, &model);
    }

    /// Keys that arrive in order fill their chunks whole: that is the memory this saves.
    #[test]
    fn keys_arriving_in_order_fill_their_chunks() {
        let mut keys = ReadyKeys::default();
        for k in 0..(10 * CHUNK as u64) {
            assert!(keys.insert(k));
        }
        assert_eq!(keys.chunks.len(), 10);
        assert!(keys.chunks.iter().all(|c| c.len() == CHUNK));
        // Nearly in order, as concurrent batches append: ascending runs of 500 keys, each
        // group of 8 runs arriving in reverse (the worst order within the group): each run
        // leaves one chunk part full, where the next run's keys start (87 % here).
        let mut near = ReadyKeys::default();
        let mut model = BTreeSet::new();
        for group in 0..20u64 {
            for run in (0..8u64).rev() {
                for k in 0..500 {
                    let key = (group * 8 + run) * 500 + k;
                    assert_eq!(near.insert(key), model.insert(key));
                }
            }
        }
        check(&near, &model);
        let fill = model.len() as f64 / (near.chunks.len() * CHUNK) as f64;
        assert!(fill > 0.85, "chunks {:.0} % full", fill * 100.0);
        // Runs of 8 streams interleaved key by key fill them at least half.
        let mut mixed = ReadyKeys::default();
        for round in 0..100u64 {
            for stream in 0..8u64 {
                for k in 0..100u64 {
                    mixed.insert((round * 100 + k) * 8 + stream);
                }
            }
        }
        let fill = mixed.len() as f64 / (mixed.chunks.len() * CHUNK) as f64;
        assert!(fill >= 0.5, "chunks {:.0} % full", fill * 100.0);
        // Taking from the front keeps the rest in place.
        assert!(keys.remove(&0));
        assert_eq!(keys.iter().next(), Some(&1));
        assert_eq!(keys.len(), 10 * CHUNK - 1);
    }
}
