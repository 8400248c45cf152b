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

/// `GET path` on the API socket; the body of its 200.
fn get(s: &ApiServer, path: &str) -> Vec<u8> {
    let (code, _, body) = http(&s.sock, "GET", path, None);
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
    body
}

/// Deserializes into `T`, failing on any field of the wrong type, and
/// checks the answer's keys against moby's swagger (v1.45, the response
/// schema of `swagger_path`'s GET), recursively: every key moat sends must
/// be one the schema knows (or in a free-form map), and every key the schema
/// lists that moat leaves out is added to `gaps` as `ENDPOINT KEY.PATH`,
/// which the caller compares with the list of known gaps.
fn strict<T: serde::de::DeserializeOwned>(swagger_path: &str, body: &[u8], gaps: &mut Vec<String>) -> T {
    let v: T = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{swagger_path}: {e}\n{}", String::from_utf8_lossy(body)));
    let sent: serde_json::Value = serde_json::from_slice(body).unwrap();
    let responses = &swagger()["paths"][swagger_path]["get"]["responses"];
    let ok = responses.get(serde_yaml::Value::from(200)).or_else(|| responses.get("200"));
    let node = ok.map(|o| &o["schema"]).unwrap_or(&serde_yaml::Value::Null);
    assert!(!node.is_null(), "{swagger_path}: no response schema in the swagger");
    let mut unknown = Vec::new();
    let mut missing = Vec::new();
    walk("", &sent, node, &mut unknown, &mut missing);
    unknown.retain(|k| !MOAT_KEYS.contains(&format!("{swagger_path} {k}").as_str()));
    assert!(unknown.is_empty(), "{swagger_path}: keys the schema does not know: {unknown:?}");
    gaps.extend(missing.into_iter().map(|k| format!("{swagger_path} {k}")));
    v
}

/// Keys moat adds to Docker's answers, each documented in docs/api.md
/// (clients ignore keys they do not know).
const MOAT_KEYS: &[&str] = &[
    "/info CgroupLayout",
    "/info DefaultIsolationSource",
    "/info Hypervisor",
    "/containers/json [].NetworkSettings.Networks.*.HostInterface",
    "/containers/json [].Isolation",
    "/containers/{id}/json NetworkSettings.Networks.*.HostInterface",
    "/containers/{id}/json State.Isolation",
    "/containers/{id}/json State.IsolationChangedAt",
    "/containers/{id}/json VM",
];

/// moby's Engine API definition (v1.45), vendored from moby (Apache-2.0).
fn swagger() -> &'static serde_yaml::Value {
    static S: std::sync::OnceLock<serde_yaml::Value> = std::sync::OnceLock::new();
    S.get_or_init(|| serde_yaml::from_str(include_str!("data/moby-swagger-v1.45.yaml")).unwrap())
}

/// A schema node with its `$ref` followed and its `allOf` merged: its
/// properties, its `additionalProperties` schema and its `items`.
#[derive(Default)]
struct Shape {
    props: std::collections::BTreeMap<String, serde_yaml::Value>,
    additional: Option<serde_yaml::Value>,
    items: Option<serde_yaml::Value>,
}

fn shape(node: &serde_yaml::Value) -> Shape {
    let mut out = Shape::default();
    if let Some(r) = node.get("$ref").and_then(|r| r.as_str()) {
        let name = r.trim_start_matches("#/definitions/");
        return shape(&swagger()["definitions"][name]);
    }
    for part in node.get("allOf").and_then(|a| a.as_sequence()).into_iter().flatten() {
        let s = shape(part);
        out.props.extend(s.props);
        out.additional = out.additional.or(s.additional);
        out.items = out.items.or(s.items);
    }
    if let Some(p) = node.get("properties").and_then(|p| p.as_mapping()) {
        for (k, v) in p {
            out.props.insert(k.as_str().unwrap_or_default().to_string(), v.clone());
        }
    }
    if let Some(a) = node.get("additionalProperties").filter(|a| a.is_mapping()) {
        out.additional = Some(a.clone());
    }
    if let Some(i) = node.get("items") {
        out.items = Some(i.clone());
    }
    out
}

