//! `ssm-tether soak`: days of the service's failures, compressed into minutes, against the
//! built-in emulator (or `--against` an external one), with checksummed traffic through one
//! tunnel and a report of what survived.
//!
//! Per service "hour" (`--hour` of wall time): a recycle of both WebSockets with skew, stale
//! cells, 1 % frame loss both ways (emulator settings), and from the seeded [`schedule`]:
//! occasional failing ResumeSession calls (throttling, access denied), a black hole now and
//! then, one service-side termination per six hours. Sessions end at 20 hours, and the
//! tunnel rotates them ahead of that. Every counter in the report comes from an event or a
//! measurement ([`tally`], [`traffic`], [`memory`]), never from what was scheduled.

mod ledger;
mod memory;
mod report;
mod schedule;
mod tally;
mod traffic;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Args;
use ssm_emulator::faults::SideSelection;
use ssm_emulator::{Emulator, EmulatorConfig};
use ssm_tether::aws::SsmApi;
use ssm_tether::events::{SessionRole, TunnelState, TunnelStatus};
use ssm_tether::policy::{AwsSettings, LocalAddress, RotationSettings, TunnelSpec};
use ssm_tether::tunnel::{Tunnel, TunnelConfig};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use self::ledger::Ledger;
use self::memory::LeakPolicy;
use self::report::Report;
use self::schedule::{Fault, Planned};
use self::tally::Tally;
use self::traffic::{Counters, Traffic};
use super::EXIT_FAILURE;

/// The session's maximum duration, in service hours (the account preference the soak models).
const MAX_SESSION_HOURS: u32 = 20;
/// How long before that the tunnel starts the successor.
const ROTATE_BEFORE_HOURS: u32 = 2;
/// Records the built-in emulator keeps in its event history.
const EVENT_HISTORY: usize = 4096;
/// Frame loss, each direction.
const FRAME_LOSS: f64 = 0.01;

/// Options of `ssm-tether soak`.
#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// Wall time of one service "hour" (the recycle period), e.g. `1s`, `200ms`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hour: Duration,
    /// Service time to run, e.g. `48h`, `1000h`; wall time is DURATION/1h × --hour.
    #[arg(long, default_value = "48h", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Sessions the tunnel stripes over. Two by default: each termination hits the youngest
    /// session, so the other lives to its maximum duration and is rotated.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
    sessions: u8,
    /// Print the report as JSON on stdout (the status line stays on stderr).
    #[arg(long)]
    json: bool,
    /// Drive an external emulator or service at this SSM endpoint URL (what `ssm-tether
    /// emulator` prints as `endpoint_url`) instead of the built-in emulator; its faults are
    /// its own.
    #[arg(long, value_name = "ENDPOINT")]
    against: Option<String>,
    /// The StartSession target with `--against`.
    #[arg(long, default_value = "i-0123456789abcdef0")]
    target: String,
    /// Long-lived streaming connections.
    #[arg(long, default_value_t = 4)]
    long_connections: u64,
    /// Connections that idle for hours between exchanges.
    #[arg(long, default_value_t = 2)]
    idle_connections: u64,
    /// Seed of the fault schedule, the emulator and the traffic (runs are reproducible per
    /// seed, up to timing).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Runs the soak; exit 0 only if nothing was lost, corrupted or died and memory stayed flat.
