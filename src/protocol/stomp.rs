//! STOMP 1.2 frames as VDSM speaks them (`lib/yajsonrpc/stomp.py`): a command line, `key:value`
//! header lines (escaped as STOMP 1.2 says), a blank line, the body and a NUL. A bare end of line
//! between frames is a heart-beat. Pure: bytes in, frames out; the connections live in
//! [`super::server`] and [`super::client`].

/// Where requests go: VDSM answers frames SENT to this destination (or one below it, `.`-separated).
pub const REQUESTS: &str = "jms.topic.vdsm_requests";
/// VDSM's second request destination (the storage "irs" verbs); served the same way.
pub const IRS_REQUESTS: &str = "jms.topic.vdsm_irs_requests";
/// Where the oVirt engine's client subscribes for responses (VDSM's default reply destination).
pub const RESPONSES: &str = "jms.topic.vdsm_responses";
/// Where the oVirt engine's client subscribes for events.
pub const EVENTS: &str = "jms.queue.events";
/// The only protocol version VDSM speaks; its server refuses a CONNECT offering anything else.
pub const VERSION: &str = "1.2";

/// The largest frame either side reads (headers and body). A connect with 100 domains is about
/// 6 KiB; a stats answer for 100 domains about 20 KiB.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// What a connection reads at a time at least. Each connection's buffer starts this small and
/// grows only for a large frame: the buffer is held the whole time a connection waits, so its
/// size is paid once per connection (the controller keeps hundreds). A call's answer is a few
/// hundred bytes; a larger frame grows the buffer as it arrives.
const READ_CHUNK: usize = 512;

/// Makes room in a connection's read buffer for the next read; a buffer a larger frame grew is
/// given back once it is empty, so an idle connection holds [`READ_CHUNK`] bytes.
pub fn make_room(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 2 * READ_CHUNK {
        *buf = Vec::new();
    }
    buf.reserve(READ_CHUNK);
}

/// The most header lines a frame may carry.
const MAX_HEADERS: usize = 64;

/// STOMP's commands, as VDSM names them.
pub mod command {
    /// Client: open the session.
    pub const CONNECT: &str = "CONNECT";
    /// Client: STOMP 1.2's other name for CONNECT (VDSM's detector does not know it; we do).
    pub const STOMP: &str = "STOMP";
    /// Server: the session is open.
    pub const CONNECTED: &str = "CONNECTED";
    /// Client: a message (a JSON-RPC request) to a destination.
    pub const SEND: &str = "SEND";
    /// Client: receive the messages of a destination.
    pub const SUBSCRIBE: &str = "SUBSCRIBE";
    /// Client: stop receiving them.
    pub const UNSUBSCRIBE: &str = "UNSUBSCRIBE";
    /// Server: a message (a JSON-RPC response) for a subscription.
    pub const MESSAGE: &str = "MESSAGE";
    /// Server: a frame's `receipt` was processed.
    pub const RECEIPT: &str = "RECEIPT";
    /// Server: something is wrong; the connection closes after it.
    pub const ERROR: &str = "ERROR";
    /// Client: close the session (with a `receipt`, the server confirms first).
    pub const DISCONNECT: &str = "DISCONNECT";
}

/// One frame. Headers keep their order; a repeated header's first value is the one that counts
/// (STOMP 1.2, and VDSM's parser).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// `CONNECT`, `SEND`, `MESSAGE`...
    pub command: String,
    /// Unescaped header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (JSON for SEND and MESSAGE).
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: &str) -> Self {
        Self {
            command: command.to_owned(),
            ..Self::default()
        }
    }

    /// With one more header.
    #[must_use]
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// With this body.
    #[must_use]
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The wire form: `content-length` is added for a body (any given one is dropped), values
    /// are escaped except in CONNECT and CONNECTED frames (STOMP 1.2).
    pub fn encode(&self) -> Vec<u8> {
        let escaped = !matches!(
            self.command.as_str(),
            command::CONNECT | command::CONNECTED | command::STOMP
        );
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.extend_from_slice(self.command.as_bytes());
        out.push(b'\n');
        for (k, v) in &self.headers {
            if k == "content-length" {
                continue;
            }
            push_value(&mut out, k, escaped);
            out.push(b':');
            push_value(&mut out, v, escaped);
            out.push(b'\n');
        }
        if !self.body.is_empty() {
            out.extend_from_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
        out
    }
}

fn push_value(out: &mut Vec<u8>, s: &str, escaped: bool) {
    if !escaped {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b':' => out.extend_from_slice(b"\\c"),
            _ => out.push(b),
        }
    }
}

/// What the front of a byte stream holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A heart-beat (a bare end of line between frames).
    HeartBeat,
    /// A whole frame.
    Frame(Frame),
}

