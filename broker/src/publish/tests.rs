use super::*;
use crate::config::Config;
use crate::history::MemoryHistory;

fn pipeline() -> Pipeline {
    let config = Config::default();
    let namespaces = Arc::new(Namespaces::new(
        &config.namespaces,
        &config.default_namespace,
    ));
    let hub = Arc::new(crate::hub::Hub::new(Arc::new(MemoryHistory::new())));
    let log = Arc::new(crate::sequencer::Local::new(hub));
    let limits = Arc::new(RateLimits::new(&config.rate_limits, &config.namespaces));
    let metrics = Arc::new(Metrics::new());
    let plugins = Plugins::disabled(metrics.clone());
    Pipeline::new(
        log,
        namespaces,
        limits,
        metrics,
        plugins,
        &config,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.into()).unwrap()
}

#[test]
fn a_repeated_key_publishes_once_and_answers_the_first_offset() {
    let p = pipeline();
    let data = raw("1");
    let req = |key| PublishRequest {
        source: Source::Api,
        channel: "chat:a",
        data: &data,
        key,
    };
    let publish = |r| match p.publish(r).unwrap() {
        Outcome::Now(accepted) => accepted,
        Outcome::Later(_) => panic!("the memory log answers at once"),
    };
    let first = publish(req(Some("k1")));
    let again = publish(req(Some("k1")));
    assert_eq!(first.offset, again.offset);
    assert!(again.duplicate);
    let other = publish(req(Some("k2")));
    assert_eq!(other.offset, first.offset + 1);
    p.sweep(now_ms() + 120_000);
    assert!(!publish(req(Some("k1"))).duplicate);
}
