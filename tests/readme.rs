//! The README's two opening commands stay true.

fn opening_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md readable");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .expect("README has a sh block");
    let block = block.split("```").next().expect("block ends");
    block.lines().map(str::to_owned).collect()
}

#[test]
fn first_command_runs_the_binary_successfully() {
    let commands = opening_commands();
    assert_eq!(
        commands.len(),
        2,
        "two commands: the main job and the tests"
    );
    let args = commands[0]
        .strip_prefix("cargo run -p ssm-tether -- ")
        .expect("first command runs the ssm-tether binary");
    let mut args: Vec<&str> = args.split_whitespace().collect();
    if args.first() == Some(&"demo") {
        // The same demo, shorter: the README promises 30 s, the test suite has other work.
        args.extend(["--duration", "10s"]);
    }
    let out = ssm_tether_e2e::ssm_tether()
        .args(&args)
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}\n{stdout}");
    if args[0] == "demo" {
        assert!(stdout.contains("result: every byte intact"), "{stdout}");
        assert!(stdout.contains("restarts              1"), "{stdout}");
        // The embedded default plugins decided and probed, and none of them failed.
        assert!(stdout.contains("health checks         "), "{stdout}");
        assert!(stdout.contains("plugin failures       0 "), "{stdout}");
    }
}

#[test]
fn second_command_runs_the_whole_test_suite() {
    assert_eq!(opening_commands()[1], "cargo test --workspace");
}
