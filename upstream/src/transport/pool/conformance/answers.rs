//! Generated answers for the codec's property test: what a server may send (interim heads, a
//! final head whose body is framed by `Content-Length`, by chunks with extensions and trailers,
//! or by the close, then perhaps more bytes), a few ways of getting it wrong, the bytes on the
//! wire, and what RFC 9112 says a client must make of them (the model, [`Case::expect`]).

use std::ops::Range;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use crate::transport::http1::MAX_HEAD_BYTES;

/// An answer as a server sends it, and how it reaches the client.
#[derive(Debug, Clone)]
pub struct Case {
    /// Interim (1xx) heads before the final one: status and header lines.
    pub interims: Vec<(u16, Vec<Field>)>,
    /// `HTTP/1.1`, else `HTTP/1.0`.
    pub http11: bool,
    pub status: u16,
    /// The values of `Connection` lines, one line each.
    pub connection: Vec<&'static str>,
    /// Header lines that say nothing of framing or reuse.
    pub fields: Vec<Field>,
    pub body: Body,
    pub fault: Option<Fault>,
    /// Bytes the server sends after the answer.
    pub after: Vec<u8>,
    /// The server closes the connection after sending (always, when the body runs to the
    /// close or the answer is cut short).
    pub closes: bool,
    /// The request was a `HEAD`.
    pub head_only: bool,
    pub limit: Limit,
    /// Where the bytes are split into writes (modulo their length).
    pub cuts: Vec<usize>,
}

/// A header line.
pub type Field = (&'static str, String);

/// The body and its framing.
#[derive(Debug, Clone)]
pub enum Body {
    /// `Content-Length`, written as the form says.
    Length(Vec<u8>, LengthForm),
    /// `Transfer-Encoding` whose last coding is chunked.
    Chunked(Chunked),
    /// `Transfer-Encoding: gzip`: not chunked, so the body runs to the close.
    Coded(Vec<u8>),
    /// No framing header: the body runs to the close.
    ToClose(Vec<u8>),
}

/// How a right `Content-Length` is written.
#[derive(Debug, Clone, Copy)]
pub enum LengthForm {
    Plain,
    /// Two lines with the same value.
    Twice,
    /// One line, `n, n`.
    List,
    /// Spaces and a tab around the digits.
    Padded,
}

/// A chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    /// Each chunk's data (empty chunks are left out, an empty one ends the body) and the
    /// extensions on its size line.
    pub chunks: Vec<(Vec<u8>, &'static str)>,
    pub last_extension: &'static str,
    pub trailers: Vec<Field>,
    /// `Transfer-Encoding: chunked`, `gzip, chunked`, or `gzip` and `chunked` on two lines.
    pub codings: &'static [&'static str],
    /// Sizes in capitals, with this many leading zeros.
    pub upper: bool,
    pub zeros: usize,
    /// Chunk framing lines end in a bare LF (RFC 9112 section 2.2 lets a recipient take it).
    pub bare_lf: bool,
    /// A `Content-Length` too, which the coding overrides (RFC 9112 section 6.3, item 3).
    pub length_too: bool,
}

/// A way of getting the answer wrong.
#[derive(Debug, Clone)]
pub enum Fault {
    /// `Content-Length` is not a number.
    BadLength(&'static str),
    /// A second `Content-Length` that disagrees.
    OtherLength,
    /// The first chunk-size line is this, `#` standing for the right size's digits.
    BadChunkSize(&'static str),
    /// The first chunk's data is not followed by a line end.
    NoDataEnd,
    /// A header line makes the head this much longer than [`MAX_HEAD_BYTES`].
    LongHead(usize),
    /// More header lines than the 100 allowed, by this many.
    ManyFields(usize),
    /// The connection closes this many bytes (at least one) before the answer's end.
    Cut(usize),
}

/// The bound on the body the client reads with.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    Ample,
    /// The body's length exactly.
    Exact,
    /// Less than the body's length (when it has one), by one more than this, modulo it.
    Short(usize),
}

/// The bytes the server sends, and where the answer lies in them.
#[derive(Debug, Clone)]
pub struct Wire {
    pub bytes: Vec<u8>,
    /// The final head's end, and the answer's end (as written, before any cut).
    pub head_end: usize,
    pub answer_end: usize,
    pub closes: bool,
    pub head_only: bool,
    pub limit: usize,
}

/// What a client must make of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Refuse,
    Answer {
        status: u16,
        body: Vec<u8>,
        /// The connection may carry another request after this answer, by its head and
        /// framing (bytes after it aside).
        reusable: bool,
    },
}

