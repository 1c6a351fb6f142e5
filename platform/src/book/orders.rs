//! The store of resting orders: a slab of slots reused through a free list, and an
//! index from order id to slot.
//!
//! Slots are addressed by `u32` so that the per-level FIFO links ([`super::level`])
//! stay small. The index is a `HashMap` with a fixed hasher ([`IdHasher`]): it never
//! reads OS randomness, and nothing ever iterates it where the order could reach
//! output (only [`Orders::check`] walks it, and only to count).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::domain::{AccountId, OrderId, PriceTicks, Shares, Side};

/// The "no slot" link at the ends of a level's FIFO.
pub(super) const NIL: u32 = u32::MAX;

/// One order resting in the book, and its links in its level's FIFO.
#[derive(Clone, Debug)]
pub(super) struct Resting {
    pub id: OrderId,
    pub account: AccountId,
    pub side: Side,
    pub price: PriceTicks,
    pub remaining: Shares,
    /// Rank of arrival in the book; strictly increasing along every level's FIFO.
    pub arrival: u64,
    /// Slot of its level in [`super::level::Levels`].
    pub level: u32,
    pub prev: u32,
    pub next: u32,
}

/// Resting orders by slot, with an id index.
#[derive(Clone, Default)]
pub(super) struct Orders {
    slots: Vec<Resting>,
    free: Vec<u32>,
    by_id: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
}

impl Orders {
    /// The slot of the resting order `id`.
    pub fn find(&self, id: OrderId) -> Option<u32> {
        self.by_id.get(&id.0).copied()
    }

    pub fn get(&self, slot: u32) -> &Resting {
        &self.slots[slot as usize]
    }

    pub fn get_mut(&mut self, slot: u32) -> &mut Resting {
        &mut self.slots[slot as usize]
    }

    /// Number of resting orders.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Stores a new resting order (unlinked) and returns its slot.
    pub fn insert(&mut self, order: Resting) -> u32 {
        assert!(order.remaining.0 > 0, "resting order {} with {:?}", order.id, order.remaining);
        let id = order.id;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = order;
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("more than u32::MAX resting orders");
                assert!(slot != NIL, "slot index collides with NIL");
                self.slots.push(order);
                slot
            }
        };
        let previous = self.by_id.insert(id.0, slot);
        assert!(previous.is_none(), "order {id} inserted twice");
        slot
    }

    /// Forgets the order in `slot` (already unlinked from its level) and frees the slot.
    pub fn remove(&mut self, slot: u32) -> Resting {
        let order = self.slots[slot as usize].clone();
        let indexed = self.by_id.remove(&order.id.0);
        assert_eq!(indexed, Some(slot), "order {} not indexed at its slot", order.id);
        self.free.push(slot);
        order
    }

    /// Checks the slab and index against each other (O(n)); `linked` is the number of
    /// orders the caller found linked into levels.
    pub fn check(&self, linked: usize) {
        assert_eq!(self.by_id.len(), linked, "index size != orders linked into levels");
        assert_eq!(self.by_id.len() + self.free.len(), self.slots.len(), "slots leaked");
        for (&id, &slot) in &self.by_id {
            assert_eq!(self.get(slot).id.0, id, "index points at another order's slot");
        }
    }
}

/// A fixed multiplicative hasher for `u64` order ids (FxHash-style): deterministic
/// across runs and machines, and fast. The final fold mixes high product bits into
/// the low bits the table uses to pick a bucket, so ids that differ only in high
/// bits still spread.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher {
    hash: u64,
}

impl IdHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.add(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn finish(&self) -> u64 {
        self.hash ^ (self.hash >> 32)
    }
}