/// Why bytes are not a STOMP frame. The connection cannot go on after any of these: where the
/// next frame starts is unknown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame is (or announces to be) larger than the limit.
    #[error("frame larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A header line has no `:`, an unknown escape, or is not UTF-8; or the command is empty or
    /// not UTF-8.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What is wrong, for the ERROR frame.
        reason: &'static str,
    },
}

/// Takes the first heart-beat or frame off `buf`: `Ok(None)` while more bytes are needed, else
/// what it is and how many bytes it took. Never panics, whatever the bytes.
///
/// # Errors
/// [`FrameError`] for bytes no more bytes can make a frame of.
pub fn decode(buf: &[u8], limit: usize) -> Result<Option<(Decoded, usize)>, FrameError> {
    match buf {
        [] | [b'\r'] => return Ok(None),
        [b'\n', ..] => return Ok(Some((Decoded::HeartBeat, 1))),
        [b'\r', b'\n', ..] => return Ok(Some((Decoded::HeartBeat, 2))),
        _ => {}
    }
    let mut lines = Lines { buf, at: 0 };
    let Some(command) = lines.next_line() else {
        return incomplete(buf, limit);
    };
    let command = std::str::from_utf8(command)
        .ok()
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_uppercase()))
        .ok_or(FrameError::Malformed {
            reason: "the command is not an upper-case word",
        })?;
    let escaped = !matches!(
        command,
        command::CONNECT | command::CONNECTED | command::STOMP
    );
    let mut headers = Vec::new();
    loop {
        let Some(line) = lines.next_line() else {
            return incomplete(buf, limit);
        };
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(FrameError::Malformed {
                reason: "too many headers",
            });
        }
        let colon = line
            .iter()
            .position(|b| *b == b':')
            .ok_or(FrameError::Malformed {
                reason: "a header line without ':'",
            })?;
        let key = unescape(&line[..colon], escaped)?;
        let value = unescape(&line[colon + 1..], escaped)?;
        headers.push((key, value));
    }
    let start = lines.at;
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.trim().parse::<usize>())
        .transpose()
        .map_err(|_| FrameError::Malformed {
            reason: "content-length is not a number",
        })?;
    let end = match length {
        Some(n) => {
            if start.saturating_add(n) >= limit {
                return Err(FrameError::TooLarge { limit });
            }
            if buf.len() <= start + n {
                return Ok(None);
            }
            if buf[start + n] != 0 {
                return Err(FrameError::Malformed {
                    reason: "the body does not end with NUL where content-length says",
                });
            }
            start + n
        }
        None => match buf[start..].iter().position(|b| *b == 0) {
            Some(n) => start + n,
            None => return incomplete(buf, limit),
        },
    };
    let frame = Frame {
        command: command.to_owned(),
        headers,
        body: buf[start..end].to_vec(),
    };
    Ok(Some((Decoded::Frame(frame), end + 1)))
}

fn incomplete(buf: &[u8], limit: usize) -> Result<Option<(Decoded, usize)>, FrameError> {
    if buf.len() >= limit {
        Err(FrameError::TooLarge { limit })
    } else {
        Ok(None)
    }
}

struct Lines<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Lines<'a> {
    /// The next line without its end (`\n` or `\r\n`), or `None` when it is not complete.
    fn next_line(&mut self) -> Option<&'a [u8]> {
        let rest = &self.buf[self.at..];
        let n = rest.iter().position(|b| *b == b'\n')?;
        self.at += n + 1;
        let line = &rest[..n];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

fn unescape(raw: &[u8], escaped: bool) -> Result<String, FrameError> {
    let bad = FrameError::Malformed {
        reason: "a header is not UTF-8 or has an unknown escape",
    };
    if !escaped {
        return String::from_utf8(raw.to_vec()).map_err(|_| bad);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(b) = bytes.next() {
        if *b != b'\\' {
            out.push(*b);
            continue;
        }
        out.push(match bytes.next() {
            Some(b'\\') => b'\\',
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b'c') => b':',
            _ => return Err(bad),
        });
    }
    String::from_utf8(out).map_err(|_| bad)
}

/// A `heart-beat` header value `x,y` (milliseconds); anything unreadable is `0` (VDSM's
/// `parseHeartBeatHeader`).
pub fn heart_beat(value: Option<&str>) -> (u64, u64) {
    let Some((x, y)) = value.and_then(|v| v.split_once(',')) else {
        return (0, 0);
    };
    let ms = |s: &str| s.trim().parse::<u64>().unwrap_or(0);
    (ms(x), ms(y))
}

