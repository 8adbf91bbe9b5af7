//! Fletcher-4 as OpenZFS computes it over a send stream: four wrapping 64-bit sums over the
//! data taken as native-endian (here: little-endian) 32-bit words. A trailing piece of fewer
//! than four bytes is not summed, exactly like `fletcher_4_incremental_native`, which works
//! per call: the stream checksum is the running state after feeding each piece (header part,
//! checksum field, payload) in turn.

/// The running fletcher-4 state: `a`, `b`, `c`, `d` as in `zio_cksum_t` word order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fletcher4 {
    words: [u64; 4],
}

impl Fletcher4 {
    /// The zero state every (sub-)stream starts from.
    pub const fn new() -> Self {
        Self { words: [0; 4] }
    }

    /// A state with these four words (as stored in a record).
    pub const fn from_words(words: [u64; 4]) -> Self {
        Self { words }
    }

    /// The four words `[a, b, c, d]`.
    pub const fn words(&self) -> [u64; 4] {
        self.words
    }

    /// Whether all four words are zero (OpenZFS' "no checksum here").
    pub fn is_zero(&self) -> bool {
        self.words == [0; 4]
    }

    /// Continues the sums over `data`, ignoring a trailing piece shorter than a word.
    pub fn update(&mut self, data: &[u8]) {
        let [mut a, mut b, mut c, mut d] = self.words;
        for word in data.chunks_exact(4) {
            let w = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            a = a.wrapping_add(u64::from(w));
            b = b.wrapping_add(a);
            c = c.wrapping_add(b);
            d = d.wrapping_add(c);
        }
        self.words = [a, b, c, d];
    }
}

#[cfg(test)]
mod tests {
    use super::Fletcher4;

    #[test]
    fn sums_follow_the_fletcher4_recurrence() {
        let mut f = Fletcher4::new();
        f.update(&[1, 0, 0, 0, 2, 0, 0, 0]);
        // after 1: a = b = c = d = 1; after 2: a = 3, b = 4, c = 5, d = 6
        assert_eq!(f.words(), [3, 4, 5, 6]);
    }

    #[test]
    fn split_updates_on_word_boundaries_equal_one_update() {
        let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let mut whole = Fletcher4::new();
        whole.update(&data);
        let mut split = Fletcher4::new();
        split.update(&data[..1000]);
        split.update(&data[1000..]);
        assert_eq!(whole, split);
    }

    #[test]
    fn trailing_bytes_shorter_than_a_word_are_ignored() {
        let mut with_tail = Fletcher4::new();
        with_tail.update(&[9, 9, 9, 9, 1, 2, 3]);
        let mut without = Fletcher4::new();
        without.update(&[9, 9, 9, 9]);
        assert_eq!(with_tail, without);
    }

    #[test]
    fn sums_wrap_instead_of_overflowing() {
        let mut f = Fletcher4::from_words([u64::MAX; 4]);
        f.update(&[0xff; 8]);
        assert!(!f.is_zero());
    }
}
