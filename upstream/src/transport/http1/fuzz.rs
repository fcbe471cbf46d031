//! A fuzzer for the answer head parser and the dechunker that needs only stable Rust and the
//! test binary: seed inputs from `upstream/fuzz/corpus/` (`answer/`: whole answers, `chunked/`:
//! chunked bodies), changed by a seeded generator ([`mutate`]), an input kept for more changes
//! when its outcome is one not seen before. Bounded in iterations and time; the same seed
//! makes the same inputs, so a failure at iteration `i` comes back with `--iterations i+1`.
//!
//! What must hold for every input, however it is split into reads:
//! - nothing panics (a read past a slice's end would);
//! - a head, interim or final, is no longer than the bytes it was parsed from, and every
//!   prefix of a complete head is partial: parsing as the bytes arrive gives the same heads;
//! - a final head is never 1xx, and never keeps a connection whose body runs to the close;
//! - a body is never longer than its bound, and what was consumed is never more than was read;
//! - dechunking in one piece and dechunking split at any points give the same body, the same
//!   bytes consumed and the same error.
//!
//! `scripts/fuzz` runs it (`--seconds`, `--seed`, `--iterations`); the corpus is replayed by
//! the ordinary tests too.

mod mutate;

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use self::mutate::{Rng, mutate};
use super::{Dechunker, Framing, MAX_HEAD_BYTES, Parsed, WireError, parse_head};

/// Most inputs kept for mutation.
const MAX_POOL: usize = 4096;
/// Longest input kept for mutation: a head past the bound costs a hundred short inputs, so
/// such heads are made afresh (rarely) rather than kept.
const MAX_KEPT: usize = 8 * 1024;

/// Which code an input goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    /// Heads, interim ones first, then the body by its framing.
    Answer,
    /// The dechunker alone.
    Chunked,
}

/// What is drawn for each input besides its bytes.
#[derive(Debug, Clone, Copy)]
struct Draw {
    /// The body's bound.
    limit: usize,
    /// Where the bytes are split into reads (modulo their length plus one).
    cuts: [usize; 3],
    /// The request was a `HEAD`.
    head_only: bool,
}

/// An input's outcome, coarsely: its target and three small numbers saying how far it got.
type Signature = (Target, u8, u8, u8);

// === the targets ===

/// Parses heads as the pool does, then reads the body by the final head's framing.
fn answer(input: &[u8], draw: &Draw) -> Signature {
    let mut start = 0;
    let mut interims = 0u8;
    let (head, end) = loop {
        let rest = &input[start..];
        let parsed = parse_head(rest, draw.head_only);
        check_prefixes(rest, draw, parsed);
        match parsed {
            Err(error) => return (Target::Answer, 0, interims, kind(error)),
            Ok(Parsed::Partial) => return (Target::Answer, 1, interims, 0),
            Ok(Parsed::Interim(len)) => {
                assert!(0 < len && len <= rest.len(), "interim head of {len} bytes");
                start += len;
                interims = (interims + 1).min(3);
            }
            Ok(Parsed::Complete(head, len)) => {
                assert!(0 < len && len <= rest.len(), "head of {len} bytes");
                break (head, start + len);
            }
        }
        if start > MAX_HEAD_BYTES {
            return (Target::Answer, 2, interims, 0);
        }
    };
    assert!(
        head.status >= 200,
        "a final head with status {}",
        head.status
    );
    assert!(
        !head.keep_alive || head.framing != Framing::UntilClose,
        "kept alive with a body that runs to the close"
    );
    let body = &input[end..];
    let (framing, outcome) = match head.framing {
        Framing::Length(length) if length > draw.limit as u64 => (0, 0),
        Framing::Length(length) => (1, u8::from(body.len() as u64 >= length)),
        Framing::Chunked => (2, dechunk_both_ways(body, draw)),
        Framing::UntilClose => (3, u8::from(body.len() > draw.limit)),
    };
    (Target::Answer, 3 + framing, interims, outcome)
}

/// Every prefix of a complete head is partial, and the head parses the same with more bytes
/// after it; a prefix of a partial head is partial.
fn check_prefixes(rest: &[u8], draw: &Draw, parsed: Result<Parsed, WireError>) {
    for cut in draw.cuts {
        let prefix = &rest[..cut % (rest.len() + 1)];
        let early = parse_head(prefix, draw.head_only);
        match parsed {
            Ok(Parsed::Complete(_, len) | Parsed::Interim(len)) if prefix.len() < len => {
                assert_eq!(
                    early,
                    Ok(Parsed::Partial),
                    "a prefix of {len} bytes of head"
                );
            }
            Ok(Parsed::Complete(..) | Parsed::Interim(_)) => assert_eq!(early, parsed),
            Ok(Parsed::Partial) => assert_eq!(early, Ok(Parsed::Partial)),
            Err(_) => {}
        }
    }
}

