//! The chunked transfer coding (RFC 9112 section 7.1), decoded in place and bounded.

use super::WireError;

/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 1024;
/// Most bytes of chunk framing (sizes, extensions, trailers) around a body, beyond the data.
const MAX_CHUNK_OVERHEAD: usize = 16 * 1024;

/// Joins a chunked body's data in place: the data moves down over the framing as it is
/// decoded, so the body ends up contiguous where it began.
#[derive(Debug)]
pub struct Dechunker {
    state: Chunk,
    /// Body bytes decoded so far.
    data: usize,
    /// Framing bytes consumed so far.
    overhead: usize,
    limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines, up to the empty one.
    Trailers,
    /// The body is complete.
    Done,
}

/// How far [`Dechunker::decode`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of `buf[start..]` consumed.
    pub consumed: usize,
    /// The body's end in `buf`: decoded data lies in `start_of_body..body_end`.
    pub body_end: usize,
    /// The last chunk and the trailers have been read.
    pub done: bool,
}

impl Dechunker {
    /// A decoder for a body of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            state: Chunk::Size,
            data: 0,
            overhead: 0,
            limit,
        }
    }

    /// Decodes what it can of `buf[raw..]`, writing data from `out` on (`out <= raw`).
    pub fn decode(
        &mut self,
        buf: &mut [u8],
        mut raw: usize,
        mut out: usize,
    ) -> Result<Progress, WireError> {
        let start = raw;
        while let Some((read, wrote)) = self.step(buf, raw, out)? {
            raw += read;
            out += wrote;
            if self.overhead > MAX_CHUNK_OVERHEAD {
                return Err(WireError::Chunked("too much framing"));
            }
        }
        Ok(Progress {
            consumed: raw - start,
            body_end: out,
            done: self.state == Chunk::Done,
        })
    }

    /// One step from the current state: the bytes read from `raw` and the body bytes written
    /// at `out`, or `None` when the body is done or more bytes are needed.
    fn step(
        &mut self,
        buf: &mut [u8],
        raw: usize,
        out: usize,
    ) -> Result<Option<(usize, usize)>, WireError> {
        let framing = |this: &mut Self, read: Option<usize>| {
            this.overhead += read.unwrap_or(0);
            read.map(|read| (read, 0))
        };
        Ok(match self.state {
            Chunk::Done => None,
            Chunk::Size => {
                let read = self.size_line(&buf[raw..])?;
                framing(self, read)
            }
            Chunk::Data(left) => self.data(buf, raw, out, left),
            Chunk::DataEnd => {
                let read = self.data_end(&buf[raw..])?;
                framing(self, read)
            }
            Chunk::Trailers => {
                let read = self.trailer(&buf[raw..])?;
                framing(self, read)
            }
        })
    }

    /// A chunk-size line: the next chunk's size, bounded by what is left of the limit.
    fn size_line(&mut self, bytes: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(line) = line(bytes, MAX_CHUNK_LINE)? else {
            return Ok(None);
        };
        let size = chunk_size(&bytes[..line.content])?;
        if size > (self.limit - self.data) as u64 {
            return Err(WireError::TooLarge(self.limit));
        }
        self.state = match size {
            0 => Chunk::Trailers,
            size => Chunk::Data(size as usize),
        };
        Ok(Some(line.total))
    }

    /// Chunk data: moved down from `raw` to `out`, as much as has arrived.
    fn data(
        &mut self,
        buf: &mut [u8],
        raw: usize,
        out: usize,
        left: usize,
    ) -> Option<(usize, usize)> {
        let take = left.min(buf.len() - raw);
        if take == 0 {
            return None;
        }
        buf.copy_within(raw..raw + take, out);
        self.data += take;
        self.state = match left - take {
            0 => Chunk::DataEnd,
            left => Chunk::Data(left),
        };
        Some((take, take))
    }

    /// The line end after a chunk's data.
    fn data_end(&mut self, bytes: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(line) = line(bytes, 2)? else {
            return Ok(None);
        };
        if line.content != 0 {
            return Err(WireError::Chunked("no line end after chunk data"));
        }
        self.state = Chunk::Size;
        Ok(Some(line.total))
    }

    /// A trailer line; the empty one ends the body.
    fn trailer(&mut self, bytes: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(line) = line(bytes, MAX_CHUNK_LINE)? else {
            return Ok(None);
        };
        if line.content == 0 {
            self.state = Chunk::Done;
        }
        Ok(Some(line.total))
    }
}

/// A line's length without and with its end (CRLF, or a bare LF).
struct Line {
    content: usize,
    total: usize,
}