/// How the final answer's body ends, by RFC 9112 section 6.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: an answer to `HEAD`, a 204 or a 304 (item 1).
    None,
    /// Chunked (item 4).
    Chunked,
    /// `Content-Length` (item 6).
    Length,
    /// Until the close (items 4 and 8).
    Close,
}

// === generation ===

/// Any case: mostly well-formed answers, one in four with a fault.
pub fn case() -> impl Strategy<Value = Case> {
    let head = (
        vec((select(vec![100u16, 102, 103]), fields(0..3)), 0..3),
        prop::bool::weighted(0.8),
        select(vec![200u16, 201, 204, 206, 304, 404, 429, 500, 503]),
        vec(select(CONNECTION.to_vec()), 0..3),
        fields(0..5),
    );
    let rest = (
        body(),
        prop::option::weighted(0.25, fault()),
        prop_oneof![3 => Just(Vec::new()), 1 => vec(any::<u8>(), 1..40)],
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.1),
        limit(),
        vec(any::<usize>(), 0..6),
    );
    (head, rest).prop_map(|(head, rest)| {
        let (interims, http11, status, connection, fields) = head;
        let (body, fault, after, closes, head_only, limit, cuts) = rest;
        Case {
            interims,
            http11,
            status,
            connection,
            fields,
            body,
            fault,
            after,
            closes,
            head_only,
            limit,
            cuts,
        }
    })
}

/// `Connection` values: options a server sends, in any case.
const CONNECTION: [&str; 6] = [
    "close",
    "keep-alive",
    "Keep-Alive",
    "Upgrade",
    "keep-alive, close",
    "TE, CLOSE",
];

/// Header lines that do not touch framing or reuse; values of visible characters with inner
/// spaces.
fn fields(count: Range<usize>) -> impl Strategy<Value = Vec<Field>> {
    let names = select(vec![
        "Server",
        "Date",
        "Content-Type",
        "x-request-id",
        "Cache-Control",
        "Retry-After",
        "Set-Cookie",
        "Link",
    ]);
    let value = vec(
        select(b"abcXYZ019 -_.,;:=/\"()<>@?{}~!#$%&'*+^`|".to_vec()),
        0..24,
    )
    .prop_map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned());
    vec((names, value), count)
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..160)
}

fn body() -> impl Strategy<Value = Body> {
    let form = select(vec![
        LengthForm::Plain,
        LengthForm::Twice,
        LengthForm::List,
        LengthForm::Padded,
    ]);
    prop_oneof![
        4 => (data(), form).prop_map(|(data, form)| Body::Length(data, form)),
        4 => chunked().prop_map(Body::Chunked),
        1 => data().prop_map(Body::Coded),
        2 => data().prop_map(Body::ToClose),
    ]
}

fn chunked() -> impl Strategy<Value = Chunked> {
    let extension = select(vec![
        "",
        "",
        ";a",
        ";a=b",
        " ;q=\"x y\"",
        ";x=1;y=2",
        "\t;t",
    ]);
    let chunk = (vec(any::<u8>(), 1..60), extension.clone());
    let codings: [&'static [&'static str]; 3] =
        [&["chunked"], &["gzip, chunked"], &["gzip", "Chunked"]];
    (
        (
            vec(chunk, 0..5),
            extension,
            fields(0..3),
            select(codings.to_vec()),
        ),
        (any::<bool>(), 0..3usize),
        (prop::bool::weighted(0.1), prop::bool::weighted(0.1)),
    )
        .prop_map(|(parts, (upper, zeros), (bare_lf, length_too))| {
            let (chunks, last_extension, trailers, codings) = parts;
            Chunked {
                chunks,
                last_extension,
                trailers,
                codings,
                upper,
                zeros,
                bare_lf,
                length_too,
            }
        })
}

