//! Fake managed nodes over the wire: DescribeInstanceInformation with filters and pages,
//! GetDocument, StartSession accepting only online nodes, and the admin routes that replace a
//! node, change its ping status and inject API errors.

mod support;

use serde_json::{Value, json};
use ssm_emulator::faults::FaultSettings;
use ssm_emulator::instances::InstanceSettings;
use support::{config_without_agent, http, ssm_call, start};

fn ids(answer: &Value) -> Vec<String> {
    answer["InstanceInformationList"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|node| node["InstanceId"].as_str().expect("an id").to_owned())
        .collect()
}

fn bastions() -> Value {
    json!({"Filters": [
        {"Key": "tag:Name", "Values": ["bastion"]},
        {"Key": "PingStatus", "Values": ["Online"]}
    ]})
}

#[tokio::test]
async fn nodes_are_described_filtered_paged_and_replaced() {
    let mut config = config_without_agent(FaultSettings::default());
    config.instances = (0..7)
        .map(|i| InstanceSettings::online(format!("i-0{i}"), &[("Name", "bastion")]))
        .chain([InstanceSettings::online("i-web", &[("Name", "web")])])
        .collect();
    let emulator = start(config).await;
    let endpoint = emulator.endpoint_url();
    let admin = emulator.admin_url();

    let all = ssm_call(&endpoint, "DescribeInstanceInformation", "AKID", bastions()).await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(ids(&all.json()).len(), 7);
    let node = &all.json()["InstanceInformationList"][0];
    assert_eq!(node["PingStatus"], "Online");
    assert_eq!(node["ResourceType"], "EC2Instance");

    // Pages of 5: the token leads to the rest.
    let mut paged = bastions();
    paged["MaxResults"] = json!(5);
    let first = ssm_call(
        &endpoint,
        "DescribeInstanceInformation",
        "AKID",
        paged.clone(),
    )
    .await;
    assert_eq!(ids(&first.json()), ["i-00", "i-01", "i-02", "i-03", "i-04"]);
    paged["NextToken"] = first.json()["NextToken"].clone();
    let second = ssm_call(&endpoint, "DescribeInstanceInformation", "AKID", paged).await;
    assert_eq!(ids(&second.json()), ["i-05", "i-06"]);
    assert!(second.json().get("NextToken").is_none());

    let bad = ssm_call(
        &endpoint,
        "DescribeInstanceInformation",
        "AKID",
        json!({"Filters": [{"Key": "Platform", "Values": ["Linux"]}]}),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["__type"], "InvalidFilterKey");

    // Replacement: the new node has the tags, the old one is offline and refused.
    let replaced = http(
        "POST",
        &format!("{admin}/faults/replace-instance?id=i-00"),
        &[],
        "",
    )
    .await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    let new_id = replaced.json()["new"].as_str().expect("new id").to_owned();
    assert!(new_id.starts_with("i-") && new_id.len() == 19, "{new_id}");
    let online = ids(
        &ssm_call(&endpoint, "DescribeInstanceInformation", "AKID", bastions())
            .await
            .json(),
    );
    assert!(
        online.contains(&new_id) && !online.contains(&"i-00".to_owned()),
        "{online:?}"
    );
    let listed = http("GET", &format!("{admin}/instances"), &[], "").await;
    let old = listed
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .find(|n| n["id"] == "i-00")
        .cloned()
        .expect("still listed");
    assert_eq!(old["ping_status"], "ConnectionLost");
    let start_old = ssm_call(
        &endpoint,
        "StartSession",
        "AKID",
        json!({"Target": "i-00", "DocumentName": "AWS-StartPortForwardingSession",
               "Parameters": {"portNumber": ["22"]}}),
    )
    .await;
    assert_eq!(
        start_old.json()["__type"],
        "TargetNotConnected",
        "{}",
        start_old.body
    );
    let start_new = ssm_call(
        &endpoint,
        "StartSession",
        "AKID",
        json!({"Target": new_id, "DocumentName": "AWS-StartPortForwardingSession",
               "Parameters": {"portNumber": ["22"]}}),
    )
    .await;
    assert_eq!(start_new.status, 200, "{}", start_new.body);

    let missing = http(
        "POST",
        &format!("{admin}/faults/replace-instance?id=i-nope"),
        &[],
        "",
    )
    .await;
    assert_eq!(missing.status, 404);
    let offline = http(
        "POST",
        &format!("{admin}/faults/ping-status?id=i-web&status=Inactive"),
        &[],
        "",
    )
    .await;
    assert_eq!(offline.status, 200, "{}", offline.body);
    emulator.shutdown().await;
}

#[tokio::test]
async fn documents_are_read_and_api_errors_injected() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let endpoint = emulator.endpoint_url();
    let admin = emulator.admin_url();
    let document = ssm_call(
        &endpoint,
        "GetDocument",
        "AKID",
        json!({"Name": "AWS-StartPortForwardingSessionToRemoteHost"}),
    )
    .await;
    assert_eq!(document.status, 200, "{}", document.body);
    assert_eq!(document.json()["DocumentType"], "Session");
    let unknown = ssm_call(&endpoint, "GetDocument", "AKID", json!({"Name": "Nope"})).await;
    assert_eq!(unknown.json()["__type"], "InvalidDocument");

    // Without configured nodes, every instance id asked about is online.
    let asked = ssm_call(
        &endpoint,
        "DescribeInstanceInformation",
        "AKID",
        json!({"Filters": [{"Key": "InstanceIds", "Values": ["i-0123456789abcdef0"]}]}),
    )
    .await;
    assert_eq!(ids(&asked.json()), ["i-0123456789abcdef0"]);

    let armed = http(
        "POST",
        &format!("{admin}/faults/api-fail?code=access-denied&count=2&operation=GetDocument"),
        &[],
        "",
    )
    .await;
    assert_eq!(armed.status, 200, "{}", armed.body);
    assert_eq!(armed.json()["armed"][0]["remaining"], 2);
    for _ in 0..2 {
        let denied = ssm_call(
            &endpoint,
            "GetDocument",
            "AKID",
            json!({"Name": "AWS-StartPortForwardingSession"}),
        )
        .await;
        assert_eq!(denied.json()["__type"], "AccessDeniedException");
        let message = denied.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains("perform: ssm:GetDocument"), "{message}");
    }
    let fine = ssm_call(
        &endpoint,
        "GetDocument",
        "AKID",
        json!({"Name": "AWS-StartPortForwardingSession"}),
    )
    .await;
    assert_eq!(fine.status, 200);

    let internal = http(
        "POST",
        &format!("{admin}/faults/api-fail?code=internal"),
        &[],
        "",
    )
    .await;
    assert_eq!(internal.status, 200);
    let failed = ssm_call(
        &endpoint,
        "TerminateSession",
        "AKID",
        json!({"SessionId": "x"}),
    )
    .await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["__type"], "InternalServerError");
    let bad = http(
        "POST",
        &format!("{admin}/faults/api-fail?code=nope"),
        &[],
        "",
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(emulator.events().counter("fault.api_fail"), 3);
    emulator.shutdown().await;
}