fn walk(
    at: &str,
    sent: &serde_json::Value,
    node: &serde_yaml::Value,
    unknown: &mut Vec<String>,
    missing: &mut Vec<String>,
) {
    let s = shape(node);
    match sent {
        serde_json::Value::Object(o) => {
            if s.props.is_empty() && s.additional.is_none() {
                return; // a free-form object
            }
            for (k, v) in &s.props {
                let key = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match o.get(k) {
                    None => {
                        if !missing.contains(&key) {
                            missing.push(key)
                        }
                    }
                    Some(x) => walk(&key, x, v, unknown, missing),
                }
            }
            for (k, x) in o {
                if s.props.contains_key(k) {
                    continue;
                }
                let key = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match &s.additional {
                    Some(a) => walk(
                        &format!("{}*", if at.is_empty() { String::new() } else { format!("{at}.") }),
                        x,
                        a,
                        unknown,
                        missing,
                    ),
                    None if s.props.is_empty() => {}
                    None => unknown.push(key),
                }
            }
        }
        serde_json::Value::Array(a) => {
            if let Some(items) = &s.items {
                for x in a {
                    walk(&format!("{at}[]"), x, items, unknown, missing);
                }
            }
        }
        _ => {}
    }
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
    let mut gaps = Vec::new();
    let v: m::SystemVersion = strict("/version", &get(&s, "/v1.45/version"), &mut gaps);
    assert_eq!(v.api_version.as_deref(), Some("1.45"));
    let i: m::SystemInfo = strict("/info", &get(&s, "/v1.45/info"), &mut gaps);
    assert_eq!(i.containers_running, Some(1));
    let cs: Vec<m::ContainerSummary> = strict("/containers/json", &get(&s, "/v1.45/containers/json?all=1"), &mut gaps);
    assert_eq!(cs.len(), 1);
    let ci: m::ContainerInspectResponse =
        strict("/containers/{id}/json", &get(&s, "/v1.45/containers/c/json"), &mut gaps);
    assert_eq!(ci.name.as_deref(), Some("/c"));
    let _: m::ContainerTopResponse = strict("/containers/{id}/top", &get(&s, "/v1.45/containers/c/top"), &mut gaps);
    let _: Vec<m::FilesystemChange> =
        strict("/containers/{id}/changes", &get(&s, "/v1.45/containers/c/changes"), &mut gaps);
    let is: Vec<m::ImageSummary> = strict("/images/json", &get(&s, "/v1.45/images/json"), &mut gaps);
    assert_eq!(is.len(), 1);
    let _: m::ImageInspect = strict("/images/{name}/json", &get(&s, "/v1.45/images/busybox/json"), &mut gaps);
    let _: Vec<m::ImageHistoryResponseItem> =
        strict("/images/{name}/history", &get(&s, "/v1.45/images/busybox/history"), &mut gaps);
    let ns: Vec<m::Network> = strict("/networks", &get(&s, "/v1.45/networks"), &mut gaps);
    assert!(ns.iter().any(|n| n.labels.as_ref().and_then(|l| l.get("c")).map(String::as_str) == Some("d")));
    let _: m::Network = strict("/networks/{id}", &get(&s, "/v1.45/networks/net"), &mut gaps);
    let vl: m::VolumeListResponse = strict("/volumes", &get(&s, "/v1.45/volumes"), &mut gaps);
    assert_eq!(vl.volumes.map(|v| v.len()), Some(1));
    let _: m::Volume = strict("/volumes/{name}", &get(&s, "/v1.45/volumes/vol"), &mut gaps);
    // (system/df is not checked here: bollard-stubs 1.53 models API 1.52's new
    // shape, moat answers 1.45's, which the docker CLI test reads)
    let st: m::ContainerStatsResponse =
        strict("/containers/{id}/stats", &get(&s, "/v1.45/containers/c/stats?stream=false"), &mut gaps);
    assert!(st.memory_stats.and_then(|m| m.usage).is_some_and(|u| u > 0));
    // every key the schema lists and moat leaves out is a known gap, listed
    // (with the reason in docs/api.md); a new gap, or a closed one, fails here
    gaps.sort();
    gaps.dedup();
    let known: Vec<String> = include_str!("data/schema-gaps.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if std::env::var_os("MOAT_WRITE_SCHEMA_GAPS").is_some() {
        let header = "# Keys of moby's Engine API schema (v1.45) that moat's answers leave out, as\n\
                      # `ENDPOINT KEY.PATH` ([] an array's items, * a map's values). Compared whole by\n\
                      # bollard.rs read_only_answers_fit_moby_schema: a new gap fails, and so does a\n\
                      # closed one until it is taken off. Rewrite: MOAT_WRITE_SCHEMA_GAPS=1. Some are\n\
                      # left out by dockerd too (Windows-only, deprecated, size=1 only); issue #31's\n\
                      # differential test against dockerd says which; docs/api.md lists why.\n";
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/schema-gaps.txt"),
            format!("{header}{}\n", gaps.join("\n")),
        )
        .unwrap();
    }
    assert_eq!(gaps, known, "keys of moby's schema that moat leaves out (tests/data/schema-gaps.txt)");
}
