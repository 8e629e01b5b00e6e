//! The pool against the real Docker engine, through its REST API: acquire, exec and release;
//! exhaustion with fair FIFO waiting and a timeout; the reset between tenants; limits that
//! contain a fork bomb and a memory hog; isolation settings and no host port; secrets present
//! during a claim and gone after release; files through the archive API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn acquire_exec_release_and_files() {
    let keys = keys();
    let mut svc = start(settings(1, 2), &keys).await;
    let admin = keys.admin("acme");
    svc.wait_status(&admin, "one idle", |t| t["idle"] == 1)
        .await;

    let claim = svc
        .acquire(
            &admin,
            json!({"env": {"GREETING": "hello"}, "workdir": "src"}),
        )
        .await;
    assert_eq!(claim["served"], "warm", "{claim}");
    assert_eq!(claim["runtime"], "docker");
    assert_eq!(claim["isolated"], true);
    assert_eq!(claim["workdir"], "/workspace/src");
    let id = claim["id"].as_str().unwrap();

    // argv runs without a shell: the `$GREETING` stays literal; with shell it expands.
    let out = svc
        .exec(&admin, id, json!({"argv": ["echo", "$GREETING", "a b"]}))
        .await;
    assert_eq!(out["stdout"], "$GREETING a b\n");
    assert_eq!(out["exit_code"], 0);
    let out = svc
        .sh(&admin, id, "echo $GREETING; pwd; id -u; exit 3")
        .await;
    assert_eq!(out["stdout"], "hello\n/workspace/src\n10001\n");
    assert_eq!(out["exit_code"], 3);
    let out = svc
        .exec(&admin, id, json!({"argv": ["cat"], "stdin": "piped in"}))
        .await;
    assert_eq!(out["stdout"], "piped in");
    let out = svc
        .exec(
            &admin,
            id,
            json!({"argv": ["sh", "-c", "echo oops >&2"], "usage": true}),
        )
        .await;
    assert_eq!(out["stderr"], "oops\n");
    assert!(out["memory_peak_bytes"].as_u64().unwrap() > 0, "{out}");

    // Files in through the archive API, changed inside, out again.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "notes/a.txt", &b"first"[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let put = svc
        .http
        .put(format!(
            "{}/claims/{id}/archive?path=/workspace/in",
            svc.base
        ))
        .bearer_auth(&admin)
        .body(tar)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204, "{}", put.text().await.unwrap());
    let out = svc
        .sh(
            &admin,
            id,
            "cat /workspace/in/notes/a.txt && echo more >> /workspace/in/notes/a.txt",
        )
        .await;
    assert_eq!(out["stdout"], "first", "{out}");
    assert_eq!(
        out["exit_code"], 0,
        "uploaded files belong to the pool user: {out}"
    );
    let got = svc
        .http
        .get(format!(
            "{}/claims/{id}/archive?path=/workspace/in/notes",
            svc.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let bytes = got.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut found = String::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().ends_with("a.txt") {
            std::io::Read::read_to_string(&mut e, &mut found).unwrap();
        }
    }
    assert_eq!(found, "firstmore\n");
    let missing = svc
        .http
        .get(format!(
            "{}/claims/{id}/archive?path=/workspace/nope",
            svc.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let outside = svc
        .http
        .get(format!("{}/claims/{id}/archive?path=/etc", svc.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), 400);

    // Bad input gets a stable code, never a panic.
    let (status, body) = svc
        .post(&admin, &format!("/claims/{id}/exec"), json!({"argv": []}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (status, body) = svc
        .post(
            &admin,
            &format!("/claims/{id}/exec"),
            json!({"argv": ["a", "b"], "shell": true}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = svc
        .post(&admin, "/claims", json!({"template": "nope"}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = svc
        .post(&admin, "/claims", json!({"workdir": "../etc"}))
        .await;
    assert_eq!(status, 400);

    // Scopes: reads need containers:read, claims need containers:admin.
    let reader = keys.token("acme", &["containers:read"]);
    let (status, _) = svc.get(&reader, "/status").await;
    assert_eq!(status, 200);
    let (status, body) = svc.post(&reader, "/claims", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("permission_denied"))
    );
    let (status, _) = svc.get("not-a-token", "/status").await;
    assert_eq!(status, 401);

    svc.release(&admin, id).await;
    let (status, _) = svc.get(&admin, &format!("/claims/{id}")).await;
    assert_eq!(status, 404, "a released claim is gone");
    let (status, _) = svc
        .post(
            &admin,
            &format!("/claims/{id}/exec"),
            json!({"argv": ["true"]}),
        )
        .await;
    assert_eq!(status, 404);

    // The container went back to the pool, reset: the next claim gets it warm and empty.
    let again = svc.acquire(&admin, json!({})).await;
    assert_eq!(again["served"], "warm");
    let out = svc
        .sh(
            &admin,
            again["id"].as_str().unwrap(),
            "ls -A /workspace /tmp",
        )
        .await;
    assert_eq!(out["stdout"], "/tmp:\n\n/workspace:\n", "{out}");

    let docker = docker().await;
    let pool = svc.pool.clone();
    assert!(!pool_containers(&docker, &pool).await.is_empty());
    svc.stop().await;
    assert!(
        pool_containers(&docker, &pool).await.is_empty(),
        "shutdown removes what the pool created"
    );
}

#[tokio::test]
async fn exhaustion_waits_in_fifo_order_and_times_out() {
    let keys = keys();
    let svc = start(settings(1, 1), &keys).await;
    let admin = keys.admin("acme");
    svc.wait_status(&admin, "one idle", |t| t["idle"] == 1)
        .await;
    let first = svc.acquire(&admin, json!({})).await;

    // Nothing free: a short wait ends with deadline_exceeded and the time waited.
    let (status, body) = svc
        .post(&admin, "/claims", json!({"timeout_ms": 300}))
        .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "deadline_exceeded");
    assert_eq!(body["error"]["details"]["waited_ms"], 300);

    // Two waiters, queued in a known order; releases serve them oldest first.
    let svc = std::sync::Arc::new(svc);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&str, Value)>();
    let spawn_waiter = |name: &'static str| {
        let svc = svc.clone();
        let admin = admin.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let claim = svc.acquire(&admin, json!({"timeout_ms": 20000})).await;
            tx.send((name, claim)).unwrap();
        })
    };
    let b = spawn_waiter("b");
    svc.wait_status(&admin, "b waits", |t| t["waiting"] == 1)
        .await;
    let c = spawn_waiter("c");
    svc.wait_status(&admin, "c waits", |t| t["waiting"] == 2)
        .await;

    svc.release(&admin, first["id"].as_str().unwrap()).await;
    let (who, claim_b) = rx.recv().await.unwrap();
    assert_eq!(who, "b", "the oldest waiter is served first");
    assert_eq!(claim_b["served"], "waited");
    assert_eq!(
        claim_b["container_id"], first["container_id"],
        "the same container, reset"
    );
    svc.wait_status(&admin, "c still waits", |t| t["waiting"] == 1)
        .await;
    svc.release(&admin, claim_b["id"].as_str().unwrap()).await;
    let (who, claim_c) = rx.recv().await.unwrap();
    assert_eq!(who, "c");
    let t = svc
        .wait_status(&admin, "nobody waits", |t| t["waiting"] == 0)
        .await;
    assert_eq!(t["busy"], 1);
    assert_eq!(t["max_total"], 1);
    svc.release(&admin, claim_c["id"].as_str().unwrap()).await;
    b.await.unwrap();
    c.await.unwrap();
    let mut svc = std::sync::Arc::try_unwrap(svc).ok().unwrap();
    svc.stop().await;
}

#[tokio::test]
async fn a_container_is_reset_between_tenants_and_claims_stay_private() {
    let keys = keys();
    let mut s = settings(1, 1);
    s.secrets
        .refs
        .insert("path_value".into(), "env:PATH".into());
    let mut svc = start(s, &keys).await;
    let alice = keys.admin("alice");
    let bob = keys.admin("bob");
    svc.wait_status(&alice, "one idle", |t| t["idle"] == 1)
        .await;

    let a = svc
        .acquire(&alice, json!({"secrets": ["path_value"]}))
        .await;
    let a_id = a["id"].as_str().unwrap();
    assert_eq!(a["secrets"], json!(["path_value"]));
    let out = svc
        .sh(
            &alice,
            a_id,
            "cat /run/secrets/path_value; stat -c %a /run/secrets/path_value",
        )
        .await;
    assert_eq!(
        out["stdout"],
        format!("{}600\n", std::env::var("PATH").unwrap()),
        "the secret is a file only its owner reads"
    );
    svc.sh(
        &alice,
        a_id,
        "echo private > /workspace/diary; mkdir -p /workspace/.hidden; echo x > /tmp/t; (sleep 600 &) ; true",
    )
    .await;
    let out = svc
        .sh(&alice, a_id, "ps -o args | grep -c '^sleep 600'")
        .await;
    assert_eq!(out["stdout"], "1\n", "{out}");

    // Bob cannot see or use Alice's claim.
    let (status, _) = svc.get(&bob, &format!("/claims/{a_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = svc
        .post(
            &bob,
            &format!("/claims/{a_id}/exec"),
            json!({"argv": ["true"]}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = svc.delete(&bob, &format!("/claims/{a_id}")).await;
    assert_eq!(status, 404);

    // Alice releases; the secret is gone the moment release returns.
    svc.release(&alice, a_id).await;
    let docker = docker().await;
    let container = a["container_id"].as_str().unwrap();
    assert_eq!(
        docker_exec(&docker, container, "ls -A /run/secrets").await,
        ""
    );

    // Bob gets the same container with nothing of Alice's in it.
    let b = svc.acquire(&bob, json!({})).await;
    assert_eq!(b["container_id"], a["container_id"]);
    let b_id = b["id"].as_str().unwrap();
    let out = svc
        .sh(
            &bob,
            b_id,
            "ls -A /workspace /tmp /run/secrets; ps -o args | grep -c '^sleep 600'",
        )
        .await;
    assert_eq!(
        out["stdout"], "/run/secrets:\n\n/tmp:\n\n/workspace:\n0\n",
        "{out}"
    );
    svc.release(&bob, b_id).await;
    svc.stop().await;
}

#[tokio::test]
async fn limits_contain_a_fork_bomb_and_a_memory_hog_and_nothing_is_published() {
    let keys = keys();
    let mut s = settings(0, 1);
    s.templates.get_mut("default").unwrap().memory_mib = 64;
    s.templates.get_mut("default").unwrap().pids_limit = 32;
    s.templates.get_mut("default").unwrap().tmp_size_mib = 8;
    let mut svc = start(s, &keys).await;
    let admin = keys.admin("acme");
    let claim = svc.acquire(&admin, json!({})).await;
    assert_eq!(claim["served"], "cold");
    let id = claim["id"].as_str().unwrap();

    // What Docker says about the container.
    let docker = docker().await;
    let c = docker
        .inspect_container(claim["container_id"].as_str().unwrap(), None)
        .await
        .unwrap();
    let hc = c.host_config.unwrap();
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    assert_eq!(hc.memory_swap, Some(64 * 1024 * 1024), "no swap on top");
    assert_eq!(hc.pids_limit, Some(32));
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_owned()]));
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    assert!(
        hc.port_bindings.unwrap_or_default().is_empty(),
        "no host port"
    );
    let ports = c.network_settings.and_then(|n| n.ports).unwrap_or_default();
    assert!(ports.values().all(Option::is_none), "{ports:?}");
    assert_eq!(c.config.unwrap().user.as_deref(), Some("10001:10001"));

    // Inside: read-only root, no network but loopback, not root.
    let out = svc
        .sh(&admin, id, "touch /etc/x 2>&1; ls /sys/class/net; id -u")
        .await;
    assert_eq!(
        out["stdout"], "touch: /etc/x: Read-only file system\nlo\n10001\n",
        "{out}"
    );

    // A memory hog is killed by the kernel inside its limit; the container lives on.
    let out = svc
        .exec(
            &admin,
            id,
            json!({"argv": ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]}),
        )
        .await;
    assert_eq!(out["exit_code"], 137, "OOM-killed: {out}");
    let out = svc.sh(&admin, id, "echo alive").await;
    assert_eq!(out["stdout"], "alive\n");

    // A fork bomb runs into the pids limit and is killed at its timeout.
    let out = svc
        .exec(
            &admin,
            id,
            json!({"argv": ["f(){ f | f & }; f; sleep 60"], "shell": true, "timeout_ms": 3000}),
        )
        .await;
    assert_eq!(out["timed_out"], true, "{out}");
    assert_eq!(out["exit_code"], 137);
    let out = svc.sh(&admin, id, "echo alive; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max").await;
    assert_eq!(out["stdout"], "alive\n32\n", "{out}");
    let c = docker
        .inspect_container(claim["container_id"].as_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(c.state.unwrap().running, Some(true));
    svc.release(&admin, id).await;
    svc.stop().await;
}

/// A one-line HTTP server on 127.0.0.2 (not the container's loopback, not in NO_PROXY).
async fn tiny_server(body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn an_allowlisted_template_reaches_only_its_listed_destinations_through_the_proxy() {
    let keys = keys();
    let allowed = tiny_server("hello from the allowed host").await;
    let other = tiny_server("nobody should read this").await;
    let mut s = settings(0, 1);
    let network = format!("{}-allow", s.pool.name);
    s.docker.allowlist_network = network.clone();
    s.docker.egress_allow = vec![format!("127.0.0.2:{allowed}")];
    s.docker.egress_allow_private = true;
    s.templates.get_mut("default").unwrap().network =
        liquid_container_pool::config::NetworkPolicy::Allowlist;
    let mut svc = start(s, &keys).await;
    let admin = keys.admin("acme");
    let claim = svc.acquire(&admin, json!({})).await;
    let id = claim["id"].as_str().unwrap();

    let docker = docker().await;
    let net = docker
        .inspect_network(
            &network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .unwrap();
    assert_eq!(net.internal, Some(true), "no route out of the network");

    // Through the proxy: the listed destination answers, another port of the same host does not.
    let out = svc
        .sh(
            &admin,
            id,
            &format!("wget -q -O - http://127.0.0.2:{allowed}/"),
        )
        .await;
    assert_eq!(out["stdout"], "hello from the allowed host", "{out}");
    let out = svc
        .sh(
            &admin,
            id,
            &format!("wget -q -O - http://127.0.0.2:{other}/ 2>&1; echo \" exit=$?\""),
        )
        .await;
    let text = out["stdout"].as_str().unwrap();
    assert!(text.contains("403") && text.ends_with(" exit=1\n"), "{out}");
    assert!(!text.contains("nobody should read this"));

    // Around the proxy the same destination is out of reach: the proxy is the only way out.
    let out = svc
        .sh(
            &admin,
            id,
            &format!(
                "unset http_proxy HTTP_PROXY; wget -q -T 3 -O - http://127.0.0.2:{allowed}/ 2>&1; echo \" exit=$?\""
            ),
        )
        .await;
    let text = out["stdout"].as_str().unwrap();
    assert!(
        !text.contains("hello from the allowed host") && !text.ends_with(" exit=0\n"),
        "{out}"
    );

    // A CONNECT tunnel (what TLS clients use) obeys the same list.
    let out = svc.sh(&admin, id, "printf %s \"$HTTPS_PROXY\"").await;
    let proxy = out["stdout"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let connect = |port: u16| {
        let proxy = proxy.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
            s.write_all(
                format!("CONNECT 127.0.0.2:{port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut all = String::new();
            s.read_to_string(&mut all).await.unwrap();
            all
        }
    };
    let tunnel = connect(allowed).await;
    assert!(
        tunnel.starts_with("HTTP/1.1 200 Connection Established")
            && tunnel.ends_with("hello from the allowed host"),
        "{tunnel}"
    );
    let refused = connect(other).await;
    assert!(
        refused.starts_with("HTTP/1.1 403 Forbidden")
            && refused.contains("not on the egress allow-list"),
        "{refused}"
    );

    svc.release(&admin, id).await;
    svc.stop().await;
    docker.remove_network(&network).await.unwrap();
}
