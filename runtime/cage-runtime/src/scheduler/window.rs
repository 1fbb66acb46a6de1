//! Delivery windows: at most a cage's `window` calls are being handed to it at once, so a slow
//! or stalled cage holds a bounded number of connections and calls, and calls for other cages
//! keep flowing past the ones held back for it.

use std::collections::{HashMap, HashSet};

/// Calls held back per cage are remembered up to this many, so the due scan can skip them
/// (beyond it they are simply looked at again).
const HELD_PER_CAGE: usize = 4096;

/// Calls being delivered, and due calls waiting for room, per target cage.
#[derive(Debug, Default)]
pub struct DeliveryWindows {
    in_flight: HashMap<String, usize>,
    held: HashMap<String, HashSet<String>>,
    held_ids: HashSet<String>,
}

impl DeliveryWindows {
    /// Whether one more call for `target` fits in its `window`.
    pub fn has_room(&self, target: &str, window: usize) -> bool {
        self.in_flight.get(target).copied().unwrap_or(0) < window
    }

    /// Calls being handed to `target` now.
    pub fn in_flight(&self, target: &str) -> usize {
        self.in_flight.get(target).copied().unwrap_or(0)
    }

    /// Notes that due call `id` for `target` waits for room.
    pub fn hold(&mut self, target: &str, id: &str) {
        let held = self.held.entry(target.to_owned()).or_default();
        if held.len() < HELD_PER_CAGE && held.insert(id.to_owned()) {
            self.held_ids.insert(id.to_owned());
        }
    }

    /// Whether `id` is waiting for room (the due scan passes over it).
    pub fn is_held(&self, id: &str) -> bool {
        self.held_ids.contains(id)
    }

    /// How many calls are waiting for room, over all cages.
    pub fn held(&self) -> usize {
        self.held_ids.len()
    }

    /// A delivery of one call to `target` starts.
    pub fn start(&mut self, target: &str) {
        *self.in_flight.entry(target.to_owned()).or_default() += 1;
    }

    /// A delivery to `target` ended: there is room again, so the calls held for it are looked
    /// at again.
    pub fn end(&mut self, target: &str) {
        if let Some(n) = self.in_flight.get_mut(target) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(target);
            }
        }
        if let Some(held) = self.held.remove(target) {
            for id in held {
                self.held_ids.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_window_holds_calls_until_a_delivery_ends() {
        let mut w = DeliveryWindows::default();
        assert!(w.has_room("slow", 2));
        w.start("slow");
        w.start("slow");
        assert!(!w.has_room("slow", 2));
        assert!(w.has_room("other", 2), "windows are per cage");
        w.hold("slow", "c3");
        w.hold("slow", "c3");
        w.hold("slow", "c4");
        assert!(w.is_held("c3") && w.is_held("c4") && !w.is_held("c5"));
        assert_eq!(w.held(), 2);
        w.end("slow");
        assert!(w.has_room("slow", 2));
        assert_eq!((w.held(), w.in_flight("slow")), (0, 1));
        assert!(!w.is_held("c3"));
        w.end("slow");
        w.end("slow");
        assert_eq!(w.in_flight("slow"), 0);
    }

    #[test]
    fn held_calls_are_remembered_up_to_a_cap() {
        let mut w = DeliveryWindows::default();
        for i in 0..HELD_PER_CAGE + 10 {
            w.hold("slow", &format!("c{i}"));
        }
        assert_eq!(w.held(), HELD_PER_CAGE);
    }
}
