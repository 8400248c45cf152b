//! The Docker API through `bollard` (issue #14): the lifecycle in both
//! isolation types, attach with stdin (half-close), and every read-only
//! answer deserialized into bollard-stubs' models (generated from moby's
//! swagger) — by bollard itself and strictly, field by field, here.

#![allow(clippy::unwrap_used)]

mod common;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigIsolationEnum};
use bollard::query_parameters as qp;
use bollard::Docker;
use common::*;
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

fn client(s: &ApiServer) -> Docker {
    Docker::connect_with_socket(&s.sock.display().to_string(), 60, bollard::API_DEFAULT_VERSION).unwrap()
}

fn served() -> (Root, ApiServer) {
    let r = root_with_busybox();
    let s = ApiServer::start(&r);
    (r, s)
}

async fn lifecycle(iso: HostConfigIsolationEnum) {
    let (_r, s) = served();
    let d = client(&s);
    let body = ContainerCreateBody {
        image: Some("busybox".into()),
        cmd: Some(vec!["sh".into(), "-c".into(), "echo out; echo err >&2; exit 5".into()]),
        host_config: Some(HostConfig { isolation: Some(iso), ..Default::default() }),
        ..Default::default()
    };
    let id = d.create_container(None::<qp::CreateContainerOptions>, body).await.unwrap().id;
    // bollard sends the wait request only when its stream is polled: poll it
    // in a task and give the request a moment to reach the server before the
    // start (a `next-exit` wait that arrives after the exit waits for the next)
    let (d2, id2) = (d.clone(), id.clone());
    let wait = tokio::spawn(async move {
        d2.wait_container(&id2, Some(qp::WaitContainerOptionsBuilder::default().condition("next-exit").build()))
            .next()
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    d.start_container(&id, None::<qp::StartContainerOptions>).await.unwrap();
    // a non-zero exit arrives as bollard's DockerContainerWaitError
    match wait.await.unwrap() {
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => assert_eq!(code, 5),
        other => panic!("wait: {other:?}"),
    }
    let logs: Vec<_> = d
        .logs(&id, Some(qp::LogsOptionsBuilder::default().stdout(true).stderr(true).build()))
        .try_collect()
        .await
        .unwrap();
    let text: Vec<String> = logs.iter().map(|l| l.to_string()).collect();
    assert_eq!(text, ["out\n", "err\n"]);
    let info = d.inspect_container(&id, None::<qp::InspectContainerOptions>).await.unwrap();
    assert_eq!(info.host_config.and_then(|h| h.isolation), Some(iso));
    assert_eq!(info.state.and_then(|s| s.exit_code), Some(5));
    // exec in a running container
    let body = ContainerCreateBody {
        image: Some("busybox".into()),
        cmd: Some(vec!["sleep".into(), "1000".into()]),
        host_config: Some(HostConfig { isolation: Some(iso), ..Default::default() }),
        ..Default::default()
    };
    let run = d.create_container(None::<qp::CreateContainerOptions>, body).await.unwrap().id;
    d.start_container(&run, None::<qp::StartContainerOptions>).await.unwrap();
    // memory: a VM container's usage is what its VM holds on the host, the
    // guest's own count is in stats.guest_usage (a process container has none)
    let st = d
        .stats(&run, Some(qp::StatsOptionsBuilder::default().stream(false).one_shot(true).build()))
        .next()
        .await
        .unwrap()
        .unwrap();
    let mem = st.memory_stats.unwrap();
    let usage = mem.usage.unwrap();
    let guest = mem.stats.unwrap_or_default().get("guest_usage").copied();
    assert!(usage > 0);
    if iso == HostConfigIsolationEnum::HYPERV {
        let guest = guest.expect("guest_usage for a VM container");
        assert!(guest > 0 && usage > guest + (20 << 20), "host {usage} B, guest {guest} B");
        // no --memory: the limit is the VM's RAM (512 MiB), not the host's
        assert_eq!(mem.limit, Some(512 << 20));
    } else {
        assert_eq!(guest, None);
    }
    let x = d
        .create_exec(
            &run,
            bollard::exec::CreateExecOptions {
                cmd: Some(vec!["sh", "-c", "echo $((6*7)); exit 3"]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id;
    let mut got = String::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } = d.start_exec(&x, None).await.unwrap() {
        while let Some(Ok(o)) = output.next().await {
            got.push_str(&o.to_string());
        }
    }
    assert_eq!(got, "42\n");
    let xi = d.inspect_exec(&x).await.unwrap();
    assert_eq!((xi.exit_code, xi.running), (Some(3), Some(false)));
    for c in [&id, &run] {
        d.remove_container(c, Some(qp::RemoveContainerOptionsBuilder::default().force(true).build())).await.unwrap();
    }
    assert!(d
        .list_containers(Some(qp::ListContainersOptionsBuilder::default().all(true).build()))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn bollard_lifecycle_process() {
    lifecycle(HostConfigIsolationEnum::PROCESS).await;
}

#[tokio::test]
async fn bollard_lifecycle_hyperv() {
    lifecycle(HostConfigIsolationEnum::HYPERV).await;
}

#[tokio::test]
async fn bollard_attach_with_stdin() {
    let (_r, s) = served();
    let d = client(&s);
    let body = ContainerCreateBody {
        image: Some("busybox".into()),
        cmd: Some(vec!["sh".into(), "-c".into(), "cat; echo after-eof".into()]),
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let id = d.create_container(None::<qp::CreateContainerOptions>, body).await.unwrap().id;
    let bollard::container::AttachContainerResults { mut output, mut input } = d
        .attach_container(
            &id,
            Some(
                qp::AttachContainerOptionsBuilder::default().stdin(true).stdout(true).stderr(true).stream(true).build(),
            ),
        )
        .await
        .unwrap();
    d.start_container(&id, None::<qp::StartContainerOptions>).await.unwrap();
    input.write_all(b"through stdin\n").await.unwrap();
    input.flush().await.unwrap();
    // half-close: the container's stdin ends, its output keeps coming
    input.shutdown().await.unwrap();
    let mut got = String::new();
    while let Some(Ok(o)) = output.next().await {
        got.push_str(&o.to_string());
    }
    assert_eq!(got, "through stdin\nafter-eof\n");
    d.remove_container(&id, Some(qp::RemoveContainerOptionsBuilder::default().force(true).build())).await.unwrap();
}

/// `GET path` on the API socket; the body.
fn get(s: &ApiServer, path: &str) -> Vec<u8> {
    use std::io::{BufRead, Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(&s.sock).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: moat\r\nConnection: close\r\n\r\n").unwrap();
    let mut r = std::io::BufReader::new(c);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
    let mut chunked = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" {
            break;
        }
        chunked |= h.to_ascii_lowercase().starts_with("transfer-encoding: chunked");
    }
    let mut raw = Vec::new();
    r.read_to_end(&mut raw).unwrap();
    if !chunked {
        return raw;
    }
    let mut out = Vec::new();
    let mut rest = &raw[..];
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&rest[..i]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&rest[i + 2..i + 2 + n]);
        rest = &rest[i + 4 + n..];
    }
    out
}

/// Deserializes into `T`, failing on any field of the wrong type, and
/// checks that nothing of the answer was lost on the way (every key moat
/// sent is one the model knows, recursively, for the models' own fields).
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(path: &str, body: &[u8]) -> T {
    let v: T =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("{path}: {e}\n{}", String::from_utf8_lossy(body)));
    let back = serde_json::to_value(&v).unwrap();
    let sent: serde_json::Value = serde_json::from_slice(body).unwrap();
    fn keys_known(path: &str, sent: &serde_json::Value, model: &serde_json::Value) {
        match (sent, model) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in a {
                    // free-form maps (labels, options) and moat's own additions are allowed
                    if let Some(m) = b.get(k) {
                        keys_known(&format!("{path}.{k}"), v, m);
                    }
                }
            }
            (serde_json::Value::Array(a), serde_json::Value::Array(b)) => {
                assert_eq!(a.len(), b.len(), "{path}: items lost");
                for (x, y) in a.iter().zip(b) {
                    keys_known(path, x, y);
                }
            }
            (serde_json::Value::Null, _) | (_, serde_json::Value::Null) => {}
            (a, b) => assert_eq!(a.is_number(), b.is_number(), "{path}: {a} became {b}"),
        }
    }
    keys_known(path, &sent, &back);
    v
}

#[test]
fn read_only_answers_fit_moby_schema() {
    use bollard_stubs::models as m;
    let (r, s) = served();
    r.ok(&["volume", "create", "--label", "a=b", "vol"]);
    r.ok(&["switch", "create", "--label", "c=d", "net"]);
    r.ok(&[
        "run",
        "-d",
        "--name",
        "c",
        "--network",
        "net",
        "-v",
        "vol:/v",
        "-p",
        "127.0.0.1::80",
        "-l",
        "k=v",
        "busybox",
        "sleep",
        "1000",
    ]);
    let v: m::SystemVersion = strict("/version", &get(&s, "/v1.45/version"));
    assert_eq!(v.api_version.as_deref(), Some("1.45"));
    let i: m::SystemInfo = strict("/info", &get(&s, "/v1.45/info"));
    assert_eq!(i.containers_running, Some(1));
    let cs: Vec<m::ContainerSummary> = strict("/containers/json", &get(&s, "/v1.45/containers/json?all=1"));
    assert_eq!(cs.len(), 1);
    let ci: m::ContainerInspectResponse = strict("/containers/c/json", &get(&s, "/v1.45/containers/c/json"));
    assert_eq!(ci.name.as_deref(), Some("/c"));
    let _: m::ContainerTopResponse = strict("/containers/c/top", &get(&s, "/v1.45/containers/c/top"));
    let _: Vec<m::FilesystemChange> = strict("/containers/c/changes", &get(&s, "/v1.45/containers/c/changes"));
    let is: Vec<m::ImageSummary> = strict("/images/json", &get(&s, "/v1.45/images/json"));
    assert_eq!(is.len(), 1);
    let _: m::ImageInspect = strict("/images/busybox/json", &get(&s, "/v1.45/images/busybox/json"));
    let _: Vec<m::ImageHistoryResponseItem> =
        strict("/images/busybox/history", &get(&s, "/v1.45/images/busybox/history"));
    let ns: Vec<m::Network> = strict("/networks", &get(&s, "/v1.45/networks"));
    assert!(ns.iter().any(|n| n.labels.as_ref().and_then(|l| l.get("c")).map(String::as_str) == Some("d")));
    let _: m::Network = strict("/networks/net", &get(&s, "/v1.45/networks/net"));
    let vl: m::VolumeListResponse = strict("/volumes", &get(&s, "/v1.45/volumes"));
    assert_eq!(vl.volumes.map(|v| v.len()), Some(1));
    let _: m::Volume = strict("/volumes/vol", &get(&s, "/v1.45/volumes/vol"));
    // (system/df is not checked here: bollard-stubs 1.53 models API 1.52's new
    // shape, moat answers 1.45's, which the docker CLI test reads)
    let st: m::ContainerStatsResponse =
        strict("/containers/c/stats", &get(&s, "/v1.45/containers/c/stats?stream=false"));
    assert!(st.memory_stats.and_then(|m| m.usage).is_some_and(|u| u > 0));
}