pub(crate) fn run(args: SoakArgs) -> anyhow::Result<ExitCode> {
    if args.hour.is_zero() {
        anyhow::bail!("--hour must be greater than 0");
    }
    if args.duration < Duration::from_secs(3600) {
        anyhow::bail!("--duration must be at least 1h (service time)");
    }
    if std::env::var_os("RUST_LOG").is_some() {
        super::init_logging_with("warn");
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(soak(&args))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot write the report")?
        );
    } else {
        print!("{}", report.human());
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

/// Service hours → wall time.
fn hours(args: &SoakArgs, n: f64) -> Duration {
    args.hour.mul_f64(n)
}

async fn soak(args: &SoakArgs) -> anyhow::Result<Report> {
    let started_at = SystemTime::now();
    let total_hours = args.duration.as_secs_f64() / 3600.0;
    let emulator = match &args.against {
        Some(_) => None,
        None => Some(start_emulator(args).await?),
    };
    let endpoint = match (&args.against, &emulator) {
        (Some(url), _) => url.clone(),
        (None, Some(emulator)) => emulator.endpoint_url(),
        (None, None) => anyhow::bail!("no endpoint"),
    };
    let echo = ssm_emulator::destination::echo_server()
        .await
        .context("cannot start the echo server")?;
    // Dummy credentials in files of our own: the soak never touches the user's AWS setup.
    let aws_dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let spec = tunnel_spec(args, &endpoint, echo.port(), aws_dir.path())?;
    let tunnel = Tunnel::start(
        TunnelConfig::from_spec(&spec, args.seed),
        SsmApi::new(spec.aws.clone()),
    )
    .await
    .context("cannot start the tunnel")?;
    let local = tunnel
        .tcp_addr()
        .context("the soak tunnel listens on TCP")?;
    let status = tunnel.status();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let events = tokio::spawn(count_events(
        tunnel.subscribe(),
        tally.clone(),
        ledger.clone(),
    ));
    let first = memory::sample();
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let traffic = tokio::spawn(
        Traffic {
            local,
            hour: args.hour,
            seed: args.seed,
            stop: stop.clone(),
            counters: counters.clone(),
            ledger: ledger.clone(),
        }
        .run(args.long_connections, args.idle_connections),
    );
    if !args.json || std::io::stderr().is_terminal() {
        eprintln!(
            "ssm-tether soak: {total_hours:.0} service hours of {} each, {} session(s), \
             tunnel {local} -> {endpoint} -> echo {echo}",
            humantime::format_duration(args.hour),
            args.sessions
        );
    }

    // The run: faults as scheduled, RSS at the end of every hour, the status line.
    let mut line = StatusLine::new(total_hours);
    let mut rss_hourly = Vec::new();
    let mut hour = 0u64;
    let mut plan: Vec<Planned> = schedule::hour_faults(args.seed, 0, args.hour);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let total = hours(args, total_hours);
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        let hour_start = hours(args, hour as f64);
        if let Some(emulator) = &emulator {
            while plan.first().is_some_and(|p| hour_start + p.at <= elapsed) {
                let planned = plan.remove(0);
                inject(emulator, planned.fault).await;
            }
        }
        if elapsed >= hours(args, (hour + 1) as f64) || elapsed >= total {
            if let Some(sample) = memory::sample() {
                rss_hourly.push(round1(sample.rss_mib));
            }
            hour += 1;
            plan = schedule::hour_faults(args.seed, hour, args.hour);
        }
        if elapsed >= total {
            break;
        }
        line.show(
            elapsed.as_secs_f64() / args.hour.as_secs_f64(),
            &status.borrow(),
            &lock(&tally),
            &counters,
            rss_hourly.last().copied(),
        );
    }
    line.finish();
    let run_time = started.elapsed();

    // Drain: writers stop, every sent byte must come back.
    stop.cancel();
    traffic.await.context("the traffic task failed")?;
    // The tunnel's close events for the last connections.
    let waited = Instant::now();
    while lock(&ledger).awaiting_tunnel() > 0 && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unrecovered = unrecovered_sessions(&status, hours(args, 5.0)).await;
    let died = tunnel.is_finished();
    let final_status = status.borrow().clone();
    let last = memory::sample();
    tunnel.shutdown().await.ok();
    events.abort();
    let faults_injected = match emulator {
        Some(emulator) => {
            let counters: BTreeMap<String, u64> = emulator
                .events()
                .counters()
                .into_iter()
                .filter(|(name, _)| name.starts_with("fault.") || name.contains("drop"))
                .collect();
            emulator.shutdown().await;
            Some(counters)
        }
        None => None,
    };

    let mut ledger = lock(&ledger);
    ledger.finish();
    let tally = lock(&tally);
    let mut report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        hour_ms: u64::try_from(args.hour.as_millis()).unwrap_or(u64::MAX),
        hours: (run_time.as_secs_f64() / args.hour.as_secs_f64() * 10.0).round() / 10.0,
        wall_seconds: round1(started.elapsed().as_secs_f64()),
        sessions: args.sessions,
        against: args.against.clone(),
        seed: args.seed,
        recycles: tally.recycles,
        resumes: final_status.resumes,
        restarts: final_status.restarts,
        rotations: final_status.rotations,
        tunnel_deaths: tally.deaths.max(u64::from(died)),
        unrecovered_outages: unrecovered,
        bytes_verified: counters.verified.load(Ordering::SeqCst),
        bytes_corrupted: counters.corrupted.load(Ordering::SeqCst),
        connections_opened: counters.opened.load(Ordering::SeqCst),
        short_connections_completed: counters.short_completed.load(Ordering::SeqCst),
        short_connections_skipped: counters.short_skipped.load(Ordering::SeqCst),
        connections_lost_unexpected: ledger.lost_unexpected,
        connections_closed_expected: ledger.expected.values().sum(),
        connections_closed_expected_by_reason: ledger.expected.clone(),
        bytes_in_flight_at_expected_close: ledger.in_flight_at_expected_close,
        outages: tally.outages_ms.len() as u64,
        outage_p50_ms: tally::percentile(&tally.outages_ms, 50),
        outage_p99_ms: tally::percentile(&tally.outages_ms, 99),
        outage_max_ms: tally.outages_ms.iter().copied().max(),
        rss_start_mib: first.map(|s| round1(s.rss_mib)),
        rss_end_mib: rss_hourly.last().copied(),
        rss_max_mib: rss_hourly.iter().copied().reduce(f64::max),
        leak: LeakPolicy::default().judge(&rss_hourly),
        rss_hourly_mib: rss_hourly,
        cpu_seconds: first
            .zip(last)
            .map(|(a, b)| round1(b.cpu_seconds - a.cpu_seconds)),
        faults_injected,
        events_missed: tally.missed,
        lost_details: ledger.details.clone(),
        failures: Vec::new(),
        passed: false,
    };
    report.judge();
    Ok(report)
}