/// Dechunks `body` in one piece and in pieces; both must come to the same.
fn dechunk_both_ways(body: &[u8], draw: &Draw) -> u8 {
    let whole = dechunk(body, &[], draw.limit);
    let split = dechunk(body, &draw.cuts, draw.limit);
    assert_eq!(whole, split, "dechunked whole and split at {:?}", draw.cuts);
    match whole {
        Ok((_, _, done)) => u8::from(done),
        Err(error) => 2 + kind(error),
    }
}

/// Feeds `raw` to a dechunker in the pieces `cuts` make, as the pool does with reads: the
/// body, the bytes consumed and whether the body ended, or the error.
fn dechunk(raw: &[u8], cuts: &[usize], limit: usize) -> Result<(Vec<u8>, usize, bool), WireError> {
    let mut buf = Vec::with_capacity(raw.len());
    let mut decoder = Dechunker::new(limit);
    let (mut at, mut out, mut done) = (0, 0, false);
    for piece in pieces(raw, cuts) {
        buf.extend_from_slice(piece);
        let progress = decoder.decode(&mut buf, at, out)?;
        assert!(
            progress.consumed <= buf.len() - at,
            "consumed past the bytes read"
        );
        assert!(out <= progress.body_end, "the body shrank");
        assert!(
            progress.body_end <= at + progress.consumed,
            "data ahead of the framing"
        );
        assert!(
            progress.body_end <= limit,
            "a body past its bound of {limit}"
        );
        at += progress.consumed;
        out = progress.body_end;
        done = progress.done;
        if done {
            break;
        }
    }
    Ok((buf[..out].to_vec(), at, done))
}

/// `bytes` split at `cuts` (each modulo the length plus one).
fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    cuts.extend([0, bytes.len()]);
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
    if pieces.is_empty() {
        pieces.push(bytes);
    }
    pieces
}

/// An error as a small number, for signatures.
fn kind(error: WireError) -> u8 {
    match error {
        WireError::Head(why) => 10 + (why.len() % 32) as u8,
        WireError::HeadTooLarge(_) => 1,
        WireError::Chunked(why) => 50 + (why.len() % 32) as u8,
        WireError::TooLarge(_) => 2,
    }
}

fn run(target: Target, input: &[u8], draw: &Draw) -> Signature {
    match target {
        Target::Answer => answer(input, draw),
        Target::Chunked => (Target::Chunked, dechunk_both_ways(input, draw), 0, 0),
    }
}

// === the loop ===

/// How long a run may go on.
#[derive(Debug, Clone, Copy)]
struct Budget {
    seed: u64,
    iterations: u64,
    time: Duration,
}

/// What a run did.
#[derive(Debug)]
struct Report {
    iterations: u64,
    elapsed: Duration,
    outcomes: usize,
    kept: usize,
}

