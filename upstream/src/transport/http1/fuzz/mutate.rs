//! The fuzzer's mutations: a small seeded generator, and the changes it makes to an input
//! (bit flips, byte changes, inserts, deletions, copies, splices from other inputs, tokens of
//! HTTP/1.1 and numbers at their edges). The same seed makes the same inputs.

use super::super::MAX_HEAD_BYTES;

/// Most bytes in a mutated input: room for a head past its bound, which a rare mutation
/// makes on purpose.
const MAX_INPUT: usize = 2 * MAX_HEAD_BYTES;

/// Tokens the format is made of.
const DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"HTTP/1.1 ",
    b"HTTP/1.0 ",
    b"HTTP/2 ",
    b"200 OK\r\n",
    b"100 Continue\r\n\r\n",
    b"103 Early Hints\r\n",
    b"101 ",
    b"204 ",
    b"304 ",
    b"Content-Length: ",
    b"content-length:",
    b"Transfer-Encoding: ",
    b"chunked",
    b"gzip, chunked",
    b"Connection: ",
    b"close",
    b"keep-alive",
    b"Retry-After: ",
    b";",
    b";a=\"b c\"",
    b"=",
    b"\"",
    b" ",
    b"\t",
    b",",
    b":",
    b"0\r\n\r\n",
    b"0\r\nTrailer: x\r\n\r\n",
];

/// Numbers at the edges of what the parsers take.
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"1",
    b"00",
    b"7fffffff",
    b"ffffffff",
    b"ffffffffffffffff",
    b"10000000000000000",
    b"18446744073709551615",
    b"18446744073709551616",
    b"65536",
    b"-1",
    b"+1",
];

/// Bytes worth setting: line ends, separators, digits at their edges.
const BYTES: &[u8] = b"\r\n\t ;:,=\"09afAFxX\x00\x7f\xff";

/// xorshift64*: enough for choosing mutations; the same seed, the same choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed: never zero, and near seeds far apart.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `bound` (0 when it is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        match bound {
            0 => 0,
            bound => (self.next() % bound as u64) as usize,
        }
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Changes `input` one to four times; `others` are inputs to splice from.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, others: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        mutate_once(rng, input, others);
    }
    input.truncate(MAX_INPUT);
}

fn mutate_once(rng: &mut Rng, input: &mut Vec<u8>, others: &[Vec<u8>]) {
    let at = rng.below(input.len() + 1);
    match rng.below(11) {
        0 if at < input.len() => input[at] ^= 1 << rng.below(8),
        1 if at < input.len() => input[at] = rng.pick(BYTES),
        2 => input.insert(at, rng.next() as u8),
        3 => insert(input, at, rng.pick(DICTIONARY)),
        4 => {
            let end = (at + rng.below(8)).min(input.len());
            input.splice(at..end, rng.pick(DICTIONARY).iter().copied());
        }
        5 => {
            let end = (at + 1 + rng.below(16)).min(input.len());
            input.drain(at..end);
        }
        6 => {
            let end = (at + 1 + rng.below(32)).min(input.len());
            let copy = input[at..end].to_vec();
            let to = rng.below(input.len() + 1);
            insert(input, to, &copy);
        }
        7 => splice(rng, input, at, others),
        8 => number(rng, input),
        9 => input.truncate(at),
        10 => grow(rng, input, at),
        _ => input.push(rng.pick(BYTES)),
    }
}

fn insert(input: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    input.splice(at..at, bytes.iter().copied());
}

/// A piece of another input in place of this one's tail.
fn splice(rng: &mut Rng, input: &mut Vec<u8>, at: usize, others: &[Vec<u8>]) {
    if others.is_empty() {
        return;
    }
    let other = &others[rng.below(others.len())];
    let from = rng.below(other.len() + 1);
    input.truncate(at);
    input.extend_from_slice(&other[from..]);
}

/// A run of hex digits replaced by a number at an edge.
fn number(rng: &mut Rng, input: &mut Vec<u8>) {
    let start = rng.below(input.len() + 1);
    let Some(first) = input[start..].iter().position(u8::is_ascii_hexdigit) else {
        return;
    };
    let first = start + first;
    let len = input[first..]
        .iter()
        .position(|byte| !byte.is_ascii_hexdigit())
        .unwrap_or(input.len() - first);
    input.splice(first..first + len, rng.pick(NUMBERS).iter().copied());
}

/// A rare long input: a piece repeated until the input passes the head's bound.
fn grow(rng: &mut Rng, input: &mut Vec<u8>, at: usize) {
    if rng.below(256) != 0 || input.is_empty() {
        return;
    }
    let end = (at + 1 + rng.below(16)).min(input.len());
    let piece = input[at.min(end - 1)..end].to_vec();
    let times = (MAX_HEAD_BYTES + rng.below(256)) / piece.len() + 1;
    let repeated: Vec<u8> = piece.repeat(times);
    insert(input, at.min(input.len()), &repeated);
}
