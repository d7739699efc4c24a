//! A fixed-capacity byte ring for the decrypt direction.
//!
//! `SSL_read` writes into the free space at the tail, and the fd is written
//! from the head with `writev` or `sendmsg`. A packet that wraps around the
//! end of the storage still goes out in one system call, and no byte is
//! ever moved.

/// Fixed-capacity FIFO of bytes, allocated once.
pub struct Ring {
    storage: Box<[u8]>,
    /// Index of the first stored byte.
    head: usize,
    /// Number of stored bytes.
    len: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        assert!(capacity > 0, "ring capacity must be positive");
        Ring {
            storage: vec![0; capacity].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.storage.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn free(&self) -> usize {
        self.capacity() - self.len
    }

    /// Returns the contiguous free space after the last stored byte. It is
    /// empty only when the ring is full. Bytes written there become part of
    /// the ring after `commit`.
    pub fn tail_space(&mut self) -> &mut [u8] {
        if self.len == 0 {
            // Start over at the beginning for the largest contiguous space.
            self.head = 0;
        }
        let capacity = self.capacity();
        let tail = (self.head + self.len) % capacity;
        let end = if tail >= self.head && !(tail == self.head && self.len > 0) {
            capacity
        } else {
            self.head
        };
        &mut self.storage[tail..end]
    }

    /// Appends `n` bytes that the caller wrote into `tail_space()`.
    ///
    /// Panics if `n` exceeds the free space.
    pub fn commit(&mut self, n: usize) {
        assert!(
            n <= self.free(),
            "commit of {n} bytes exceeds the free space {}",
            self.free()
        );
        self.len += n;
    }

    /// Returns the first `n` stored bytes as up to two slices (the second is
    /// empty unless the bytes wrap around).
    ///
    /// Panics if fewer than `n` bytes are stored.
    pub fn front(&self, n: usize) -> (&[u8], &[u8]) {
        assert!(
            n <= self.len,
            "front({n}) of a ring holding {} bytes",
            self.len
        );
        let first_len = n.min(self.capacity() - self.head);
        let first = &self.storage[self.head..self.head + first_len];
        let second = &self.storage[..n - first_len];
        (first, second)
    }

    /// Copies up to `out.len()` bytes starting `offset` bytes after the head
    /// into `out` and returns how many were copied. Used to read packet
    /// headers, which are a few bytes long and may wrap around.
    pub fn peek(&self, offset: usize, out: &mut [u8]) -> usize {
        let available = self.len.saturating_sub(offset);
        let n = available.min(out.len());
        for (i, byte) in out.iter_mut().take(n).enumerate() {
            *byte = self.storage[(self.head + offset + i) % self.capacity()];
        }
        n
    }

    /// Appends `data`, growing the storage first when it does not fit.
    ///
    /// Only for bytes the host decrypted before the splice started. They may
    /// exceed the capacity chosen for the high-water mark, but they cannot be
    /// rejected, because no other buffer keeps them.
    pub fn push(&mut self, data: &[u8]) {
        if data.len() > self.free() {
            let mut storage = vec![0; self.len + data.len()].into_boxed_slice();
            let (first, second) = self.front(self.len);
            storage[..first.len()].copy_from_slice(first);
            storage[first.len()..self.len].copy_from_slice(second);
            self.storage = storage;
            self.head = 0;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let space = self.tail_space();
            let n = space.len().min(rest.len());
            space[..n].copy_from_slice(&rest[..n]);
            self.commit(n);
            rest = &rest[n..];
        }
    }

    /// Drops the first `n` stored bytes.
    ///
    /// Panics if fewer than `n` bytes are stored.
    pub fn consume(&mut self, n: usize) {
        assert!(
            n <= self.len,
            "consume({n}) of a ring holding {} bytes",
            self.len
        );
        self.head = (self.head + n) % self.capacity();
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(ring: &mut Ring, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let space = ring.tail_space();
            let n = space.len().min(rest.len());
            assert!(n > 0, "ring full");
            space[..n].copy_from_slice(&rest[..n]);
            ring.commit(n);
            rest = &rest[n..];
        }
    }

    fn front_vec(ring: &Ring, n: usize) -> Vec<u8> {
        let (a, b) = ring.front(n);
        [a, b].concat()
    }

    #[test]
    fn empty_ring_offers_whole_capacity() {
        let mut ring = Ring::new(8);
        assert_eq!(ring.tail_space().len(), 8);
        assert!(ring.is_empty());
    }

    #[test]
    fn wraps_and_reads_back_in_order() {
        let mut ring = Ring::new(8);
        push(&mut ring, &[1, 2, 3, 4, 5, 6]);
        ring.consume(4);
        // Tail space runs to the end of the storage first, then wraps.
        assert_eq!(ring.tail_space().len(), 2);
        push(&mut ring, &[7, 8, 9, 10, 11, 12]);
        assert_eq!(ring.len(), 8);
        assert_eq!(ring.free(), 0);
        assert_eq!(ring.tail_space().len(), 0);
        let (a, b) = ring.front(8);
        assert_eq!(a, &[5, 6, 7, 8]);
        assert_eq!(b, &[9, 10, 11, 12]);
        let mut header = [0u8; 3];
        assert_eq!(ring.peek(2, &mut header), 3);
        assert_eq!(header, [7, 8, 9]);
        ring.consume(8);
        assert!(ring.is_empty());
        assert_eq!(ring.tail_space().len(), 8);
    }

    #[test]
    fn push_grows_a_wrapped_ring_in_order() {
        let mut ring = Ring::new(8);
        push(&mut ring, &[1, 2, 3, 4, 5, 6]);
        ring.consume(4);
        push(&mut ring, &[7, 8, 9, 10]);
        // 6 stored, 2 free, wrapped: pushing 5 must grow and keep the order.
        ring.push(&[11, 12, 13, 14, 15]);
        assert_eq!(ring.capacity(), 11);
        assert_eq!(
            front_vec(&ring, 11),
            [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
        ring.consume(11);
        ring.push(&[16, 17]);
        assert_eq!(front_vec(&ring, 2), [16, 17]);
    }

    #[test]
    fn peek_stops_at_stored_bytes() {
        let mut ring = Ring::new(8);
        push(&mut ring, &[1, 2]);
        let mut out = [0u8; 6];
        assert_eq!(ring.peek(1, &mut out), 1);
        assert_eq!(out[0], 2);
        assert_eq!(ring.peek(5, &mut out), 0);
    }

    #[test]
    fn random_operations_match_a_vecdeque() {
        use std::collections::VecDeque;
        let mut ring = Ring::new(97);
        let mut model: VecDeque<u8> = VecDeque::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound as u64) as usize
        };
        let mut counter = 0u8;
        for _ in 0..20_000 {
            if next(2) == 0 {
                let n = next(ring.free() + 1);
                let bytes: Vec<u8> = (0..n)
                    .map(|_| {
                        counter = counter.wrapping_add(1);
                        counter
                    })
                    .collect();
                push(&mut ring, &bytes);
                model.extend(bytes);
            } else {
                let n = next(ring.len() + 1);
                assert_eq!(
                    front_vec(&ring, n),
                    model.iter().take(n).copied().collect::<Vec<_>>()
                );
                ring.consume(n);
                model.drain(..n);
            }
            assert_eq!(ring.len(), model.len());
        }
    }

    #[test]
    #[should_panic(expected = "exceeds the free space")]
    fn commit_beyond_free_space_panics() {
        let mut ring = Ring::new(4);
        ring.commit(5);
    }
}
