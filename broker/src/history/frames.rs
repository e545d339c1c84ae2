//! [`Frames`]: the bytes of a stream's kept publications, oldest first, in one ring.
//!
//! A kept frame used to be the delivered `Bytes` itself (one more reference). Its last
//! reference was then dropped at eviction, a hundred publications later, when its buffer
//! and reference count were long out of cache: about 12 % of the broker's CPU in a run of
//! 1,000 channels publishing flat out. Copied into a ring instead, a frame costs one copy
//! while it is hot, and evicting it costs nothing (the ring's head moves on). A read
//! copies the frames it returns (reads are rare next to appends).

/// The smallest ring kept (a stream's first publication allocates it).
const MIN_CAPACITY: usize = 256;

/// A ring of bytes: frames are pushed at the back and dropped from the front.
#[derive(Default)]
pub(super) struct Frames {
    buf: Vec<u8>,
    /// Where the oldest byte is.
    head: usize,
    /// Bytes in use, from `head` (wrapping).
    used: usize,
}

impl Frames {
    /// Bytes in use.
    pub(super) fn used(&self) -> usize {
        self.used
    }

    /// Appends `frame` (growing the ring when it does not fit).
    pub(super) fn push(&mut self, frame: &[u8]) {
        if frame.is_empty() {
            return;
        }
        if self.buf.len() - self.used < frame.len() {
            let capacity = (self.used + frame.len())
                .next_power_of_two()
                .max(MIN_CAPACITY);
            self.resize(capacity);
        }
        let capacity = self.buf.len();
        let tail = (self.head + self.used) % capacity;
        let first = frame.len().min(capacity - tail);
        self.buf[tail..tail + first].copy_from_slice(&frame[..first]);
        self.buf[..frame.len() - first].copy_from_slice(&frame[first..]);
        self.used += frame.len();
    }

    /// Drops the oldest `n` bytes (a frame's length); gives memory back when the ring is
    /// mostly empty.
    pub(super) fn pop(&mut self, n: usize) {
        debug_assert!(n <= self.used);
        self.used -= n;
        self.head = match self.used {
            0 => 0,
            _ => (self.head + n) % self.buf.len(),
        };
        if self.buf.len() > MIN_CAPACITY && self.used <= self.buf.len() / 4 {
            self.resize((self.buf.len() / 2).max(MIN_CAPACITY));
        }
    }

    /// A copy of the `len` bytes that start `at` bytes after the oldest.
    pub(super) fn copy(&self, at: usize, len: usize) -> Vec<u8> {
        debug_assert!(at + len <= self.used);
        let mut out = Vec::with_capacity(len);
        if len == 0 {
            return out;
        }
        let capacity = self.buf.len();
        let start = (self.head + at) % capacity;
        let first = len.min(capacity - start);
        out.extend_from_slice(&self.buf[start..start + first]);
        out.extend_from_slice(&self.buf[..len - first]);
        out
    }

    /// Moves the bytes in use to the start of a buffer of `capacity`.
    fn resize(&mut self, capacity: usize) {
        let mut buf = vec![0; capacity];
        let old = self.buf.len();
        if self.used > 0 {
            let first = self.used.min(old - self.head);
            buf[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
            buf[first..self.used].copy_from_slice(&self.buf[..self.used - first]);
        }
        self.buf = buf;
        self.head = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn frames_come_back_as_pushed_across_wraps_growth_and_shrinking() {
        let mut ring = Frames::default();
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut seed = 7u64;
        for i in 0..20_000u32 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 33) as usize % 700;
            // Grow to a few hundred frames, then shrink, then grow again.
            let keep = if (i / 5_000) % 2 == 0 { 300 } else { 3 };
            let frame: Vec<u8> = (0..len).map(|b| (b as u32 + i) as u8).collect();
            ring.push(&frame);
            model.push_back(frame);
            while model.len() > keep {
                let old = model.pop_front().unwrap();
                ring.pop(old.len());
            }
            assert_eq!(ring.used(), model.iter().map(Vec::len).sum::<usize>());
            if i % 97 == 0 {
                let mut at = 0;
                for f in &model {
                    assert_eq!(&ring.copy(at, f.len()), f);
                    at += f.len();
                }
            }
        }
        // The last phase keeps 3 frames of under 700 bytes: the ring gave back the rest.
        assert!(ring.buf.len() <= 8_192, "{}", ring.buf.len());
    }
}
