//! Byte layout of the queue tree. One tree, one prefix byte per kind of entry; times are
//! big-endian so that key order is time order.

/// The record every cages queue database holds from its first open, to tell a database that
/// lost its contents from a new one.
pub const MARKER: &[u8] = b"!cages-queue";
/// `c` + id → pending call record.
pub const CALL: u8 = b'c';
/// `d` + due ms + inverted priority + id + 0 + value → value, where the value is the call's
/// queue, and for a call to deliver, 0 and its target: the schedule, in due order (kept in
/// memory only, partitioned by value: see [`super::tables`]).
pub const DUE: u8 = b'd';
/// `x` + id → dead call record.
pub const DEAD: u8 = b'x';
/// `h` + id → history of an accepted call (for deduplication).
pub const HISTORY: u8 = b'h';
/// `t` + expiry ms + id → (): when history entries expire, in time order.
pub const EXPIRY: u8 = b't';
/// `k` + target + 0 + queue + 0 + key → id: idempotency keys.
pub const IDEMPOTENCY: u8 = b'k';
/// `s` + module + 0 + key → value: modules' state.
pub const STATE: u8 = b's';
/// `e` + call id → (): the call's state writes are committed (it must not run again).
pub const EXECUTED: u8 = b'e';
/// `a` + call id → start mark: an attempt of the call runs here (gone when it ends).
pub const STARTED: u8 = b'a';
/// `f` + call id → crash count: how often the pending call crashed the process running it.
pub const CRASHES: u8 = b'f';

