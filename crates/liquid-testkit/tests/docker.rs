//! The Docker harness against the real engine: labelled containers and networks disappear on
//! sweep, exit codes come back from `wait_exit`, HTTP readiness is reached through a published
//! port, and a dropped harness leaves nothing behind.

use std::collections::HashMap;
use std::time::Duration;

use liquid_testkit::docker::{ContainerSpec, DockerHarness, OWNER, OWNER_LABEL, TEST_LABEL};

async fn labelled(harness: &DockerHarness) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let filters = HashMap::from([("label".to_owned(), vec![harness.run_label()])]);
    let containers = harness
        .docker()
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await?
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    let networks = harness
        .docker()
        .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
            filters: Some(filters),
        }))
        .await?
        .into_iter()
        .filter_map(|n| n.name)
        .collect();
    Ok((containers, networks))
}

#[tokio::test]
async fn sweep_removes_every_labelled_container_and_network() -> anyhow::Result<()> {
    let harness = DockerHarness::connect().await?;
    let image = harness.busybox_image().await?;
    let network = harness.create_network("sweep").await?;
    let spec = ContainerSpec {
        image,
        name_hint: "sleeper".into(),
        cmd: Some(vec!["sleep".into(), "300".into()]),
        network: Some(network.clone()),
        aliases: vec!["sleeper".into()],
        ..Default::default()
    };
    let first = harness.run(&spec).await?;
    let second = harness.run(&spec).await?;

    let info = harness.docker().inspect_container(&first.id, None).await?;
    let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(labels.get(OWNER_LABEL).map(String::as_str), Some(OWNER));
    assert_eq!(
        labels.get(TEST_LABEL).map(String::as_str),
        Some(harness.run_id())
    );
    let (containers, networks) = labelled(&harness).await?;
    assert_eq!(containers.len(), 2);
    assert_eq!(networks, vec![network.clone()]);

    let report = harness.sweep().await?;
    let mut removed = report.containers.clone();
    removed.sort();
    let mut expected = vec![first.id, second.id];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(report.networks, vec![network]);
    assert_eq!(labelled(&harness).await?, (vec![], vec![]));
    Ok(())
}

#[tokio::test]
async fn wait_exit_reads_the_code_of_a_failing_container() -> anyhow::Result<()> {
    let harness = DockerHarness::connect().await?;
    let image = harness.busybox_image().await?;
    let failing = harness
        .run(&ContainerSpec {
            image: image.clone(),
            name_hint: "exit-7".into(),
            cmd: Some(vec!["sh".into(), "-c".into(), "exit 7".into()]),
            ..Default::default()
        })
        .await?;
    assert_eq!(harness.wait_exit(&failing.id).await?, 7);
    let ok = harness
        .run(&ContainerSpec {
            image,
            name_hint: "exit-0".into(),
            cmd: Some(vec!["true".into()]),
            ..Default::default()
        })
        .await?;
    assert_eq!(harness.wait_exit(&ok.id).await?, 0);
    Ok(())
}

#[tokio::test]
async fn http_readiness_through_a_published_port() -> anyhow::Result<()> {
    let harness = DockerHarness::connect().await?;
    let image = harness.busybox_image().await?;
    let server = harness
        .run(&ContainerSpec {
            image,
            name_hint: "httpd".into(),
            cmd: Some(vec![
                "sh".into(),
                "-c".into(),
                "mkdir -p /tmp/www && echo ok > /tmp/www/healthz && httpd -f -p 8080 -h /tmp/www"
                    .into(),
            ]),
            http_port: Some(8080),
            ..Default::default()
        })
        .await?;
    harness
        .wait_http_ready(&server, "/healthz", Duration::from_secs(20))
        .await?;
    let base = server.http_base().unwrap_or_default();
    let body = reqwest::get(format!("{base}/healthz"))
        .await?
        .text()
        .await?;
    assert_eq!(body.trim(), "ok");

    harness.stop(&server.id, Duration::from_secs(1)).await?;
    harness.remove(&server.id).await?;
    assert!(
        harness
            .docker()
            .inspect_container(&server.id, None)
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn a_stopped_container_fails_readiness_with_its_exit_code() -> anyhow::Result<()> {
    let harness = DockerHarness::connect().await?;
    let image = harness.busybox_image().await?;
    let dying = harness
        .run(&ContainerSpec {
            image,
            name_hint: "dying".into(),
            cmd: Some(vec!["sh".into(), "-c".into(), "echo bye; exit 3".into()]),
            http_port: Some(8080),
            ..Default::default()
        })
        .await?;
    let err = harness
        .wait_http_ready(&dying, "/healthz", Duration::from_secs(20))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("bye"), "{err}");
    Ok(())
}

#[tokio::test]
async fn dropping_the_harness_sweeps_its_run() -> anyhow::Result<()> {
    let observer = DockerHarness::connect().await?;
    let (label, id) = {
        let harness = DockerHarness::connect().await?;
        let image = harness.busybox_image().await?;
        let c = harness
            .run(&ContainerSpec {
                image,
                name_hint: "dropped".into(),
                cmd: Some(vec!["sleep".into(), "300".into()]),
                ..Default::default()
            })
            .await?;
        (harness.run_label(), c.id)
    };
    assert!(label.starts_with(TEST_LABEL));
    assert!(
        observer
            .docker()
            .inspect_container(&id, None)
            .await
            .is_err(),
        "container {id} survived the drop of its harness"
    );
    Ok(())
}
