//! Plugin host benchmarks; prints numbers, asserts nothing.
//!
//! Run with `cargo bench --profile release -p ssm-tether --bench plugins`. Targets (issue #5):
//! * warm decision call (`decide` on a started reconnect policy): p99 ≤ 100 µs;
//! * loading a cached plugin (read, hash, deserialize the cached `.cwasm`, link): ≤ 5 ms;
//! * a probe's overhead beyond its own network round trip: ≤ 1 ms (`tcp-connect` against a
//!   loopback listener, minus a plain connect to the same listener).

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ssm_tether::plugin::{PluginEngine, PluginInstance, TcpTarget, TunnelInfo, TunnelLink};
use ssm_tether::policy::{LocalAddress, PluginSource, PluginSpec, Role};
use ssm_tether::recovery::{Cause, DecisionContext};
use tokio::net::{TcpListener, TcpStream};

fn info() -> TunnelInfo {
    TunnelInfo {
        name: "bench".into(),
        target: "i-0123456789abcdef0".into(),
        remote_host: None,
        remote_port: 1,
        local_address: "127.0.0.1:0".into(),
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

fn show(what: &str, samples: Vec<Duration>, target: &str) {
    let n = samples.len();
    let (p50, p99, max) = percentiles(samples);
    println!(
        "{what:<44} n={n:<6} p50 {p50:>10.1?}  p99 {p99:>10.1?}  max {max:>10.1?}  (target {target})"
    );
}

async fn warm_decisions(engine: &PluginEngine) {
    let source = PluginSource::Builtin("exponential-backoff".into());
    let spec = PluginSpec::new(source, Role::ReconnectPolicy);
    let policy = PluginInstance::start(
        engine,
        &spec,
        Role::ReconnectPolicy,
        info(),
        TunnelLink::new(),
    )
    .await
    .unwrap();
    let context = DecisionContext {
        session: ssm_tether::events::SessionRef::default(),
        cause: Cause::PingTimeout,
        attempt: 3,
        failed_resumes: 2,
        outage: Duration::from_secs(2),
        session_age: Duration::from_secs(3600),
        last_delay: Some(Duration::from_millis(400)),
        history: Vec::new(),
    };
    for _ in 0..1_000 {
        policy.decide(&context).await.unwrap();
    }
    let mut out = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        policy.decide(&context).await.unwrap();
        out.push(t.elapsed());
    }
    show("warm decide (exponential-backoff)", out, "p99 <= 100us");
}

async fn cached_loads(engine: &PluginEngine, dir: &std::path::Path) {
    // A plugin file on disk, as users have them; the first load compiles and fills the cache.
    let path = dir.join("policy.wasm");
    std::fs::write(
        &path,
        ssm_tether::builtin::get("exponential-backoff").unwrap(),
    )
    .unwrap();
    let source = PluginSource::File(path);
    let t = Instant::now();
    engine.load(&source).await.unwrap();
    println!(
        "{:<44} {:>10.1?}",
        "first load (compile + write cache)",
        t.elapsed()
    );
    let mut loads = Vec::new();
    let mut starts = Vec::new();
    let spec = PluginSpec::new(source.clone(), Role::ReconnectPolicy);
    for _ in 0..200 {
        let t = Instant::now();
        engine.load(&source).await.unwrap();
        loads.push(t.elapsed());
        let t = Instant::now();
        PluginInstance::start(
            engine,
            &spec,
            Role::ReconnectPolicy,
            info(),
            TunnelLink::new(),
        )
        .await
        .unwrap();
        starts.push(t.elapsed());
    }
    show("load cached plugin", loads, "<= 5ms");
    show("load cached + instantiate + describe + init", starts, "-");
}

async fn probe_overhead(engine: &PluginEngine) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            drop(socket);
        }
    });
    let mut spec = PluginSpec::new(
        PluginSource::Builtin("tcp-connect".into()),
        Role::HealthCheck,
    );
    spec.grants.tunnel_tcp = true;
    // The host lets a plugin open 8 connections at once, then 4 a second
    // (runtime/src/plugin/rate.rs); past that a probe is refused without connecting, in a
    // few microseconds. The bucket belongs to the instance, so a fresh instance every 8
    // probes (started outside the timed part) keeps every timed probe a real connect.
    const PER_INSTANCE: usize = 8;
    let start_probe = || {
        let link = TunnelLink::to(TcpTarget {
            address: LocalAddress::Tcp(address),
            status: None,
        });
        PluginInstance::start(engine, &spec, Role::HealthCheck, info(), link)
    };
    for _ in 0..200 / PER_INSTANCE {
        let probe = start_probe().await.unwrap();
        for _ in 0..PER_INSTANCE {
            probe.check(0).await.unwrap();
            drop(TcpStream::connect(address).await.unwrap());
        }
    }
    let (mut raw, mut probes) = (Vec::new(), Vec::new());
    let mut verdicts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..2_000 / PER_INSTANCE {
        let probe = start_probe().await.unwrap();
        for _ in 0..PER_INSTANCE {
            let t = Instant::now();
            drop(TcpStream::connect(address).await.unwrap());
            raw.push(t.elapsed());
            let t = Instant::now();
            let verdict = probe.check(0).await.unwrap();
            probes.push(t.elapsed());
            // Every verdict is counted: a refusal timed as a probe would pass for a fast one.
            *verdicts.entry(format!("{verdict:?}")).or_default() += 1;
        }
    }
    println!("{:<44} {verdicts:?}", "tcp-connect probe verdicts");
    let (raw50, _, _) = percentiles(raw.clone());
    let (probe50, probe99, _) = percentiles(probes.clone());
    show("plain loopback connect", raw, "-");
    show("tcp-connect probe (connect + verdict)", probes, "-");
    println!(
        "{:<44} p50 {:>10.1?}  p99 {:>10.1?}  (target <= 1ms)",
        "probe overhead beyond its round trip",
        probe50.saturating_sub(raw50),
        probe99.saturating_sub(raw50)
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = PluginEngine::new(Some(dir.path().join("cache"))).unwrap();
        cached_loads(&engine, dir.path()).await;
        warm_decisions(&engine).await;
        probe_overhead(&engine).await;
    });
}