/// The state entry `key` of `module`.
pub fn state(module: &str, key: &[u8]) -> Vec<u8> {
    let mut k = vec![STATE];
    k.extend_from_slice(module.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// `g` + chain id → chain record (on the chain's owner).
pub const CHAIN: u8 = b'g';
/// `p` + parent call id + 0 + chain id → (): the chains a call started.
pub const CHILD: u8 = b'p';
/// `u` + group id → ids of chains started together under a `max_parallel` cap.
pub const GROUP: u8 = b'u';
/// `z` + end ms + chain id → (): finished chains in the order they ended, for expiry.
pub const ENDED: u8 = b'z';

/// The prefix of the child entries of `parent`.
pub fn child_prefix(parent: &str) -> Vec<u8> {
    let mut k = vec![CHILD];
    k.extend_from_slice(parent.as_bytes());
    k.push(0);
    k
}

/// The child entry of chain `chain` started by call `parent`.
pub fn child(parent: &str, chain: &str) -> Vec<u8> {
    let mut k = child_prefix(parent);
    k.extend_from_slice(chain.as_bytes());
    k
}

/// The end entry of a chain.
pub fn ended(at_ms: u64, chain: &str) -> Vec<u8> {
    let mut k = vec![ENDED];
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(chain.as_bytes());
    k
}

/// `j` + job id → job.
pub const JOB: u8 = b'j';
/// `q` + id → the raw bytes of a record that could not be read, kept for inspection.
pub const QUARANTINE: u8 = b'q';
/// `o` + queue (+ 1 + group) + 0 + seq → id: pending calls of each queue (and group) in the
/// order they were stored.
pub const ORDER: u8 = b'o';

/// `O` + queue → (): the queue's order index holds every pending call of it.
pub const ORDERED: u8 = b'O';

/// The marker of a queue whose order index is whole.
pub fn ordered(queue: &str) -> Vec<u8> {
    with_id(ORDERED, queue)
}

/// The prefix of the order entries of a queue's calls (of one group: each group of a queue
/// keeps its own order).
pub fn order_prefix(queue: &str, group: Option<&str>) -> Vec<u8> {
    let mut k = vec![ORDER];
    k.extend_from_slice(queue.as_bytes());
    if let Some(group) = group {
        // Queue names hold no 1 byte, group names no 0 byte: each prefix is one queue's group.
        k.push(1);
        k.extend_from_slice(group.as_bytes());
    }
    k.push(0);
    k
}

/// The order entry of a call.
pub fn order(queue: &str, group: Option<&str>, seq: u64) -> Vec<u8> {
    let mut k = order_prefix(queue, group);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `prefix` followed by `id`.
pub fn with_id(prefix: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(prefix);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Higher priorities sort first: flip the sign bit (order-preserving) then invert.
fn priority_rank(priority: i32) -> u32 {
    !((priority as u32) ^ 0x8000_0000)
}

/// Bytes of a due-index key before the id: prefix, due time, priority.
const DUE_FIXED: usize = 13;

/// The id and the value a due-index key ends with (both empty in a key too short to hold
/// them, the value empty where no 0 byte ends the id).
fn due_tail(key: &[u8]) -> (&[u8], &[u8]) {
    let rest = key.get(DUE_FIXED..).unwrap_or(&[]);
    match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[]),
    }
}

/// The id a due-index key carries (see [`due`]).
pub fn due_id_of(key: &[u8]) -> &[u8] {
    due_tail(key).0
}

/// The value a due-index key carries (see [`due`]).
pub fn due_value_of(key: &[u8]) -> &[u8] {
    due_tail(key).1
}

/// The due-index key of a call whose due-index value is `value`.
pub fn due(at_ms: u64, priority: i32, id: &str, value: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(DUE_FIXED + id.len() + 1 + value.len());
    k.push(DUE);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&priority_rank(priority).to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(value);
    k
}

/// Splits a due-index key into (due ms, priority, id).
pub fn parse_due(key: &[u8]) -> Option<(u64, i32, String)> {
    if key.len() < DUE_FIXED || key[0] != DUE {
        return None;
    }
    let at = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let rank = u32::from_be_bytes(key[9..13].try_into().ok()?);
    let priority = ((!rank) ^ 0x8000_0000) as i32;
    let (id, _) = due_tail(key);
    Some((at, priority, String::from_utf8(id.to_vec()).ok()?))
}

/// The expiry-index key of a history entry.
pub fn expiry(at_ms: u64, id: &str) -> Vec<u8> {
    let mut k = vec![EXPIRY];
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// Splits an expiry key into (expiry ms, id).
pub fn parse_expiry(key: &[u8]) -> Option<(u64, String)> {
    if key.len() < 9 || key[0] != EXPIRY {
        return None;
    }
    Some((
        u64::from_be_bytes(key[1..9].try_into().ok()?),
        String::from_utf8(key[9..].to_vec()).ok()?,
    ))
}

/// The idempotency-key entry of (`target`, `queue`, `key`).
pub fn idempotency(target: &str, queue: &str, key: &str) -> Vec<u8> {
    let mut k = vec![IDEMPOTENCY];
    for part in [target, queue] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k.extend_from_slice(key.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_order_by_time_then_priority_descending() {
        let mut keys = [
            due(20, 0, "a", b"q"),
            due(10, -5, "b", b"q"),
            due(10, 7, "c", b"q"),
            due(10, 0, "d", b"r"),
            due(10, i32::MIN, "e", b"q\0target"),
            due(10, i32::MAX, "f", b""),
        ];
        keys.sort();
        let ids: Vec<String> = keys.iter().map(|k| parse_due(k).unwrap().2).collect();
        assert_eq!(ids, vec!["f", "c", "d", "b", "e", "a"]);
        assert_eq!(
            parse_due(&due(10, -5, "b", b"q")),
            Some((10, -5, "b".into()))
        );
        assert_eq!(due_value_of(&due(10, 0, "e", b"q\0target")), b"q\0target");
        assert_eq!(due_value_of(b"d1"), b"");
    }

    #[test]
    fn expiry_round_trips() {
        assert_eq!(parse_expiry(&expiry(99, "x-1")), Some((99, "x-1".into())));
        assert_eq!(parse_expiry(b"t"), None);
    }
}