/// Whether `destination` is `base` or below it (`base.<anything>`), as VDSM matches request
/// destinations and subscriptions.
pub fn under(destination: &str, base: &str) -> bool {
    destination == base
        || destination
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Frame {
        match decode(bytes, MAX_FRAME_BYTES) {
            Ok(Some((Decoded::Frame(f), n))) => {
                assert_eq!(n, bytes.len());
                f
            }
            other => panic!("not one frame: {other:?}"),
        }
    }

    #[test]
    fn vdsm_clients_frames_parse() {
        // As VDSM's Python client sends them (vdsm-wire.md, appendix).
        let f = one(b"CONNECT\naccept-version:1.2\nheart-beat:0,24000\n\n\0");
        assert_eq!(f.command, "CONNECT");
        assert_eq!(f.get("accept-version"), Some("1.2"));
        assert_eq!(heart_beat(f.get("heart-beat")), (0, 24000));
        let body = br#"[{"jsonrpc": "2.0", "method": "Host.getStats", "params": {}, "id": "a"}]"#;
        let mut send = format!(
            "SEND\ndestination:jms.topic.vdsm_requests\ncontent-type:application/json\nreply-to:q1\ncontent-length:{}\n\n",
            body.len()
        )
        .into_bytes();
        send.extend_from_slice(body);
        send.push(0);
        let f = one(&send);
        assert_eq!(f.body, body);
        assert_eq!(f.get("reply-to"), Some("q1"));
    }

    #[test]
    fn crlf_no_content_length_and_repeated_headers() {
        let f = one(b"SEND\r\ndestination:a\r\ndestination:b\r\n\r\n{}\0");
        assert_eq!(f.get("destination"), Some("a"));
        assert_eq!(f.body, b"{}");
    }

    #[test]
    fn heart_beats_and_partial_frames() {
        assert_eq!(
            decode(b"\nSEND", MAX_FRAME_BYTES),
            Ok(Some((Decoded::HeartBeat, 1)))
        );
        assert_eq!(
            decode(b"\r\n", MAX_FRAME_BYTES),
            Ok(Some((Decoded::HeartBeat, 2)))
        );
        let whole = Frame::new("SEND")
            .header("destination", "x")
            .with_body(b"{\"a\":1}".to_vec())
            .encode();
        for cut in 0..whole.len() {
            assert_eq!(decode(&whole[..cut], MAX_FRAME_BYTES), Ok(None), "{cut}");
        }
    }

    #[test]
    fn values_are_escaped_except_in_connect() {
        let f = Frame::new("MESSAGE").header("destination", "a:b\nc\\d");
        let wire = f.encode();
        assert!(wire.starts_with(b"MESSAGE\ndestination:a\\cb\\nc\\\\d\n"));
        assert_eq!(one(&wire), f);
        let c = Frame::new("CONNECT").header("host", "h:1");
        assert!(c.encode().starts_with(b"CONNECT\nhost:h:1\n"));
        assert_eq!(one(&c.encode()), c);
    }

    #[test]
    fn bad_frames_are_refused_not_waited_for() {
        let limit = 64;
        assert!(matches!(
            decode(&[b'A'; 64], limit),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode(b"SEND\ncontent-length:999999\n\n", limit),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode(b"SEND\ncontent-length:1\n\nab\0", limit),
            Err(FrameError::Malformed { .. })
        ));
        assert!(matches!(
            decode(b"SEND\nno colon\n\n\0", limit),
            Err(FrameError::Malformed { .. })
        ));
        assert!(matches!(
            decode(b"SEND\nk:\\x\n\n\0", limit),
            Err(FrameError::Malformed { .. })
        ));
        assert!(matches!(
            decode(b"send\n\n\0", limit),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn destinations_match_below_but_not_beside() {
        assert!(under(REQUESTS, REQUESTS));
        assert!(under("jms.topic.vdsm_requests.x", REQUESTS));
        assert!(!under("jms.topic.vdsm_requestsx", REQUESTS));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(Some((_, n))) = decode(&bytes, 256) {
                proptest::prop_assert!(n > 0 && n <= bytes.len());
            }
        }

        #[test]
        fn frames_round_trip(
            command in "[A-Z]{1,12}",
            headers in proptest::collection::vec(("[a-z-]{1,10}", "[ -~\\n\\r]{0,20}"), 0..6),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            proptest::prop_assume!(!matches!(command.as_str(), "CONNECT" | "CONNECTED" | "STOMP"));
            let mut f = Frame::new(&command).with_body(body);
            for (k, v) in headers {
                if k != "content-length" {
                    f = f.header(&k, v);
                }
            }
            let wire = f.encode();
            let decoded = decode(&wire, MAX_FRAME_BYTES);
            let mut expected = f.clone();
            if !expected.body.is_empty() {
                let length = expected.body.len().to_string();
                expected = expected.header("content-length", length);
            }
            proptest::prop_assert_eq!(decoded, Ok(Some((Decoded::Frame(expected), wire.len()))));
        }
    }
}
