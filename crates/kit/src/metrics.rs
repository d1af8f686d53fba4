//! Prometheus metrics, named one way in every service.
//!
//! Every metric is `sysmonstm_<service>_<what>[_<unit>]`, counters end in
//! `_total`, labels come from small fixed sets (a reject `reason`, a
//! `stream`), never from input. The exposition is Prometheus text 0.0.4,
//! written by the `prometheus` crate, which `promtool check metrics` (run in
//! `just test`) accepts; the process's own CPU, memory and file descriptors
//! are included (`…_process_*`).

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
pub use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};

/// A counter or a gauge, read as a whole number (tests and log lines).
pub trait Value {
    fn value(&self) -> u64;
}

impl Value for IntCounter {
    fn value(&self) -> u64 {
        self.get()
    }
}

impl Value for IntGauge {
    fn value(&self) -> u64 {
        u64::try_from(self.get()).unwrap_or(0)
    }
}

/// One service's metrics.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: prometheus::Registry,
}

impl Registry {
    /// A registry whose metrics are all named `sysmonstm_<service>_…`, with
    /// the process collector (CPU seconds, resident memory, open fds).
    pub fn new(service: &str) -> Self {
        let inner = prometheus::Registry::new_custom(Some(format!("sysmonstm_{service}")), None)
            .expect("a valid metric prefix");
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            // Registered once per registry; a second registry in the same
            // process (tests) gets its own.
            let _ = inner.register(Box::new(pc));
        }
        Self { inner }
    }

    /// A counter; `name` must end in `_total`.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        assert_total(name);
        let c = IntCounter::new(name, help).expect("a valid metric name");
        self.register(c.clone());
        c
    }

    /// A counter by label; `values` lists every label value in advance, so
    /// each series is exported (as 0) before its first event.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
    ) -> IntCounterVec {
        assert_total(name);
        let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid metric name");
        for v in values {
            let _ = c.with_label_values(&[*v]);
        }
        self.register(c.clone());
        c
    }

    /// A whole-number gauge.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect("a valid metric name");
        self.register(g.clone());
        g
    }

    /// A gauge by label, values listed in advance as for [`Self::counter_vec`].
    pub fn gauge_vec(&self, name: &str, help: &str, label: &str, values: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid metric name");
        for v in values {
            let _ = g.with_label_values(&[*v]);
        }
        self.register(g.clone());
        g
    }

    /// A fractional gauge by label, values listed in advance.
    pub fn gauge_vec_f(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
    ) -> prometheus::GaugeVec {
        let g = prometheus::GaugeVec::new(Opts::new(name, help), &[label])
            .expect("a valid metric name");
        for v in values {
            let _ = g.with_label_values(&[*v]);
        }
        self.register(g.clone());
        g
    }

    /// A fractional gauge (ratios, seconds).
    pub fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        let g = Gauge::new(name, help).expect("a valid metric name");
        self.register(g.clone());
        g
    }

    /// A histogram of seconds (`name` ends in `_seconds`).
    pub fn seconds(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        assert!(
            name.ends_with("_seconds"),
            "{name}: durations are in seconds"
        );
        let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("a valid histogram");
        self.register(h.clone());
        h
    }

    fn register<C: prometheus::core::Collector + 'static>(&self, c: C) {
        self.inner
            .register(Box::new(c))
            .expect("each metric is registered once");
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&self.inner.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        out
    }

    /// `GET /metrics` serving this registry.
    pub fn router(self: &Arc<Self>) -> Router {
        let me = Arc::clone(self);
        Router::new().route(
            "/metrics",
            get(move || {
                let me = Arc::clone(&me);
                async move {
                    (
                        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        me.render(),
                    )
                        .into_response()
                }
            }),
        )
    }
}

fn assert_total(name: &str) {
    assert!(name.ends_with("_total"), "{name}: counters end in _total");
}

/// Latency buckets from 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_labelled_series_exist_before_their_first_event() {
        let r = Registry::new("test");
        let c = r.counter_vec(
            "rejected_total",
            "Messages refused, by reason.",
            "reason",
            &["decode", "future"],
        );
        c.with_label_values(&["future"]).inc();
        let g = r.gauge("machines", "Machines known.");
        g.set(3);
        let text = r.render();
        assert!(
            text.contains("# TYPE sysmonstm_test_rejected_total counter"),
            "{text}"
        );
        assert!(
            text.contains("sysmonstm_test_rejected_total{reason=\"decode\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sysmonstm_test_rejected_total{reason=\"future\"} 1"),
            "{text}"
        );
        assert!(text.contains("sysmonstm_test_machines 3"), "{text}");
        #[cfg(target_os = "linux")]
        assert!(
            text.contains("sysmonstm_test_process_resident_memory_bytes"),
            "{text}"
        );
    }

    #[test]
    #[should_panic(expected = "counters end in _total")]
    fn a_counter_without_total_is_a_programming_error() {
        Registry::new("test").counter("received", "x");
    }
}
