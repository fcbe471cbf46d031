//! One instance of the upstream as the request path sees it: its address and zone, its own
//! connection pool, requests in flight, and its health in flags that the request path reads
//! without a lock (ejected, proven, suspect, troubled) beside the counters behind one. The set
//! ([`super::EndpointSet`]) decides ejections; this type records what happened.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::header::HeaderValue;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::transport::Pool;
use crate::transport::http1::{self, Outgoing};

/// Flags of an endpoint: ejected.
pub(super) const EJECTED: u8 = 1;
/// The endpoint has answered, a live request or a probe.
pub(super) const PROVEN: u8 = 2;
/// Failing, but the ejection cap kept it in: a probe will tell whether it is dead.
pub(super) const SUSPECT: u8 = 4;
/// Failures or ejections since the last live answer: a success has history to clear. Kept as a
/// flag so that the success path of a healthy endpoint takes no lock.
pub(super) const TROUBLED: u8 = 8;

/// The picker's preference, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Has answered; not ejected, not cooling down.
    Ready = 0,
    /// Has never answered, or said it is overloaded a moment ago.
    Doubtful = 1,
    /// Ejected: tried only when nothing else is left.
    Ejected = 2,
}

/// What every endpoint sends besides each call's own request: the health probe's request
/// line, and the `Via` line that goes with each call. Both made once.
#[derive(Debug, Clone)]
pub struct Requests {
    /// `GET <probe path> HTTP/1.1\r\n`.
    probe_line: Box<[u8]>,
    /// `via: <entry>\r\n`, or nothing.
    via_line: Box<[u8]>,
}

impl Requests {
    /// Probes of `probe_path` (`/` when it is not an origin-form path: the options were not
    /// validated), calls with `via` (left out when it is not a field value).
    pub fn new(probe_path: &str, via: Option<&HeaderValue>) -> Self {
        let path = Some(probe_path.as_bytes())
            .filter(|path| http1::is_origin_form(path))
            .unwrap_or(b"/");
        let mut via_line = Vec::new();
        if let Some(via) = via.filter(|via| http1::is_field_value(via.as_bytes())) {
            http1::field_line(&mut via_line, b"via", via.as_bytes());
        }
        Self {
            probe_line: http1::request_line(b"GET", path).into(),
            via_line: via_line.into(),
        }
    }
}

/// One instance of the upstream.
#[derive(Debug)]
pub struct Endpoint {
    pub(super) addr: SocketAddr,
    /// The availability zone, when discovery says (Cloud Map's API does, DNS does not).
    zone: Option<Arc<str>>,
    /// The header lines sent to this endpoint with every call, made once: `host: <address>`
    /// and then the `via` line.
    fields: Box<[u8]>,
    /// Where the `host` line ends in `fields`.
    host_end: usize,
    /// The health probe's request line.
    probe_line: Box<[u8]>,
    /// This endpoint's own connection pool, so that the endpoint's idle connections close when
    /// it leaves the set.
    pub(super) pool: Pool,
    in_flight: AtomicUsize,
    pub(super) flags: AtomicU8,
    /// End of a cool-down, in milliseconds since `epoch`; 0 when none.
    cooling_until: AtomicU64,
    epoch: Instant,
    health: Mutex<Health>,
    /// The set's health signal, told of a first proof (the set tells the rest itself).
    health_changed: watch::Sender<()>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Health {
    pub(super) consecutive_failures: u32,
    pub(super) ejections: u32,
    /// The earliest a probe may bring the endpoint back.
    pub(super) ejected_until: Option<Instant>,
    /// The last probe failed.
    pub(super) probe_failed: bool,
    /// Ejected because its probe failed while others answered: dead, not an outlier.
    pub(super) dead: bool,
}

impl Endpoint {
    pub(super) fn new(
        addr: SocketAddr,
        zone: Option<Arc<str>>,
        pool: Pool,
        requests: &Requests,
        epoch: Instant,
        health_changed: watch::Sender<()>,
    ) -> Self {
        // An address and port are digits, dots, colons and brackets: always a field value.
        let mut fields = Vec::with_capacity(64);
        http1::field_line(&mut fields, b"host", addr.to_string().as_bytes());
        let host_end = fields.len();
        fields.extend_from_slice(&requests.via_line);
        Self {
            addr,
            zone,
            fields: fields.into(),
            host_end,
            probe_line: requests.probe_line.clone(),
            pool,
            in_flight: AtomicUsize::new(0),
            flags: AtomicU8::new(0),
            cooling_until: AtomicU64::new(0),
            epoch,
            health: Mutex::default(),
            health_changed,
        }
    }

    /// The instance's address and port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The instance's availability zone, when known.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The header lines every call to this endpoint carries: `host` with its address (left
    /// out when the call names its own host), and `via` when the upstream has one.
    pub fn fields(&self, own_host: bool) -> &[u8] {
        if own_host {
            &self.fields[self.host_end..]
        } else {
            &self.fields
        }
    }

    /// The health probe's request: `GET <probe path>` with `host`.
    pub fn probe_request(&self) -> Outgoing<'_> {
        Outgoing {
            id: 0,
            line: &self.probe_line,
            fields: [&self.fields[..self.host_end], b"", b""],
            body: b"",
            always_length: false,
            head_only: false,
            replayable: true,
        }
    }

    /// The connection pool to call this endpoint with.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Requests to this endpoint now in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// How the picker should regard this endpoint at `now`. Lock-free.
    pub fn tier(&self, now: Instant) -> Tier {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & EJECTED != 0 {
            Tier::Ejected
        } else if flags & PROVEN == 0 || self.cooling(now) {
            Tier::Doubtful
        } else {
            Tier::Ready
        }
    }

    /// True during a cool-down; the clock is read only when there is one.
    fn cooling(&self, now: Instant) -> bool {
        let until = self.cooling_until.load(Ordering::Relaxed);
        until != 0 && until > self.millis(now)
    }

    /// True while ejected.
    pub fn is_ejected(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & EJECTED != 0
    }

    /// True once the endpoint has answered, a live request or a probe.
    pub fn is_proven(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & PROVEN != 0
    }

    /// True when a health probe should look at this endpoint: ejected, never answered, or
    /// failing while the cap keeps it in.
    pub fn needs_probe(&self) -> bool {
        let flags = self.flags.load(Ordering::Relaxed);
        flags & (EJECTED | SUSPECT) != 0 || flags & PROVEN == 0
    }

    /// A live answer: the failure streak ends, the endpoint is proven. An ejected endpoint
    /// stays ejected until a probe answers.
    pub fn record_success(&self) {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & (PROVEN | SUSPECT | TROUBLED) == PROVEN {
            return;
        }
        let mut health = self.health();
        health.consecutive_failures = 0;
        if flags & EJECTED == 0 {
            health.ejections = 0;
            self.set(TROUBLED, false);
        }
        self.set(PROVEN, true);
        self.set(SUSPECT, false);
        if flags & PROVEN == 0 {
            self.health_changed.send_replace(());
        }
    }

    /// The endpoint said it is overloaded: prefer others until `until`.
    pub fn cool_down(&self, until: Instant) {
        self.cooling_until
            .store(self.millis(until).max(1), Ordering::Relaxed);
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn set(&self, flag: u8, on: bool) {
        if on {
            self.flags.fetch_or(flag, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!flag, Ordering::Relaxed);
        }
    }

    pub(super) fn health(&self) -> MutexGuard<'_, Health> {
        // The lock guards plain counters that every write leaves consistent, so a poisoned
        // lock still holds good data.
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A request in flight to an endpoint; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
