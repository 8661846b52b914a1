//! `ssm-tether frame decode|encode` as a user runs it.

use std::io::Write;
use std::process::{Output, Stdio};

/// docs/protocol.md §2.3.
const WORKED_EXAMPLE: &str = "00000074696e7075745f73747265616d5f646174612020202020202020202020\
20202020000000010000015e0baa788400000000000000020000000000000000a508b5f073f31b16dd01e56bff48483e\
239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5000000010000000770617\
96c6f6164";

const WORKED_EXAMPLE_JSON: &str = r#"{"header_length":116,"message_type":"input_stream_data","schema_version":1,"created_date":1503434274948,"sequence_number":2,"flags":0,"message_id":"dd01e56b-ff48-483e-a508-b5f073f31b16","payload_digest":"239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5","digest_valid":true,"payload_type":1,"payload_length":7,"payload":"7061796c6f6164"}"#;

fn ssm_tether(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = ssm_tether_e2e::ssm_tether()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("binary exits")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf8 stdout")
}

#[test]
fn decode_prints_the_documented_keys_in_order() {
    let out = ssm_tether(&["frame", "decode", WORKED_EXAMPLE], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim_end(), WORKED_EXAMPLE_JSON);
}

#[test]
fn encode_reproduces_the_worked_example() {
    let out = ssm_tether(&["frame", "encode", WORKED_EXAMPLE_JSON], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim_end(), WORKED_EXAMPLE);
}

#[test]
fn decode_stdin_reports_bad_lines_and_exits_nonzero() {
    let mut bad_digest = WORKED_EXAMPLE.to_owned();
    bad_digest.replace_range(bad_digest.len() - 2.., "65");
    let input = format!("{WORKED_EXAMPLE}\n\nnot-hex\n0000\n{bad_digest}\n");
    let out = ssm_tether(&["frame", "decode", "-"], Some(&input));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect();
    assert_eq!(
        lines.len(),
        4,
        "blank lines are skipped, every other line answered"
    );
    assert_eq!(lines[0]["sequence_number"], 2);
    let error = lines[1]["error"].as_str().expect("error text");
    assert!(error.contains("line 3") && error.contains("hex"), "{error}");
    let error = lines[2]["error"].as_str().expect("error text");
    assert!(
        error.contains("line 4") && error.contains("truncated"),
        "{error}"
    );
    // A digest mismatch is reported, not an error: the frame is still readable.
    assert_eq!(lines[3]["digest_valid"], false);
    assert_eq!(lines[3]["payload"], "7061796c6f6165");
}

#[test]
fn encode_fills_defaults_and_rejects_inconsistent_input() {
    let out = ssm_tether(
        &[
            "frame",
            "encode",
            r#"{"message_type":"acknowledge","flags":3,"payload":"7b7d"}"#,
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let decoded = ssm_tether(&["frame", "decode", stdout(&out).trim()], None);
    let json: serde_json::Value = serde_json::from_str(&stdout(&decoded)).expect("json");
    assert_eq!(json["message_type"], "acknowledge");
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["flags"], 3);
    assert_eq!(json["payload_length"], 2);
    assert!(json["created_date"].as_u64().expect("date") > 1_700_000_000_000);

    for (input, expected) in [
        (
            r#"{"message_type":"acknowledge","header_length":117}"#,
            "header_length must be 116",
        ),
        (
            r#"{"message_type":"acknowledge","payload":"00","payload_length":2}"#,
            "payload_length is 2",
        ),
        (
            r#"{"message_type":"acknowledge","colour":1}"#,
            "unknown field `colour`",
        ),
        (r#"{"message_type":""}"#, "message type is empty"),
        (
            r#"{"message_type":"acknowledge","created_date":0}"#,
            "created_date must be non-zero",
        ),
        (
            r#"{"message_type":"acknowledge","message_id":"nope"}"#,
            "message_id \"nope\"",
        ),
        (
            r#"{"message_type":"acknowledge","payload":"zz"}"#,
            "payload is not valid hex",
        ),
    ] {
        let out = ssm_tether(&["frame", "encode", input], None);
        assert_eq!(out.status.code(), Some(1), "{input}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{input}: {stderr}");
    }
}

/// `ssm-tether ARGS | head -1`: the reader goes away after one line.
fn into_head(args: &[&str], stdin: Option<String>) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, BufReader};
    let mut child = ssm_tether_e2e::ssm_tether()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let mut pipe = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        if let Some(input) = stdin {
            // The binary may be gone before it read everything.
            let _ = pipe.write_all(input.as_bytes());
        }
    });
    let mut first = String::new();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdout.read_line(&mut first).expect("a first line");
    drop(stdout);
    let output = child.wait_with_output().expect("binary exits");
    feeder.join().expect("feeder");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_printing_commands_quietly_like_unix_tools() {
    use std::os::unix::process::ExitStatusExt;
    let many_frames = format!("{WORKED_EXAMPLE}\n").repeat(20_000);
    let cases: [(&[&str], Option<String>); 2] = [
        (&["frame", "decode", "-"], Some(many_frames)),
        (&["plugin", "inspect", "builtin:http"], None),
    ];
    for (args, stdin) in cases {
        let (status, stderr) = into_head(args, stdin);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            // 13: SIGPIPE, on every Unix.
            status.success() || status.signal() == Some(13),
            "{args:?}: {status:?} {stderr}"
        );
    }
}
