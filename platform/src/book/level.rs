//! Price levels: the FIFO of orders resting at one price, as an intrusive doubly
//! linked list through the [`Orders`] slab, with its total quantity and order count
//! kept in step on every change. Levels live in their own slab ([`Levels`]) so that a
//! resting order can name its level and a cancel reaches it without a tree search.

use super::orders::{Orders, NIL};
use crate::domain::{PriceTicks, Shares, Side};

/// Levels by slot, reused through a free list.
#[derive(Clone, Default)]
pub(super) struct Levels {
    slots: Vec<Level>,
    free: Vec<u32>,
}

impl Levels {
    /// A new empty level at `price`; returns its slot.
    pub fn open(&mut self, price: PriceTicks) -> u32 {
        let level = Level { price, total: Shares(0), count: 0, head: NIL, tail: NIL };
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = level;
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("more than u32::MAX price levels");
                self.slots.push(level);
                slot
            }
        }
    }

    /// Frees the slot of a level that has become empty.
    pub fn close(&mut self, slot: u32) {
        assert!(self.get(slot).is_empty(), "closing a level that holds orders");
        self.free.push(slot);
    }

    pub fn get(&self, slot: u32) -> &Level {
        &self.slots[slot as usize]
    }

    pub fn get_mut(&mut self, slot: u32) -> &mut Level {
        &mut self.slots[slot as usize]
    }

    /// Checks that exactly `open` levels are in use (O(1)).
    pub fn check(&self, open: usize) {
        assert_eq!(open + self.free.len(), self.slots.len(), "level slots leaked");
    }
}

/// The orders resting at one price, oldest first.
#[derive(Clone, Debug)]
pub(super) struct Level {
    pub price: PriceTicks,
    /// Sum of the remaining quantity of the orders here.
    pub total: Shares,
    /// Number of orders here.
    pub count: u32,
    head: u32,
    tail: u32,
}

impl Level {
    /// The oldest order, the next to match.
    pub fn head(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends the (unlinked) order in `slot` at the back of the FIFO.
    pub fn push_back(&mut self, orders: &mut Orders, slot: u32) {
        let old_tail = self.tail;
        let order = orders.get_mut(slot);
        assert!(order.remaining.0 > 0, "empty order {} joins a level", order.id);
        assert_eq!(order.price, self.price, "order {} joins the level of another price", order.id);
        order.prev = old_tail;
        order.next = NIL;
        let remaining = order.remaining;
        match old_tail {
            NIL => self.head = slot,
            tail => orders.get_mut(tail).next = slot,
        }
        self.tail = slot;
        self.count += 1;
        self.total = Shares(self.total.0.checked_add(remaining.0).expect("level total overflows"));
    }

    /// Unlinks the order in `slot` from the FIFO, wherever it is.
    pub fn unlink(&mut self, orders: &mut Orders, slot: u32) {
        let order = orders.get(slot);
        let (prev, next, remaining) = (order.prev, order.next, order.remaining);
        match prev {
            NIL => {
                assert_eq!(self.head, slot, "first order is not the level's head");
                self.head = next;
            }
            prev => orders.get_mut(prev).next = next,
        }
        match next {
            NIL => {
                assert_eq!(self.tail, slot, "last order is not the level's tail");
                self.tail = prev;
            }
            next => orders.get_mut(next).prev = prev,
        }
        self.count = self.count.checked_sub(1).expect("unlink from an empty level");
        self.total = Shares(self.total.0 - remaining.0);
        assert!(self.total.0 >= 0, "level total went negative");
        assert_eq!(self.count == 0, self.total.0 == 0, "level count and total disagree");
    }

    /// Takes `qty` off the remaining quantity of the order in `slot` (it stays linked,
    /// even at zero, until the caller unlinks it).
    pub fn reduce(&mut self, orders: &mut Orders, slot: u32, qty: Shares) {
        let order = orders.get_mut(slot);
        assert!(qty.0 > 0 && qty <= order.remaining, "reduce {} by {qty:?} of {:?}", order.id, order.remaining);
        order.remaining = Shares(order.remaining.0 - qty.0);
        self.total = Shares(self.total.0 - qty.0);
        assert!(self.total.0 >= 0, "level total went negative");
    }

    /// Checks the FIFO of this level, in slot `level` on `side`, against the orders
    /// slab (O(orders here)): links both ways, every order on this side, at this
    /// price, naming this level and with a positive remainder, arrivals strictly
    /// increasing, and count and total equal to what the list holds. Returns the count.
    pub fn check(&self, orders: &Orders, level: u32, side: Side) -> usize {
        let price = self.price;
        assert!(self.count > 0 && self.head != NIL, "empty level kept at {price:?}");
        let (mut slot, mut prev, mut count, mut total) = (self.head, NIL, 0u32, 0i64);
        let mut last_arrival = None;
        while slot != NIL {
            let order = orders.get(slot);
            assert_eq!(order.prev, prev, "broken back link at {price:?}");
            assert_eq!(order.price, price, "order {} filed under another price", order.id);
            assert_eq!(order.level, level, "order {} names another level", order.id);
            assert_eq!(order.side, side, "order {} on the wrong side", order.id);
            assert!(order.remaining.0 > 0, "order {} rests with nothing left", order.id);
            assert!(last_arrival < Some(order.arrival), "FIFO out of arrival order at {price:?}");
            last_arrival = Some(order.arrival);
            count += 1;
            total += order.remaining.0;
            prev = slot;
            slot = order.next;
        }
        assert_eq!(self.tail, prev, "tail is not the last order at {price:?}");
        assert_eq!(self.count, count, "level count is off at {price:?}");
        assert_eq!(self.total, Shares(total), "level total is off at {price:?}");
        count as usize
    }

    /// The slots of this level's orders, oldest first.
    pub fn slots<'a>(&self, orders: &'a Orders) -> impl Iterator<Item = u32> + 'a {
        let mut slot = self.head;
        std::iter::from_fn(move || {
            (slot != NIL).then(|| {
                let current = slot;
                slot = orders.get(current).next;
                current
            })
        })
    }
}