/// The line at the start of `bytes`, if complete; longer than `max` is an error.
fn line(bytes: &[u8], max: usize) -> Result<Option<Line>, WireError> {
    let window = &bytes[..bytes.len().min(max + 2)];
    match window.iter().position(|&byte| byte == b'\n') {
        Some(lf) => {
            let content = if lf > 0 && window[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            Ok(Some(Line {
                content,
                total: lf + 1,
            }))
        }
        None if window.len() > max + 1 => Err(WireError::Chunked("line too long")),
        None => Ok(None),
    }
}

/// The size on a chunk-size line: hex digits, then optional whitespace and extensions
/// (RFC 9112 section 7.1.1: `BWS ";" ...`). Extensions are skipped, but may hold no control
/// character (such as a bare CR) other than a tab.
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    const BAD: WireError = WireError::Chunked("bad chunk size");
    let digits = line
        .iter()
        .position(|byte| !byte.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err(BAD);
    }
    let rest = &line[digits..];
    let space = rest
        .iter()
        .position(|byte| !matches!(byte, b' ' | b'\t'))
        .unwrap_or(rest.len());
    let extensions = &rest[space..];
    let visible = |&byte: &u8| byte == b'\t' || (byte >= 0x20 && byte != 0x7f);
    if !(extensions.is_empty() || extensions[0] == b';' && extensions.iter().all(visible)) {
        return Err(BAD);
    }
    line[..digits]
        .iter()
        .try_fold(0u64, |size, &digit| {
            let value = (digit as char).to_digit(16)?;
            size.checked_mul(16)?.checked_add(value.into())
        })
        .ok_or(BAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `raw` to a dechunker in pieces of `step` bytes, as reads would.
    fn dechunk(raw: &[u8], step: usize, limit: usize) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let mut buf = Vec::new();
        let mut decoder = Dechunker::new(limit);
        let (mut raw_at, mut out) = (0, 0);
        for piece in raw.chunks(step) {
            buf.extend_from_slice(piece);
            let progress = decoder.decode(&mut buf, raw_at, out)?;
            raw_at += progress.consumed;
            out = progress.body_end;
            if progress.done {
                return Ok((buf[..out].to_vec(), buf[raw_at..].to_vec()));
            }
        }
        Err(WireError::Chunked("ended early"))
    }

    #[test]
    fn chunks_are_joined_in_place_whatever_the_reads() {
        let raw =
            b"5\r\nhello\r\n1;ext=\"a b\"\r\n,\r\n6 \r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for step in 1..raw.len() {
            let (body, left) = dechunk(raw, step, 64).unwrap();
            assert_eq!(body, b"hello, world", "step {step}");
            // What follows the body is left where it lies.
            assert!(b"NEXT".starts_with(&left), "step {step}: {left:?}");
        }
        let (body, _) = dechunk(b"A\nabcdefghij\n0\n\n", 3, 64).unwrap();
        assert_eq!(body, b"abcdefghij");
    }

    #[test]
    fn chunked_bodies_are_bounded() {
        assert_eq!(dechunk(b"41\r\n", 64, 64), Err(WireError::TooLarge(64)));
        assert_eq!(
            dechunk(b"20\r\n0123456789abcdef0123456789abcdef\r\n21\r\n", 64, 64),
            Err(WireError::TooLarge(64))
        );
        assert_eq!(
            dechunk(b"ffffffffffffffffff\r\n", 64, 64),
            Err(WireError::Chunked("bad chunk size"))
        );
        for bad in [
            &b"zz\r\n"[..],
            b"5 x\r\n",
            b"5\t=\r\n",
            b"5;a\rb\r\n",
            b" 5\r\n",
        ] {
            assert_eq!(
                dechunk(bad, 64, 64),
                Err(WireError::Chunked("bad chunk size")),
                "{bad:?}"
            );
        }
        assert_eq!(
            dechunk(b"1\r\nab\r\n", 64, 64),
            Err(WireError::Chunked("no line end after chunk data"))
        );
        let long_extension = format!("1;{}\r\n", "x".repeat(MAX_CHUNK_LINE + 10));
        assert_eq!(
            dechunk(long_extension.as_bytes(), 7, 64),
            Err(WireError::Chunked("line too long"))
        );
        let endless_trailers = format!("0\r\n{}", "x-t: y\r\n".repeat(4096));
        assert_eq!(
            dechunk(endless_trailers.as_bytes(), 512, 64),
            Err(WireError::Chunked("too much framing"))
        );
        let one_byte_chunks = "1\r\na\r\n".repeat(65);
        assert_eq!(
            dechunk(one_byte_chunks.as_bytes(), 100, 64),
            Err(WireError::TooLarge(64))
        );
    }
}
