//! Telemetry set up in one place, for every binary:
//!
//! - logs through `tracing`, filtered by `RUST_LOG` (default `info`), written
//!   to stderr so stdout stays free for a command's own output
//!   (`--once --json`): human-readable on a terminal, one JSON object per
//!   line otherwise (a log collector, `journald`, a container);
//!   `SYSMON_LOG_FORMAT=json|human` overrides the guess;
//! - OpenTelemetry traces exported over OTLP/HTTP (protobuf) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g. `http://127.0.0.1:4318`;
//!   spans go to `<endpoint>/v1/traces`, or to
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given), with the service's name
//!   as `service.name`;
//! - the trace context carried in NATS headers (W3C `traceparent`,
//!   [`headers::TRACEPARENT`]), so that one snapshot's path — agent
//!   (`publish`) → persister (`store`), alerter (`evaluate`), gateway
//!   (`fan_out`) — is one trace.
//!
//! Without an endpoint nothing of the tracing path costs anything on the hot
//! path: [`producer_span`] and [`consumer_span`] return [`Span::none`]
//! without building a span, and [`inject`] writes no header.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use sysmonstm_schemas::headers;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Set once traces are exported; read on the hot path (one relaxed load).
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint was configured).
#[inline]
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Keeps the trace exporter alive; dropping it flushes the spans not yet sent
/// (at most a few seconds) and stops the exporter. Hold it for the life of
/// `main`.
#[must_use = "dropping the guard stops the trace exporter"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // On a thread of its own: the exporter's HTTP client blocks, and
            // a tokio worker must not.
            let done = std::thread::Builder::new()
                .name("otel-shutdown".into())
                .spawn(move || p.shutdown());
            match done.map(|h| h.join()) {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("telemetry: flushing traces failed: {e}"),
                _ => eprintln!("telemetry: flushing traces failed"),
            }
            TRACING.store(false, Ordering::Relaxed);
        }
    }
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

impl LogFormat {
    /// `SYSMON_LOG_FORMAT` (`json` or `human`) if set, else human when stderr
    /// is a terminal and JSON otherwise.
    pub fn from_env() -> Self {
        Self::choose(
            std::env::var("SYSMON_LOG_FORMAT").ok().as_deref(),
            std::io::stderr().is_terminal(),
        )
    }

    fn choose(var: Option<&str>, terminal: bool) -> Self {
        match var.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("json") => Self::Json,
            Some(v) if v.eq_ignore_ascii_case("human") || v.eq_ignore_ascii_case("text") => {
                Self::Human
            }
            _ if terminal => Self::Human,
            _ => Self::Json,
        }
    }
}

/// The OTLP endpoint from the environment; an empty value (compose passes
/// `OTEL_EXPORTER_OTLP_ENDPOINT=` when unset) counts as none.
fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

fn tracer_provider(service: &str, endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
    crate::otlp_http::check_endpoint(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(crate::otlp_http::Client::default())
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The log filter: `RUST_LOG` as `level` and `target=level` pairs
/// (`info,sysmonstm_persister=debug`), else `default_filter`. A value that
/// does not parse is returned as a message to log, and the default applies.
///
/// `Targets` rather than `EnvFilter`: the latter's span and field filters
/// need the `regex` crates, ~0.6 MiB of code in every binary (the agent's
/// memory is mostly its code pages), for a syntax nobody here uses.
fn log_filter(var: Option<&str>, default_filter: &str) -> (Targets, Option<String>) {
    let fallback = || {
        default_filter
            .parse::<Targets>()
            .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
    };
    match var.map(str::trim).filter(|v| !v.is_empty()) {
        None => (fallback(), None),
        Some(v) => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (
                fallback(),
                Some(format!(
                    "RUST_LOG={v:.200?} is not understood ({e}): logging at {default_filter}; \
                     give a level and target=level pairs, e.g. info,sysmonstm_persister=debug"
                )),
            ),
        },
    }
}

/// Installs the global subscriber: logs, and traces if an OTLP endpoint is
/// set. Safe to call more than once (tests): later calls change nothing.
pub fn init(service: &str) -> Telemetry {
    init_with(service, "info")
}

/// [`init`] with another level than `info` when `RUST_LOG` is not set (the
/// CLI: `warn`, its own output is what matters).
pub fn init_with(service: &str, default_filter: &str) -> Telemetry {
    let (filter, bad_filter) =
        log_filter(std::env::var("RUST_LOG").ok().as_deref(), default_filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    // RUST_LOG filters the logs only: traces do not depend on the log level.
    let fmt = match LogFormat::from_env() {
        LogFormat::Human => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    };
    let endpoint = otlp_endpoint();
    let mut failed = None;
    let provider = match endpoint {
        Some(ref e) => match tracer_provider(service, e) {
            Ok(p) => Some(p),
            Err(e) => {
                failed = Some(e);
                None
            }
        },
        None => None,
    };
    // The exported spans are sysmonstm's own (publish, store, evaluate,
    // fan_out), whatever RUST_LOG says; no log event becomes a span event.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sysmonstm"))
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target().starts_with("sysmonstm")
            }))
    });
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(e) = bad_filter {
        tracing::warn!("{e}");
    }
    if let Some(e) = failed {
        tracing::error!(error = %e, "cannot export traces over OTLP; running without");
    }
    match (installed, provider) {
        (true, Some(p)) => {
            TRACING.store(true, Ordering::Relaxed);
            tracing::info!(
                service,
                endpoint = endpoint.as_deref().unwrap_or_default(),
                "exporting traces over OTLP/HTTP"
            );
            Telemetry { provider: Some(p) }
        }
        _ => {
            tracing::debug!(service, "telemetry ready");
            Telemetry::default()
        }
    }
}

