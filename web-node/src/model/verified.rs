//! Verified streaming of model parts: a part's content address is its size and the BLAKE3
//! root of a `bao-tree` hash tree over it, and any byte range of it travels with the proof
//! that ties it to that root, so a downloader checks every chunk group as it arrives and
//! trusts no sender.
//!
//! Main types: [`PartRoot`] (the address), [`PartTree`] (a holder's hash tree, which answers
//! range requests: [`PartTree::encode`]) and [`RangeDecoder`] (the downloader's side: it
//! yields verified bytes and stops at the first chunk group that does not match). Chunk groups
//! are [`GROUP_BYTES`] (16 KiB) long: the tree stores one hash pair per group, 1/256 of the
//! part, and a range is verified in whole groups.

use std::io::Read;
use std::ops::Range;

use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::io::sync::{encode_ranges, encode_ranges_validated, DecodeResponseIter, Outboard, ReadAt, Size};
use bao_tree::io::{BaoContentItem, DecodeError, Leaf};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};

/// Chunk groups of 16 chunks of 1 KiB.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);

/// Bytes per chunk group, the unit a range is verified in.
pub const GROUP_BYTES: u64 = 16 * 1024;

/// What a verified transfer can fail on.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A range reaching past the part's end.
    #[error("bytes {start}..{end} asked of a part of {size} bytes")]
    PastEnd {
        /// First byte asked.
        start: u64,
        /// End of the range asked.
        end: u64,
        /// The part's size.
        size: u64,
    },
    /// Bytes (or proof hashes) that do not hash to the root: proof that the sender lied.
    #[error("the bytes at offset {offset} do not match the part's root (corrupt or another part)")]
    Corrupt {
        /// Start of the first chunk group (or of the subtree) that failed.
        offset: u64,
    },
    /// The response ended before the range did.
    #[error("the response ended at offset {offset}, before the range did")]
    Truncated {
        /// Where the missing data starts.
        offset: u64,
    },
    /// The data held locally is not the part the tree was made for.
    #[error("the part's own bytes do not match its tree: {0}")]
    Local(String),
    /// Reading the response failed.
    #[error("reading the response: {0}")]
    Io(#[from] std::io::Error),
}

/// A part's content address: its size and the root of its hash tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PartRoot {
    /// Bytes in the part.
    pub size: u64,
    /// BLAKE3 root of the part's `bao-tree` (16 KiB chunk groups).
    pub root: [u8; 32],
}

impl PartRoot {
    /// The root as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.root)
    }

    fn tree(&self) -> BaoTree {
        BaoTree::new(self.size, BLOCK_SIZE)
    }

    /// Checks that `range` lies within the part and is not empty.
    pub fn check_range(&self, range: &Range<u64>) -> Result<(), VerifyError> {
        if range.start >= range.end || range.end > self.size {
            return Err(VerifyError::PastEnd { start: range.start, end: range.end, size: self.size });
        }
        Ok(())
    }
}

/// The chunks covering bytes `range`, widened to whole chunk groups.
fn chunks_of(range: &Range<u64>) -> ChunkRanges {
    let start = ChunkNum::chunk_group_start(ChunkNum::full_chunks(range.start), BLOCK_SIZE);
    let end = ChunkNum::chunk_group_end(ChunkNum::chunks(range.end), BLOCK_SIZE);
    ChunkRanges::from(start..end)
}

/// Bytes `range` widened to the whole chunk groups a response carries (clipped to `size`).
pub fn group_range(range: &Range<u64>, size: u64) -> Range<u64> {
    let start = range.start / GROUP_BYTES * GROUP_BYTES;
    let end = range.end.div_ceil(GROUP_BYTES).saturating_mul(GROUP_BYTES).min(size);
    start..end
}

/// A holder's hash tree of one part (about 1/256 of its size), built once from the bytes.
pub struct PartTree {
    outboard: PreOrderMemOutboard,
}

impl PartTree {
    /// Hashes `data` (one pass of BLAKE3).
    pub fn new(data: &[u8]) -> PartTree {
        PartTree { outboard: PreOrderMemOutboard::create(data, BLOCK_SIZE) }
    }

    /// The part's address.
    pub fn root(&self) -> PartRoot {
        PartRoot { size: self.outboard.tree().size(), root: *self.outboard.root().as_bytes() }
    }

    /// The response to a request for bytes `range` of `data` (this tree's part): the chunk
    /// groups covering the range with the hashes that prove them, in bao's pre-order. `data`
    /// is checked against the tree on the way, so a holder whose copy went bad sends nothing
    /// wrong ([`VerifyError::Local`]).
    pub fn encode(&self, data: &[u8], range: Range<u64>) -> Result<Vec<u8>, VerifyError> {
        let mut out = Vec::new();
        self.encode_with(data, range, true, &mut out)?;
        Ok(out)
    }