/// The built-in emulator with the soak's steady faults.
async fn start_emulator(args: &SoakArgs) -> anyhow::Result<Emulator> {
    let mut config = EmulatorConfig {
        seed: args.seed,
        // The soak reads only counters; a full history (a million frame records) would be
        // most of the process's memory growth.
        events: ssm_emulator::events::EventLog::with_history_cap(None, EVENT_HISTORY),
        ..EmulatorConfig::default()
    };
    let faults = &mut config.faults;
    faults.recycle_every = Some(args.hour);
    faults.recycle_skew = args.hour / 5;
    faults.recycle_side = SideSelection::Both;
    faults.stale_cell = true;
    faults.to_agent.drop_rate = FRAME_LOSS;
    faults.to_client.drop_rate = FRAME_LOSS;
    faults.max_session_duration = Some(hours(args, f64::from(MAX_SESSION_HOURS)));
    Emulator::start(config)
        .await
        .context("cannot start the emulator")
}

/// The soak's tunnel: `--sessions` stripes, rotation ahead of the 20-hour maximum, ping and
/// pong timeouts scaled to the compressed hour (so that a black hole costs about an hour,
/// as a real one costs a minute against real hours), and no give-up.
fn tunnel_spec(
    args: &SoakArgs,
    endpoint: &str,
    echo_port: u16,
    aws_dir: &std::path::Path,
) -> anyhow::Result<TunnelSpec> {
    let (config_file, credentials_file) = (aws_dir.join("config"), aws_dir.join("credentials"));
    std::fs::write(
        &config_file,
        "[profile ssm-tether-soak]\nregion = us-east-1\n",
    )
    .context("cannot write the soak's AWS config")?;
    std::fs::write(
        &credentials_file,
        "[ssm-tether-soak]\naws_access_key_id = AKIDSOAK\naws_secret_access_key = soak\n",
    )
    .context("cannot write the soak's AWS credentials")?;
    let mut spec = TunnelSpec::new("soak", args.target.clone(), echo_port);
    spec.local = LocalAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    spec.aws = AwsSettings {
        region: Some("us-east-1".into()),
        profile: Some("ssm-tether-soak".into()),
        endpoint_url: Some(endpoint.to_owned()),
        config_file: Some(config_file),
        credentials_file: Some(credentials_file),
        ..AwsSettings::default()
    };
    spec.sessions = args.sessions;
    spec.rotation = Some(RotationSettings {
        max_session_duration: hours(args, f64::from(MAX_SESSION_HOURS)),
        rotate_before: hours(args, f64::from(ROTATE_BEFORE_HOURS)),
    });
    spec.transport.ping_interval =
        (args.hour / 4).clamp(Duration::from_millis(250), Duration::from_secs(20));
    spec.transport.pong_timeout = args
        .hour
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    spec.recovery.base_delay = Duration::from_millis(100);
    spec.recovery.give_up_after = None;
    Ok(spec)
}