/// For tests: logs go through the test harness's capture, shown only for a
/// failing test.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A span for sending a message: `make()` when traces are exported, else
/// [`Span::none`] without building anything. Pass it to [`inject`].
#[inline]
pub fn producer_span(make: impl FnOnce() -> Span) -> Span {
    if tracing_enabled() {
        make()
    } else {
        Span::none()
    }
}

/// A span for handling a received message, the child of the span that sent
/// it when its headers carry a trace context; [`Span::none`] without
/// building anything when traces are not exported.
#[inline]
pub fn consumer_span(headers: Option<&async_nats::HeaderMap>, make: impl FnOnce() -> Span) -> Span {
    if !tracing_enabled() {
        return Span::none();
    }
    let span = make();
    if let Some(h) = headers
        && h.get(headers::TRACEPARENT).is_some()
    {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(h));
        let _ = span.set_parent(cx);
    }
    span
}

/// Writes `span`'s trace context as W3C headers ([`headers::TRACEPARENT`],
/// and [`headers::TRACESTATE`] if there is one) through `put`. Writes
/// nothing for a disabled span.
pub fn inject(span: &Span, mut put: impl FnMut(&'static str, String)) {
    if span.is_none() || !tracing_enabled() {
        return;
    }
    let cx = span.context();
    let mut inj = HeaderInjector(&mut put);
    TraceContextPropagator::new().inject_context(&cx, &mut inj);
}

struct HeaderInjector<'a, F: FnMut(&'static str, String)>(&'a mut F);

impl<F: FnMut(&'static str, String)> Injector for HeaderInjector<'_, F> {
    fn set(&mut self, key: &str, value: String) {
        // Only the two W3C names, as the schema spells them.
        let name = if key.eq_ignore_ascii_case(headers::TRACEPARENT) {
            headers::TRACEPARENT
        } else if key.eq_ignore_ascii_case(headers::TRACESTATE) {
            headers::TRACESTATE
        } else {
            return;
        };
        (self.0)(name, value);
    }
}

struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn rust_log_sets_levels_per_target_and_a_bad_one_falls_back_loudly() {
        let (f, bad) = log_filter(Some("warn,sysmonstm_persister=debug"), "info");
        assert!(bad.is_none());
        assert!(f.would_enable("sysmonstm_persister::writer", &Level::DEBUG));
        assert!(!f.would_enable("async_nats", &Level::INFO));
        assert!(f.would_enable("async_nats", &Level::WARN));
        for unset in [None, Some(""), Some("  ")] {
            let (f, bad) = log_filter(unset, "warn");
            assert!(bad.is_none(), "{unset:?}");
            assert!(f.would_enable("sysmonstm_cli", &Level::WARN), "{unset:?}");
            assert!(!f.would_enable("sysmonstm_cli", &Level::INFO), "{unset:?}");
        }
        let (f, bad) = log_filter(Some("sysmonstm=loud"), "info");
        assert!(bad.expect("reported").contains("not understood"));
        assert!(f.would_enable("sysmonstm_agent", &Level::INFO));
        assert!(!f.would_enable("sysmonstm_agent", &Level::DEBUG));
    }

    #[test]
    fn json_off_a_terminal_human_on_one_unless_told() {
        assert_eq!(LogFormat::choose(None, true), LogFormat::Human);
        assert_eq!(LogFormat::choose(None, false), LogFormat::Json);
        assert_eq!(LogFormat::choose(Some("json"), true), LogFormat::Json);
        assert_eq!(LogFormat::choose(Some("HUMAN"), false), LogFormat::Human);
        assert_eq!(LogFormat::choose(Some(""), false), LogFormat::Json);
    }

    #[test]
    fn nothing_is_built_or_written_without_an_exporter() {
        let mut built = false;
        let span = producer_span(|| {
            built = true;
            tracing::info_span!("publish")
        });
        assert!(!built && span.is_none());
        let mut written = Vec::new();
        inject(&span, |k, v| written.push((k, v)));
        assert!(written.is_empty());
        let span = consumer_span(None, || {
            built = true;
            tracing::info_span!("store")
        });
        assert!(!built && span.is_none());
    }
}