fn fault() -> impl Strategy<Value = Fault> {
    let bad_length = select(vec![
        "-1",
        "+3",
        "3a",
        "0x10",
        "",
        "1 2",
        "99999999999999999999",
    ]);
    // `#` stands for the right size's digits.
    let bad_size = select(vec![
        "zz",
        "#x",
        "-#",
        "0x#",
        "+#",
        " #",
        "# x",
        "#\t=",
        "#;a\rb",
        "1ffffffffffffffff",
        "",
    ]);
    prop_oneof![
        bad_length.prop_map(Fault::BadLength),
        Just(Fault::OtherLength),
        bad_size.prop_map(Fault::BadChunkSize),
        Just(Fault::NoDataEnd),
        (0..4096usize).prop_map(Fault::LongHead),
        (1..10usize).prop_map(Fault::ManyFields),
        (1..64usize).prop_map(Fault::Cut),
    ]
}

fn limit() -> impl Strategy<Value = Limit> {
    prop_oneof![
        4 => Just(Limit::Ample),
        1 => Just(Limit::Exact),
        1 => any::<usize>().prop_map(Limit::Short),
    ]
}

// === the wire ===

impl Case {
    /// The bytes the server sends: the answer, perhaps cut short, then what follows it.
    pub fn wire(&self) -> Wire {
        let mut bytes = self.head();
        let head_end = bytes.len();
        if self.framing() != Framing::None {
            self.write_body(&mut bytes);
        }
        let answer_end = bytes.len();
        let cut = match self.fault {
            Some(Fault::Cut(by)) => Some(answer_end - by.min(answer_end - 1)),
            _ => None,
        };
        match cut {
            Some(cut) => bytes.truncate(cut),
            None => bytes.extend_from_slice(&self.after),
        }
        let body_len = match self.framing() {
            Framing::None => 0,
            Framing::Close => bytes.len().saturating_sub(head_end),
            Framing::Length | Framing::Chunked => self.data().len(),
        };
        Wire {
            bytes,
            head_end,
            answer_end,
            closes: self.closes || cut.is_some() || self.framing() == Framing::Close,
            head_only: self.head_only,
            limit: match self.limit {
                Limit::Ample => body_len + 1024,
                Limit::Exact => body_len,
                Limit::Short(by) => body_len.saturating_sub(1 + by % body_len.max(1)),
            },
        }
    }