/// Fires one scheduled fault at the built-in emulator. A fault that finds no session (all
/// are between sessions) is skipped: the emulator's log counts what actually happened.
async fn inject(emulator: &Emulator, fault: Fault) {
    let control = emulator.faults();
    match fault {
        Fault::ResumeFails(code) => control.fail_resume(1, None, code),
        Fault::BlackHole => {
            let _ = control.black_hole(None, SideSelection::Client, true);
        }
        Fault::Terminate => {
            let youngest = control
                .sessions()
                .into_iter()
                .filter(|s| s.termination_reason.is_none())
                .min_by_key(|s| s.age_ms);
            if let Some(session) = youngest {
                let _ = control.terminate(Some(&session.session_id)).await;
            }
        }
    }
}

/// Feeds the tunnel's events to the tally (and, through it, the ledger).
async fn count_events(
    mut events: tokio::sync::broadcast::Receiver<ssm_tether::events::TunnelEvent>,
    tally: Arc<Mutex<Tally>>,
    ledger: Arc<Mutex<Ledger>>,
) {
    loop {
        match events.recv().await {
            Ok(event) => lock(&tally).observe(&event, &mut lock(&ledger)),
            Err(RecvError::Lagged(missed)) => lock(&tally).missed += missed,
            Err(RecvError::Closed) => return,
        }
    }
}

/// Primary sessions not forwarding once `grace` has passed without all of them forwarding
/// at the same time (the run may end in the middle of a recycle).
async fn unrecovered_sessions(
    status: &tokio::sync::watch::Receiver<TunnelStatus>,
    grace: Duration,
) -> u64 {
    let down = |s: &TunnelStatus| {
        s.sessions
            .iter()
            .filter(|s| s.role != SessionRole::Draining && s.state != TunnelState::Forwarding)
            .count() as u64
    };
    let mut watch = status.clone();
    let recovered = tokio::time::timeout(grace.max(Duration::from_secs(10)), async {
        loop {
            if down(&watch.borrow_and_update()) == 0 {
                return;
            }
            if watch.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    match recovered {
        Ok(()) => down(&status.borrow()),
        Err(_) => down(&status.borrow()).max(1),
    }
}

/// The live status line on stderr: redrawn in place with a progress bar at a terminal,
/// otherwise one line per twentieth of the run (logs and CI).
struct StatusLine {
    total_hours: f64,
    terminal: bool,
    next_print: f64,
}

impl StatusLine {
    fn new(total_hours: f64) -> Self {
        Self {
            total_hours,
            terminal: std::io::stderr().is_terminal(),
            next_print: 0.0,
        }
    }

    fn show(
        &mut self,
        hours: f64,
        status: &TunnelStatus,
        tally: &Tally,
        counters: &Counters,
        rss: Option<f64>,
    ) {
        let text = format!(
            "{:>7.1}/{:.0} h  {:<11} recycles {} resumes {} restarts {} rotations {}  \
             verified {:.1} MB  rss {}",
            hours,
            self.total_hours,
            status.state.name(),
            tally.recycles,
            status.resumes,
            status.restarts,
            status.rotations,
            counters.verified.load(Ordering::Relaxed) as f64 / 1e6,
            rss.map_or("n/a".to_owned(), |r| format!("{r:.1} MiB")),
        );
        if self.terminal {
            let done = (hours / self.total_hours).clamp(0.0, 1.0);
            let filled = (done * 20.0).round() as usize;
            eprint!(
                "\r[{}{}] {text}\x1b[K",
                "#".repeat(filled),
                ".".repeat(20 - filled)
            );
            let _ = std::io::stderr().flush();
        } else if hours >= self.next_print {
            eprintln!("{text}");
            self.next_print = hours + (self.total_hours / 20.0).max(1.0);
        }
    }

    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
