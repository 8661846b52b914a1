//! Bytes through a tunnel, end to end: ssm-tether ⇄ emulator (service + agent) ⇄ TCP echo.

mod support;

use std::time::Duration;

use support::{Rig, echo_through};

const TEN_MB: u64 = 10 * 1024 * 1024;

async fn ten_megabytes_over_eight_connections(rig: &Rig) {
    let per_connection = TEN_MB / 8;
    let transfers: Vec<_> = (0..8)
        .map(|seed| tokio::spawn(echo_through(rig.local(), seed, per_connection)))
        .collect();
    for transfer in transfers {
        let (sent, received) = transfer.await.expect("transfer task");
        assert_eq!(sent, received, "echoed bytes differ from the bytes sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_mode_carries_ten_megabytes_each_way_over_eight_connections() {
    let rig = Rig::start(|_| {}).await;
    tokio::time::timeout(
        Duration::from_secs(120),
        ten_megabytes_over_eight_connections(&rig),
    )
    .await
    .expect("transfer finished in time");
    let status = rig.tunnel.status().borrow().clone();
    assert_eq!(status.restarts, 0);
    assert!(
        status.bytes_up >= TEN_MB && status.bytes_down >= TEN_MB,
        "{status:?}"
    );
    rig.tunnel.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_mode_carries_ten_megabytes_each_way_one_connection_at_a_time() {
    // Agents up to 3.0.196.0 only speak basic mode: one connection at a time, raw bytes.
    let rig = Rig::start(|config| config.agent.version = "3.0.0.0".into()).await;
    let per_connection = TEN_MB / 8;
    tokio::time::timeout(Duration::from_secs(120), async {
        for seed in 0..8 {
            let (sent, received) = echo_through(rig.local(), seed, per_connection).await;
            assert_eq!(sent, received, "connection {seed}");
        }
    })
    .await
    .expect("transfer finished in time");
    rig.tunnel.shutdown().await.expect("clean shutdown");
}
