//! `/ws`: the live feed for browsers.
//!
//! On connect a client gets the latest of every machine (summaries), the
//! facts of every machine and the latest alert events, then live updates.
//! It may send `{"type":"subscribe","machine":"<id>"}` to narrow to one
//! machine in full detail, or `{"type":"subscribe","machine":null}` for the
//! summary of all; each switch sends the new view's current state first.
//! `{"type":"pause"}` stops the updates (but for machines forgotten) until
//! the next `subscribe`: the dashboard sends it when its overview has been
//! out of sight for a while, so a background tab costs no bandwidth.
//!
//! Every server message is a JSON array of updates (`{"type": …, "data": …}`).
//! Per client, a pump task moves updates from the shared fan-out channel into
//! a pending map keyed by (kind, machine): a newer update replaces the older
//! one (coalescing), so the queue is bounded by the number of machines, and
//! a slow or stuck client costs the others nothing. A writer drains the map
//! into the socket; a frame that cannot go out within `ws_send_timeout_s`, or
//! a client that has not answered pings for three intervals, is closed.
//!
//! Nothing a client does grows without bound: clients are capped in total
//! and per address, and so are an address's connects per second (each one
//! sends the state of every machine), refused with 503 / 429 before the
//! upgrade; a client's message or frame is at most 4 KiB; and `subscribe`
//! (which refills the client's queue from every cache) has an allowance per
//! client: one beyond it waits, and a later one replaces it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::{Notify, broadcast};

use crate::error::ApiError;
use crate::state::{Counters, Shared, Update};

/// What a client looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
enum View {
    Summary,
    Machine(String),
    /// Nothing but the machines forgotten meanwhile: the client's page is
    /// out of sight (`{"type":"pause"}`); a `subscribe` resumes it, with
    /// the state of its view first.
    Paused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Snapshot,
    Info,
    Alert,
    Forget,
}

/// Updates waiting for one client, latest per key.
#[derive(Debug)]
struct Pending {
    view: View,
    frames: HashMap<(Kind, String), Arc<str>>,
    /// Insertion order, so a drained batch keeps the order of arrival.
    order: Vec<(Kind, String)>,
}

impl Pending {
    /// Queues `frame`; returns true when it replaced an older one.
    fn put(&mut self, key: (Kind, String), frame: Arc<str>) -> bool {
        match self.frames.insert(key.clone(), frame) {
            Some(_) => true,
            None => {
                self.order.push(key);
                false
            }
        }
    }

    fn drain(&mut self) -> Vec<Arc<str>> {
        let order = std::mem::take(&mut self.order);
        order
            .into_iter()
            .filter_map(|k| self.frames.remove(&k))
            .collect()
    }

    /// Queues the current state of the client's view.
    fn fill(&mut self, shared: &Shared) {
        match self.view.clone() {
            View::Paused => return,
            View::Summary => {
                for (k, l) in shared.latest.iter() {
                    self.put(
                        (Kind::Snapshot, k.to_string()),
                        Arc::clone(&l.summary_frame),
                    );
                }
                for (k, i) in shared.info.iter() {
                    // At the edge, only machines of the window (`api::machines`).
                    if shared.config.edge && !shared.latest.contains_key(k.as_str()) {
                        continue;
                    }
                    self.put((Kind::Info, k.to_string()), Arc::clone(&i.1));
                }
            }
            View::Machine(m) => {
                if let Some(l) = shared.latest.get(&m) {
                    self.put((Kind::Snapshot, m.clone()), Arc::clone(&l.detail_frame));
                }
                if let Some(i) = shared.info.get(&m) {
                    self.put((Kind::Info, m), Arc::clone(&i.1));
                }
            }
        }
        for (k, a) in shared.alerts.iter() {
            self.put((Kind::Alert, k.to_string()), Arc::clone(&a.1));
        }
    }