    /// Interim heads and the final head, with the framing lines the body and the fault call
    /// for.
    fn head(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (status, fields) in &self.interims {
            out.extend_from_slice(format!("HTTP/1.1 {status} Interim\r\n").as_bytes());
            write_fields(&mut out, fields, "\r\n");
            out.extend_from_slice(b"\r\n");
        }
        let version = if self.http11 { "1.1" } else { "1.0" };
        out.extend_from_slice(format!("HTTP/{version} {} Said\r\n", self.status).as_bytes());
        write_fields(&mut out, &self.fields, "\r\n");
        for value in &self.connection {
            write_fields(&mut out, &[("Connection", (*value).to_owned())], "\r\n");
        }
        write_fields(&mut out, &self.framing_fields(), "\r\n");
        match self.fault {
            Some(Fault::LongHead(by)) => {
                let padding = "p".repeat(MAX_HEAD_BYTES + by);
                write_fields(&mut out, &[("X-Padding", padding)], "\r\n");
            }
            Some(Fault::ManyFields(by)) => {
                for i in 0..100 + by {
                    out.extend_from_slice(format!("X-F{i}: v\r\n").as_bytes());
                }
            }
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// `Content-Length` and `Transfer-Encoding` lines.
    fn framing_fields(&self) -> Vec<Field> {
        let length = |value: String| ("Content-Length", value);
        let mut lines = Vec::new();
        match &self.body {
            Body::Length(data, form) => {
                let n = data.len();
                match (&self.fault, form) {
                    (Some(Fault::BadLength(bad)), _) => lines.push(length((*bad).to_owned())),
                    (_, LengthForm::Plain) => lines.push(length(n.to_string())),
                    (_, LengthForm::Twice) => {
                        lines.extend([length(n.to_string()), length(n.to_string())])
                    }
                    (_, LengthForm::List) => lines.push(length(format!("{n}, {n}"))),
                    (_, LengthForm::Padded) => lines.push(length(format!(" \t{n}\t "))),
                }
                if let Some(Fault::OtherLength) = self.fault {
                    lines.push(length((n + 1).to_string()));
                }
                return lines;
            }
            Body::Chunked(chunked) => {
                for coding in chunked.codings {
                    lines.push(("Transfer-Encoding", (*coding).to_owned()));
                }
                if chunked.length_too {
                    lines.push(length((self.data().len() + 7).to_string()));
                }
            }
            Body::Coded(_) => lines.push(("Transfer-Encoding", "gzip".to_owned())),
            Body::ToClose(_) => {}
        }
        match self.fault {
            Some(Fault::BadLength(bad)) => lines.push(length(bad.to_owned())),
            Some(Fault::OtherLength) => lines.extend([length("1".into()), length("2".into())]),
            _ => {}
        }
        lines
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        match &self.body {
            Body::Length(data, _) | Body::Coded(data) | Body::ToClose(data) => {
                out.extend_from_slice(data);
            }
            Body::Chunked(chunked) => self.write_chunks(chunked, out),
        }
    }

    fn write_chunks(&self, chunked: &Chunked, out: &mut Vec<u8>) {
        let end = if chunked.bare_lf { "\n" } else { "\r\n" };
        let mut bad_size = match self.fault {
            Some(Fault::BadChunkSize(bad)) => Some(bad),
            _ => None,
        };
        let mut no_data_end = matches!(self.fault, Some(Fault::NoDataEnd));
        let mut size_line = |out: &mut Vec<u8>, size: usize, extension: &str| {
            let digits = match chunked.upper {
                true => format!("{size:X}"),
                false => format!("{size:x}"),
            };
            let zeros = "0".repeat(chunked.zeros);
            let line = zeros + &digits;
            let line = bad_size
                .take()
                .map_or(line.clone(), |bad| bad.replace('#', &line));
            out.extend_from_slice(format!("{line}{extension}{end}").as_bytes());
        };
        for (data, extension) in &chunked.chunks {
            size_line(out, data.len(), extension);
            out.extend_from_slice(data);
            let data_end = if std::mem::take(&mut no_data_end) {
                "XX"
            } else {
                ""
            };
            out.extend_from_slice(format!("{data_end}{end}").as_bytes());
        }
        size_line(out, 0, chunked.last_extension);
        write_fields(out, &chunked.trailers, end);
        out.extend_from_slice(end.as_bytes());
    }

    /// The body's data, decoded.
    fn data(&self) -> Vec<u8> {
        match &self.body {
            Body::Length(data, _) | Body::Coded(data) | Body::ToClose(data) => data.clone(),
            Body::Chunked(chunked) => chunked
                .chunks
                .iter()
                .flat_map(|(data, _)| data.clone())
                .collect(),
        }
    }

    /// The bytes split where the case says, as the server writes them.
    pub fn pieces<'a>(&self, bytes: &'a [u8]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = self
            .cuts
            .iter()
            .map(|cut| cut % bytes.len().max(1))
            .collect();
        cuts.extend([0, bytes.len()]);
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2)
            .map(|pair| &bytes[pair[0]..pair[1]])
            .collect()
    }
}

/// `name: value` lines, each ending in `end`.
fn write_fields(out: &mut Vec<u8>, fields: &[Field], end: &str) {
    for (name, value) in fields {
        out.extend_from_slice(format!("{name}: {value}{end}").as_bytes());
    }
}

// === the model (RFC 9112) ===

impl Case {
    /// What a client must make of `wire`: refuse it, or read this status and body, and may
    /// or may not send another request on the connection.
    pub fn expect(&self, wire: &Wire) -> Expect {
        if self.head_is_faulty() || wire.bytes.len() < wire.head_end {
            return Expect::Refuse;
        }
        let framing = self.framing();
        let complete = wire.bytes.len() >= wire.answer_end;
        let chunks_faulty = self.chunk_fault_applies();
        let body = match framing {
            Framing::None => Vec::new(),
            Framing::Close => wire.bytes[wire.head_end..].to_vec(),
            Framing::Length if complete => self.data(),
            Framing::Chunked if complete && !chunks_faulty => self.data(),
            Framing::Length | Framing::Chunked => return Expect::Refuse,
        };
        if body.len() > wire.limit {
            return Expect::Refuse;
        }
        // Section 9.3: persistence; section 6.3, item 3: a length beside a coding ends it;
        // and a body that ends with the connection cannot leave it open.
        let both = self.has_coding()
            && self
                .framing_fields()
                .iter()
                .any(|(name, _)| *name == "Content-Length");
        Expect::Answer {
            status: self.status,
            body,
            reusable: self.persistent() && !both && framing != Framing::Close,
        }
    }