/// The seed inputs: `answer/` and `chunked/` under `dir`, each file one input, in name order.
fn corpus(dir: &Path) -> Vec<(Target, Vec<u8>)> {
    let mut inputs = Vec::new();
    for (sub, target) in [("answer", Target::Answer), ("chunked", Target::Chunked)] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
            .unwrap_or_else(|err| panic!("{}: {err}", dir.join(sub).display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            inputs.push((target, std::fs::read(&path).unwrap()));
        }
    }
    inputs
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// Mutates inputs from `seeds` until the budget is spent.
fn fuzz(seeds: Vec<(Target, Vec<u8>)>, budget: Budget) -> Report {
    let started = Instant::now();
    let mut rng = Rng::new(budget.seed);
    let mut inputs: Vec<Vec<u8>> = seeds.iter().map(|(_, input)| input.clone()).collect();
    let mut targets: Vec<Target> = seeds.iter().map(|(target, _)| *target).collect();
    let mut outcomes = HashSet::new();
    let mut iterations = 0;
    while iterations < budget.iterations
        && (iterations % 256 != 0 || started.elapsed() < budget.time)
    {
        let parent = rng.below(inputs.len());
        let mut input = inputs[parent].clone();
        mutate(&mut rng, &mut input, &inputs);
        // An input may go to either target: a body spliced into a head, a head into chunks.
        let target = match rng.below(8) {
            0 => Target::Answer,
            1 => Target::Chunked,
            _ => targets[parent],
        };
        let draw = draw(&mut rng, input.len());
        let signature = guarded(target, &input, &draw, || {
            let seed = budget.seed;
            let again = iterations + 1;
            format!(
                "seed {seed}, iteration {iterations} (again: --seed {seed} --iterations {again})"
            )
        });
        if outcomes.insert(signature) && inputs.len() < MAX_POOL && input.len() <= MAX_KEPT {
            inputs.push(input);
            targets.push(target);
        }
        iterations += 1;
    }
    Report {
        iterations,
        elapsed: started.elapsed(),
        outcomes: outcomes.len(),
        kept: inputs.len() - seeds.len(),
    }
}

/// A bound, split points and a method for an input of `len` bytes.
fn draw(rng: &mut Rng, len: usize) -> Draw {
    let limits = [0, 1, 16, 1024, 64 * 1024, len, rng.below(len + 1)];
    Draw {
        limit: rng.pick(&limits),
        cuts: [rng.below(len + 1), rng.below(len + 1), rng.below(len + 1)],
        head_only: rng.below(8) == 0,
    }
}

/// Runs one input; a panic (a broken invariant, or a read past a slice's end) leaves the input
/// in a file and fails with where it came from.
fn guarded(target: Target, input: &[u8], draw: &Draw, whence: impl Fn() -> String) -> Signature {
    match catch_unwind(AssertUnwindSafe(|| run(target, input, draw))) {
        Ok(signature) => signature,
        Err(_) => {
            let dir = std::env::var_os("FUZZ_OUT").map_or_else(std::env::temp_dir, PathBuf::from);
            let path = dir.join(format!("codec-failure-{}.bin", std::process::id()));
            let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
            panic!(
                "{}: {target:?} with {draw:?} failed (above) on {} bytes, {}: {}",
                whence(),
                input.len(),
                if saved.is_ok() {
                    "written to"
                } else {
                    "could not write"
                },
                path.display()
            );
        }
    }
}

/// A number from the environment, or `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}={value}: not a number"))
        })
        .unwrap_or(default)
}

#[test]
fn the_corpus_keeps_the_invariants_split_anywhere() {
    for (target, input) in corpus(&corpus_dir()) {
        for limit in [0, input.len() / 2, 64 * 1024] {
            for cut in 0..=input.len() {
                let draw = Draw {
                    limit,
                    cuts: [cut, cut / 2, input.len() - cut / 3],
                    head_only: cut % 5 == 0,
                };
                guarded(target, &input, &draw, || {
                    format!("seed input, cut at {cut}")
                });
            }
        }
    }
}

#[test]
fn a_fixed_seed_makes_the_same_inputs() {
    let seeds = corpus(&corpus_dir());
    let budget = Budget {
        seed: 7,
        iterations: 2000,
        time: Duration::from_secs(3600),
    };
    let first = fuzz(seeds.clone(), budget);
    let second = fuzz(seeds, budget);
    assert_eq!(first.iterations, 2000);
    assert_eq!((first.outcomes, first.kept), (second.outcomes, second.kept));
}

/// The fuzzer, for `scripts/fuzz`: `FUZZ_SECONDS` (10), `FUZZ_ITERATIONS` (no bound),
/// `FUZZ_SEED` (from the clock), `FUZZ_OUT` (where a failing input is written).
#[test]
#[ignore = "runs for FUZZ_SECONDS; scripts/fuzz runs it"]
fn fuzz_the_codec() {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let budget = Budget {
        seed: env_or("FUZZ_SEED", clock),
        iterations: env_or("FUZZ_ITERATIONS", u64::MAX),
        time: Duration::from_secs(env_or("FUZZ_SECONDS", 10)),
    };
    let seeds = corpus(&corpus_dir());
    println!("fuzz: seed {}, {} seed inputs", budget.seed, seeds.len());
    let report = fuzz(seeds, budget);
    let seconds = report.elapsed.as_secs_f64();
    println!(
        "fuzz: {} iterations in {seconds:.1} s ({:.0}/s), {} outcomes, {} inputs kept; no failure",
        report.iterations,
        report.iterations as f64 / seconds.max(1e-9),
        report.outcomes,
        report.kept
    );
}