    /// Queues a live update if the view wants it.
    fn offer(&mut self, u: &Update) -> bool {
        match (u, &self.view) {
            (
                Update::Snapshot {
                    machine,
                    summary_frame,
                    ..
                },
                View::Summary,
            ) => self.put((Kind::Snapshot, machine.clone()), Arc::clone(summary_frame)),
            (
                Update::Snapshot {
                    machine,
                    detail_frame,
                    ..
                },
                View::Machine(m),
            ) if m == machine => {
                self.put((Kind::Snapshot, machine.clone()), Arc::clone(detail_frame))
            }
            (Update::Info { machine, frame }, View::Summary) => {
                self.put((Kind::Info, machine.clone()), Arc::clone(frame))
            }
            (Update::Info { machine, frame }, View::Machine(m)) if m == machine => {
                self.put((Kind::Info, machine.clone()), Arc::clone(frame))
            }
            (Update::Alert { key, frame }, View::Summary | View::Machine(_)) => {
                self.put((Kind::Alert, key.clone()), Arc::clone(frame))
            }
            (Update::Forget { machine, frame }, _) => {
                // What is still queued of the machine goes; the client is
                // told to drop what it shows.
                let prefix = format!("{machine}:");
                self.frames.retain(|(kind, key), _| match kind {
                    Kind::Alert => !key.starts_with(&prefix),
                    Kind::Forget => true,
                    _ => key != machine,
                });
                let frames = &self.frames;
                self.order.retain(|k| frames.contains_key(k));
                self.put((Kind::Forget, machine.clone()), Arc::clone(frame))
            }
            _ => false,
        }
    }
}

/// Largest message (and frame) a client may send: its messages are small
/// JSON commands; axum's default of 64 MiB would let one client make the
/// gateway buffer that much.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 4 * 1024;

/// Why a WebSocket upgrade was refused for capacity (the counter's label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Clients,
    PerAddress,
    Rate,
}

/// Whether `addr` may open a connection now (its connect allowance).
fn connect_allowed(shared: &Shared, addr: IpAddr) -> bool {
    let per_s = shared.config.ws_connects_per_s.max(1);
    let allowance = shared.ws_connects.get_with(addr, || {
        Arc::new(Mutex::new(Allowance::new(per_s.saturating_mul(4), per_s)))
    });
    lock(&allowance).take(Instant::now()).is_ok()
}

/// The WebSocket clients connected (or connecting) now, in total and per
/// address: the map holds only addresses with a client, so it is bounded by
/// `ws_max_clients`.
#[derive(Debug, Default)]
pub struct Slots {
    total: u32,
    per_address: HashMap<IpAddr, u32>,
}

/// One client's place; given back when dropped (the client ended, or the
/// upgrade never completed).
struct Slot {
    shared: Arc<Shared>,
    addr: Option<IpAddr>,
}

impl Slot {
    fn take(shared: &Arc<Shared>, addr: Option<IpAddr>) -> Result<Self, Full> {
        let c = &shared.config;
        let mut slots = lock(&shared.ws_slots);
        if slots.total >= c.ws_max_clients {
            return Err(Full::Clients);
        }
        if let Some(a) = addr {
            let n = slots.per_address.entry(a).or_default();
            if *n >= c.ws_max_clients_per_address {
                if *n == 0 {
                    slots.per_address.remove(&a);
                }
                return Err(Full::PerAddress);
            }
            *n += 1;
        }
        slots.total += 1;
        Ok(Self {
            shared: Arc::clone(shared),
            addr,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = lock(&self.shared.ws_slots);
        slots.total = slots.total.saturating_sub(1);
        if let Some(a) = self.addr
            && let Some(n) = slots.per_address.get_mut(&a)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                slots.per_address.remove(&a);
            }
        }
    }
}