    /// A fault in the head that refuses the answer whatever its status: a `Content-Length`
    /// that is not one number (section 6.3, item 5; the codec refuses it even where the
    /// length does not frame the body), a head too long or with too many lines, and a
    /// transfer coding in HTTP/1.0 (section 6.1: the framing is faulty).
    fn head_is_faulty(&self) -> bool {
        let faulty = matches!(
            self.fault,
            Some(
                Fault::BadLength(_)
                    | Fault::OtherLength
                    | Fault::LongHead(_)
                    | Fault::ManyFields(_)
            )
        );
        faulty || (!self.http11 && self.has_coding())
    }

    /// A fault in the chunks counts only when there is a first chunk-size line (always) or a
    /// first chunk's data to end (when there is a chunk).
    fn chunk_fault_applies(&self) -> bool {
        match (&self.fault, &self.body) {
            (Some(Fault::BadChunkSize(_)), Body::Chunked(_)) => true,
            (Some(Fault::NoDataEnd), Body::Chunked(chunked)) => !chunked.chunks.is_empty(),
            _ => false,
        }
    }

    fn has_coding(&self) -> bool {
        matches!(self.body, Body::Chunked(_) | Body::Coded(_))
    }

    /// Section 6.3: how the body ends.
    fn framing(&self) -> Framing {
        if self.head_only || self.status == 204 || self.status == 304 {
            return Framing::None;
        }
        match self.body {
            Body::Chunked(_) => Framing::Chunked,
            Body::Coded(_) | Body::ToClose(_) => Framing::Close,
            Body::Length(..) => Framing::Length,
        }
    }

    /// Section 9.3: `close` ends the connection; HTTP/1.1 keeps it, HTTP/1.0 only with
    /// `keep-alive`.
    fn persistent(&self) -> bool {
        let tokens = || {
            self.connection
                .iter()
                .flat_map(|value| value.split(','))
                .map(str::trim)
        };
        if tokens().any(|token| token.eq_ignore_ascii_case("close")) {
            return false;
        }
        self.http11 || tokens().any(|token| token.eq_ignore_ascii_case("keep-alive"))
    }

    /// Why hyper's client, the reference, reads this case otherwise than RFC 9112 and the
    /// codec do, if it does. Each time, the codec is the stricter or the RFC allows both.
    pub fn reference_differs(&self) -> Option<&'static str> {
        let framing = self.framing();
        let bare_lf = matches!(&self.body, Body::Chunked(chunked) if chunked.bare_lf);
        let reasons = [
            (
                framing == Framing::Chunked && bare_lf,
                "hyper takes only CRLF in chunk framing; section 2.2 lets a recipient take a \
                 bare LF, and the codec does",
            ),
            (
                framing == Framing::Chunked && matches!(self.fault, Some(Fault::BadChunkSize(""))),
                "hyper reads an empty chunk-size line as the last chunk; section 7.1 asks for \
                 a digit, and the codec refuses it",
            ),
            (
                matches!(self.fault, Some(Fault::BadLength(_) | Fault::OtherLength))
                    && (self.has_coding() || framing == Framing::None),
                "hyper ignores Content-Length where it does not frame the body; the codec \
                 refuses a malformed one in any head",
            ),
            (
                !self.http11 && self.has_coding() && framing == Framing::None,
                "hyper ignores Transfer-Encoding in HTTP/1.0 where it does not frame the body; \
                 the codec refuses it in any head",
            ),
            (
                matches!(self.fault, Some(Fault::LongHead(_))),
                "hyper bounds its read buffer, not the head: a longer head may come in one read",
            ),
        ];
        reasons
            .into_iter()
            .find_map(|(differs, reason)| differs.then_some(reason))
    }
}
