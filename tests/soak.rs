//! `ssm-tether soak` as CI runs it: a compressed soak against the built-in emulator, and the
//! same traffic `--against` a separately started `ssm-tether emulator`, each ending with a
//! JSON report whose every field is present, whose counters moved, and which lost nothing.

mod child;

use std::process::Output;

use ssm_tether_e2e::ssm_tether;

/// Every field the report promises (issue 14), plus the ones a reader of BENCHMARKS.md needs.
const FIELDS: &[&str] = &[
    "command",
    "started_at",
    "hour_ms",
    "hours",
    "wall_seconds",
    "sessions",
    "against",
    "recycles",
    "resumes",
    "restarts",
    "rotations",
    "tunnel_deaths",
    "unrecovered_outages",
    "bytes_verified",
    "bytes_corrupted",
    "connections_lost_unexpected",
    "connections_closed_expected",
    "connections_closed_expected_by_reason",
    "outage_p50_ms",
    "outage_p99_ms",
    "outage_max_ms",
    "rss_start_mib",
    "rss_end_mib",
    "rss_hourly_mib",
    "leak",
    "cpu_seconds",
    "faults_injected",
    "failures",
    "passed",
];

fn report(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("JSON report ({e}):\n{stdout}\nstderr:\n{stderr}"));
    for field in FIELDS {
        assert!(report.get(field).is_some(), "no {field} in {report:#}");
    }
    assert!(
        output.status.success(),
        "soak failed ({:?}): {report:#}\nstderr:\n{stderr}",
        output.status
    );
    assert_eq!(report["passed"], true, "{report:#}");
    for zero in [
        "tunnel_deaths",
        "unrecovered_outages",
        "bytes_corrupted",
        "connections_lost_unexpected",
    ] {
        assert_eq!(report[zero], 0, "{zero}: {report:#}");
    }
    for moved in ["recycles", "resumes", "bytes_verified"] {
        assert!(
            report[moved].as_u64().is_some_and(|n| n > 0),
            "{moved}: {report:#}"
        );
    }
    report
}

#[test]
fn a_compressed_soak_survives_every_fault_and_reports_it() {
    // 30 service hours of 300 ms: five terminations, a rotation at 18 hours, ~10 s of wall time.
    let output = ssm_tether()
        .args(["soak", "--hour", "300ms", "--duration", "30h", "--json"])
        .output()
        .expect("soak runs");
    let report = report(&output);
    assert!(
        report["hours"].as_f64().is_some_and(|h| h >= 29.0),
        "{report:#}"
    );
    assert!(
        report["restarts"].as_u64().is_some_and(|n| n > 0),
        "{report:#}"
    );
    assert!(
        report["faults_injected"]["fault.terminate"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{report:#}"
    );
    if cfg!(target_os = "linux") {
        assert!(report["rss_start_mib"].as_f64().is_some_and(|m| m > 0.0));
        assert!(report["cpu_seconds"].as_f64().is_some());
        assert_eq!(report["leak"]["leaking"], false, "{report:#}");
    }
}

#[test]
fn a_soak_against_an_external_emulator_uses_its_faults() {
    let emulator = child::emulator(&[
        "--recycle-every",
        "300ms",
        "--recycle-skew",
        "60ms",
        "--stale-cell",
    ]);
    let output = ssm_tether()
        .args(["soak", "--hour", "300ms", "--duration", "10h", "--json"])
        .args(["--against", &emulator.endpoint])
        .output()
        .expect("soak runs");
    let report = report(&output);
    assert_eq!(report["against"], emulator.endpoint.as_str());
    assert!(report["faults_injected"].is_null(), "{report:#}");
}