pub async fn upgrade(
    State(s): State<Arc<Shared>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !crate::guard::origin_allowed(&headers, &s.config.allowed_origins) {
        Counters::inc(&s.counters.ws_origin_refused);
        if s.logs.ws_refused.allow("WebSocket refused") {
            tracing::warn!(origin = ?headers.get(header::ORIGIN), "WebSocket refused: Origin not allowed");
        }
        let mut e = ApiError::bad("Origin", "this Origin may not open the live feed");
        e.status = StatusCode::FORBIDDEN;
        return e.into_response();
    }
    let addr = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let taken = match addr {
        Some(a) if !connect_allowed(&s, a) => Err(Full::Rate),
        _ => Slot::take(&s, addr),
    };
    let slot = match taken {
        Ok(slot) => slot,
        Err(full) => {
            let (counter, status, what) = match full {
                Full::Clients => (
                    &s.counters.ws_refused_clients,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the gateway has as many live clients as it serves (ws_max_clients)",
                ),
                Full::PerAddress => (
                    &s.counters.ws_refused_per_address,
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many live clients from this address (ws_max_clients_per_address)",
                ),
                Full::Rate => (
                    &s.counters.ws_refused_rate,
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address in a short time (ws_connects_per_s)",
                ),
            };
            Counters::inc(counter);
            if s.logs.ws_refused.allow("WebSocket refused") {
                tracing::warn!(?addr, ?full, "WebSocket refused: {what}");
            }
            let mut e = ApiError::unavailable(what);
            e.status = status;
            return e.into_response();
        }
    };
    ws.max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| client(s, socket, slot))
}

#[derive(Deserialize)]
struct ClientMsg {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    machine: Option<String>,
}

/// A token bucket of `burst` tokens refilled at `per_s` a second: the
/// allowance of `subscribe` messages of one client, and of connections of
/// one address.
#[derive(Debug)]
pub struct Allowance {
    tokens: f64,
    burst: f64,
    per_s: f64,
    at: Instant,
}

impl Allowance {
    pub(crate) fn new(burst: u32, per_s: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            burst,
            per_s: f64::from(per_s.max(1)),
            at: Instant::now(),
        }
    }

    /// Takes a token now, or says how long until one is there.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_s))
        }
    }
}

/// Reads the client's messages: `subscribe` and `pause` change its view
/// (within its allowance; one beyond it waits, and a later one replaces it), pongs
/// keep it alive. Returns when the client closes or breaks the protocol.
async fn read_client(
    s: Arc<Shared>,
    mut stream: futures::stream::SplitStream<WebSocket>,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    last_pong: Arc<Mutex<Instant>>,
) {
    let mut allowance = Allowance::new(s.config.ws_subscribe_burst, s.config.ws_subscribes_per_s);
    let mut deferred: Option<(View, tokio::time::Instant)> = None;
    let switch = |view: View| {
        let mut p = lock(&pending);
        p.view = view;
        p.frames.clear();
        p.order.clear();
        p.fill(&s);
        drop(p);
        wake.notify_one();
    };
    loop {
        let due = async {
            match &deferred {
                Some((_, at)) => tokio::time::sleep_until(*at).await,
                None => std::future::pending().await,
            }
        };
        let msg = tokio::select! {
            msg = stream.next() => msg,
            () = due => {
                if let Some((view, _)) = deferred.take() {
                    match allowance.take(Instant::now()) {
                        Ok(()) => switch(view),
                        Err(wait) => deferred = Some((view, tokio::time::Instant::now() + wait)),
                    }
                }
                continue;
            }
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // A message over the size limit, or not WebSocket at all.
                Counters::inc(&s.counters.ws_bad_client_messages);
                if s.logs.ws_closed.allow("WebSocket client closed") {
                    tracing::info!(error = %e, "WebSocket client broke the protocol; closed");
                }
                return;
            }
            None => return,
        };
        match msg {
            Message::Text(t) => match serde_json::from_str::<ClientMsg>(&t) {
                Ok(m) if m.kind == "subscribe" || m.kind == "pause" => {
                    let view = match m.machine {
                        _ if m.kind == "pause" => View::Paused,
                        Some(id) => match sysmonstm_schemas::MachineId::parse(&id) {
                            Ok(id) => View::Machine(id.as_str().to_owned()),
                            Err(_) => {
                                Counters::inc(&s.counters.ws_bad_client_messages);
                                continue;
                            }
                        },
                        None => View::Summary,
                    };
                    if deferred.is_some() {
                        // Still over the allowance: the latest view wins.
                        Counters::inc(&s.counters.ws_subscribes_limited);
                        if let Some(d) = deferred.as_mut() {
                            d.0 = view;
                        }
                        continue;
                    }
                    match allowance.take(Instant::now()) {
                        Ok(()) => switch(view),
                        Err(wait) => {
                            Counters::inc(&s.counters.ws_subscribes_limited);
                            deferred = Some((view, tokio::time::Instant::now() + wait));
                        }
                    }
                }
                _ => {
                    Counters::inc(&s.counters.ws_bad_client_messages);
                    tracing::debug!("WebSocket client message not understood");
                }
            },
            Message::Pong(_) => *lock(&last_pong) = Instant::now(),
            Message::Close(_) => return,
            _ => {}
        }
    }
}