    /// [`PartTree::encode`] into `out` (cleared first; a buffer kept for the next answer) for
    /// the very bytes this tree was built from, held unchanged since (as
    /// [`HeldPart`](crate::net::parts::HeldPart) holds them): the chunk groups are not hashed
    /// again, which saves the sender a BLAKE3 pass per range.
    pub fn encode_built_from(&self, data: &[u8], range: Range<u64>, out: &mut Vec<u8>) -> Result<(), VerifyError> {
        self.encode_with(data, range, false, out)
    }

    /// [`PartTree::encode`] into `out` (cleared first) for a part read where it lies (a file):
    /// only the range's chunk groups are read, and checked against the tree on the way (a
    /// file can change under it).
    pub fn encode_from<D: ReadAt + Size>(
        &self,
        data: D,
        range: Range<u64>,
        out: &mut Vec<u8>,
    ) -> Result<(), VerifyError> {
        self.encode_with(data, range, true, out)
    }

    fn encode_with<D: ReadAt + Size>(
        &self,
        data: D,
        range: Range<u64>,
        validate: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), VerifyError> {
        self.root().check_range(&range)?;
        let len = data.size()?.unwrap_or(0);
        if len != self.root().size {
            return Err(VerifyError::Local(format!("{len} bytes for a part of {}", self.root().size)));
        }
        out.clear();
        out.reserve((range.end - range.start) as usize + (64 << 10));
        let chunks = chunks_of(&range);
        let done = match validate {
            true => encode_ranges_validated(data, &self.outboard, &chunks, &mut *out),
            false => encode_ranges(data, &self.outboard, &chunks, &mut *out),
        };
        done.map_err(|e| VerifyError::Local(e.to_string()))
    }
}

/// The downloader's side of one range request: reads the response from `encoded` and yields
/// `(offset, bytes)` for each chunk group once it is verified against the root. The first
/// mismatch ends it with [`VerifyError::Corrupt`]: nothing of that group, or after it, is
/// yielded.
pub struct RangeDecoder<'a, R: Read> {
    inner: DecodeResponseIter<'a, R>,
    done: bool,
}

impl<'a, R: Read> RangeDecoder<'a, R> {
    /// A decoder of the response to a request for bytes `range` (see [`RangeDecoder::chunks`])
    /// of the part `root`.
    pub fn new(root: PartRoot, chunks: &'a ChunkRanges, encoded: R) -> Self {
        let hash = bao_tree::blake3::Hash::from_bytes(root.root);
        RangeDecoder { inner: DecodeResponseIter::new(hash, root.tree(), encoded, chunks), done: false }
    }

    /// The chunk set of a request for bytes `range` of `root` (whole chunk groups), after
    /// checking that the range lies within the part.
    pub fn chunks(root: &PartRoot, range: &Range<u64>) -> Result<ChunkRanges, VerifyError> {
        root.check_range(range)?;
        Ok(chunks_of(range))
    }
}

impl<R: Read> Iterator for RangeDecoder<'_, R> {
    type Item = Result<(u64, bytes::Bytes), VerifyError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let item = match self.inner.next()? {
                Ok(item) => item,
                Err(e) => {
                    self.done = true;
                    let offset = |c: ChunkNum| c.to_bytes();
                    return Some(Err(match e {
                        DecodeError::LeafHashMismatch(c) => VerifyError::Corrupt { offset: offset(c) },
                        DecodeError::ParentHashMismatch(n) => {
                            VerifyError::Corrupt { offset: offset(n.chunk_range().start) }
                        }
                        DecodeError::LeafNotFound(c) => VerifyError::Truncated { offset: offset(c) },
                        DecodeError::ParentNotFound(n) => {
                            VerifyError::Truncated { offset: offset(n.chunk_range().start) }
                        }
                        DecodeError::Io(e) => VerifyError::Io(e),
                    }));
                }
            };
            if let BaoContentItem::Leaf(Leaf { offset, data }) = item {
                return Some(Ok((offset, data)));
            }
        }
    }
}

/// Decodes a whole response for bytes `range` of `root` into a buffer: the verified bytes of
/// the range's chunk groups ([`group_range`]), or the first error.
pub fn decode_range(root: PartRoot, range: Range<u64>, encoded: impl Read) -> Result<Vec<u8>, VerifyError> {
    let mut out = Vec::new();
    decode_range_into(root, range, encoded, &mut out)?;
    Ok(out)
}