async fn client(s: Arc<Shared>, socket: WebSocket, slot: Slot) {
    let _slot = slot;
    Counters::inc(&s.counters.ws_connections);
    s.counters.ws_clients.inc();
    // Subscribe before filling so no update falls between the two.
    let rx = s.updates.subscribe();
    let pending = Arc::new(Mutex::new(Pending {
        view: View::Summary,
        frames: HashMap::new(),
        order: Vec::new(),
    }));
    let wake = Arc::new(Notify::new());
    lock(&pending).fill(&s);
    wake.notify_one();

    let (mut sink, stream) = socket.split();
    let pump = tokio::spawn(pump(
        Arc::clone(&s),
        rx,
        Arc::clone(&pending),
        Arc::clone(&wake),
    ));
    let last_pong = Arc::new(Mutex::new(Instant::now()));
    let mut reader = tokio::spawn(read_client(
        Arc::clone(&s),
        stream,
        Arc::clone(&pending),
        Arc::clone(&wake),
        Arc::clone(&last_pong),
    ));

    // Bounded, so that `ping_every * 3` and the timers cannot overflow.
    let ping_every = Duration::from_secs(s.config.ws_ping_s.clamp(1, 3600));
    let send_timeout = Duration::from_secs(s.config.ws_send_timeout_s.clamp(1, 3600));
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = wake.notified() => {
                // Updates come in bursts (many machines' snapshots within a
                // millisecond); one turn of the scheduler lets the pump queue
                // the rest of a burst, so it goes out as one message instead
                // of several, which costs both ends far less CPU.
                tokio::task::yield_now().await;
                let frames = lock(&pending).drain();
                if frames.is_empty() { continue; }
                let n = frames.len() as u64;
                let text = batch(&frames);
                match tokio::time::timeout(send_timeout, sink.send(Message::Text(text))).await {
                    Ok(Ok(())) => {
                        s.counters.ws_frames.inc_by(n);
                        Counters::inc(&s.counters.ws_messages);
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {
                        Counters::inc(&s.counters.ws_closed_stuck);
                        if s.logs.ws_closed.allow("WebSocket client closed") {
                            tracing::info!("WebSocket client stopped reading; closed");
                        }
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                if lock(&last_pong).elapsed() > ping_every * 3 {
                    Counters::inc(&s.counters.ws_closed_stuck);
                    if s.logs.ws_closed.allow("WebSocket client closed") {
                        tracing::info!("WebSocket client stopped answering pings; closed");
                    }
                    break;
                }
                let sent = tokio::time::timeout(send_timeout, sink.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) { break; }
            }
            _ = &mut reader => break,
        }
    }
    pump.abort();
    reader.abort();
    s.counters.ws_clients.dec();
}

/// Moves live updates into the client's pending map. It never waits on the
/// socket, so it keeps up with the fan-out even while the client is stuck.
async fn pump(
    s: Arc<Shared>,
    mut rx: broadcast::Receiver<Arc<[Update]>>,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
) {
    loop {
        match rx.recv().await {
            Ok(batch) => {
                let mut p = lock(&pending);
                for u in batch.iter() {
                    if p.offer(u) {
                        Counters::inc(&s.counters.ws_coalesced);
                    }
                }
                drop(p);
                wake.notify_one();
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Starved of CPU for a moment: the current state of the view
                // replaces whatever was missed.
                Counters::inc(&s.counters.ws_lagged);
                lock(&pending).fill(&s);
                wake.notify_one();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn batch(frames: &[Arc<str>]) -> Utf8Bytes {
    let len = frames.iter().map(|f| f.len() + 1).sum::<usize>() + 2;
    let mut out = String::with_capacity(len);
    out.push('[');
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(f);
    }
    out.push(']');
    out.into()
}

/// The maps are only touched briefly, never across an await; a poisoned
/// lock (a panic elsewhere) still holds usable data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