/// [`decode_range`] into `out` (cleared first; a buffer kept for the next range). On an error
/// `out` holds the groups verified before it.
pub fn decode_range_into(
    root: PartRoot,
    range: Range<u64>,
    encoded: impl Read,
    out: &mut Vec<u8>,
) -> Result<(), VerifyError> {
    let chunks = RangeDecoder::<&[u8]>::chunks(&root, &range)?;
    let span = group_range(&range, root.size);
    out.clear();
    out.reserve((span.end - span.start) as usize);
    // One range's groups come in order, each right after the last.
    for item in RangeDecoder::new(root, &chunks, encoded) {
        let (offset, data) = item?;
        if offset != span.start + out.len() as u64 {
            return Err(VerifyError::Local(format!("chunk group at {offset} out of order")));
        }
        out.extend_from_slice(&data);
    }
    if out.len() as u64 != span.end - span.start {
        return Err(VerifyError::Truncated { offset: span.start + out.len() as u64 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(len: usize) -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut data = vec![0u8; len];
        rand_chacha::ChaCha8Rng::seed_from_u64(len as u64).fill_bytes(&mut data);
        data
    }

    /// The root is BLAKE3 of the whole part (bao's tree is BLAKE3's own), and any range
    /// comes back verified and equal to the original bytes of its chunk groups.
    #[test]
    fn ranges_round_trip_and_the_root_is_blake3() {
        for len in [1, 1000, 16 * 1024, 100_000, 300_001] {
            let data = part(len);
            let tree = PartTree::new(&data);
            let root = tree.root();
            assert_eq!(root.root, *bao_tree::blake3::hash(&data).as_bytes(), "len {len}");
            assert_eq!(root.size, len as u64);
            let n = len as u64;
            for range in [0..n, 0..1, n - 1..n, n / 3..n / 2 + 1] {
                if range.is_empty() {
                    continue;
                }
                let encoded = tree.encode(&data, range.clone()).expect("encode");
                let got = decode_range(root, range.clone(), &encoded[..]).expect("decode");
                let span = group_range(&range, n);
                assert_eq!(got, data[span.start as usize..span.end as usize], "len {len} range {range:?}");
            }
        }
    }

    /// A flipped byte is caught in its own chunk group: the groups before it are yielded,
    /// nothing from it on; a response for another part (the same size) fails at once; a
    /// short response is truncated; a range past the end is refused before anything is sent.
    #[test]
    fn lies_are_caught_at_the_first_bad_group() {
        let data = part(200_000);
        let tree = PartTree::new(&data);
        let root = tree.root();
        let range = 0..200_000;
        let encoded = tree.encode(&data, range.clone()).expect("encode");
        // Flip one byte of group 6 (the encoding interleaves hashes and data, so find it by
        // content: random bytes appear once).
        let group = 6 * GROUP_BYTES as usize;
        let needle = &data[group..group + 64];
        let at = encoded.windows(64).position(|w| w == needle).expect("group 6 in the response") + 10;
        let mut bad = encoded.clone();
        bad[at] ^= 1;
        let chunks = RangeDecoder::<&[u8]>::chunks(&root, &range).unwrap();
        let mut good_bytes = 0u64;
        let mut failed = None;
        for item in RangeDecoder::new(root, &chunks, &bad[..]) {
            match item {
                Ok((offset, d)) => {
                    assert_eq!(&data[offset as usize..offset as usize + d.len()], &d[..]);
                    good_bytes += d.len() as u64;
                }
                Err(e) => failed = Some(e),
            }
        }
        assert!(matches!(failed, Some(VerifyError::Corrupt { offset }) if offset == 6 * GROUP_BYTES), "{failed:?}");
        assert_eq!(good_bytes, 6 * GROUP_BYTES, "only the groups before the bad one are yielded");
        let other = part(200_000).iter().map(|b| b.wrapping_add(1)).collect::<Vec<_>>(); // same size
        let lie = PartTree::new(&other).encode(&other, range.clone()).unwrap();
        assert!(matches!(decode_range(root, range.clone(), &lie[..]), Err(VerifyError::Corrupt { .. })));
        let short = &encoded[..encoded.len() / 2];
        assert!(matches!(decode_range(root, range.clone(), short), Err(VerifyError::Truncated { .. })));
        assert!(matches!(tree.encode(&data, 10..200_001), Err(VerifyError::PastEnd { .. })));
        assert!(matches!(RangeDecoder::<&[u8]>::chunks(&root, &(5..5)), Err(VerifyError::PastEnd { .. })));
        let mut rotten = data.clone();
        rotten[150_000] ^= 0x80;
        assert!(matches!(tree.encode(&rotten, 140_000..160_000), Err(VerifyError::Local(_))));
    }
}
