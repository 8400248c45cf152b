//! Docker's paths (any `/v1.NN` prefix) to engine calls. Every answer is
//! an engine view serialized as it is; errors carry the engine's kind.

use crate::http::{self, empty, error, json, ApiError, Query, Resp, Result};
use crate::stream::{self, PendingAttach};
use crate::Ctx;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request};
use moat_engine::container_filter::ContainerFilter;
use moat_engine::events::EventFilter;
use moat_engine::filter::Filters;
use moat_engine::view::{ContainerInspect, ContainerSummary, ImageInspect, ImageSummary, NetworkInspect};
use moat_engine::{AttachOptions, Engine, EngineError, LogOptions, StopOptions, WaitCondition, WinSize};
use serde_json::json as j;
use std::convert::Infallible;
use std::sync::Arc;

/// Runs `f` with an engine of its own on the blocking pool.
async fn engine<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&mut Engine) -> std::result::Result<T, EngineError> + Send + 'static,
) -> Result<T> {
    let ctx = ctx.clone();
    match tokio::task::spawn_blocking(move || ctx.with_engine(f)).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError { status: 500, message: format!("the request failed: {e}") }),
    }
}

pub(crate) fn filters(q: &Query) -> Result<Filters> {
    match q.get("filters").filter(|f| !f.is_empty()) {
        Some(f) => Filters::from_json(f).map_err(ApiError::from),
        None => Ok(Filters::default()),
    }
}

/// Entry point of every request.
pub(crate) async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> std::result::Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let t0 = std::time::Instant::now();
    let r = route(ctx, req).await;
    let resp = match r {
        Ok(resp) => resp,
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!("{method} {path}: {}", e.message);
            }
            error(&e)
        }
    };
    // an access log at MOAT_LOG=debug (streams: the time to their headers)
    tracing::debug!(us = t0.elapsed().as_micros() as u64, status = resp.status().as_u16(), "{method} {path}");
    Ok(resp)
}

async fn route(ctx: Arc<Ctx>, mut req: Request<Incoming>) -> Result<Resp> {
    let full_path = req.uri().path().to_string();
    let (_, path) = http::strip_version(&full_path)?;
    let q = Query::parse(req.uri().query());
    let m = req.method().clone();
    // segments decoded: names may hold spaces (`docker network create "my net"`)
    let decoded: Vec<String> = path.trim_matches('/').split('/').map(http::path_decode).collect();
    let seg: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let upgrade = req.headers().get("upgrade").is_some();
    match (&m, seg.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => {
            let mut r = http::text(200, if m == Method::HEAD { "" } else { "OK" });
            r.headers_mut().insert("Cache-Control", hyper::header::HeaderValue::from_static("no-cache, no-store"));
            Ok(r)
        }
        (&Method::GET, ["version"]) => Ok(json(200, &engine(&ctx, |e| Ok(e.version())).await?)),
        (&Method::GET, ["info"]) => Ok(json(200, &engine(&ctx, |e| e.info()).await?)),
        (&Method::GET, ["events"]) => events(&ctx, &q).await,
        (&Method::GET, ["system", "df"]) => Ok(json(200, &engine(&ctx, |e| e.system_df()).await?)),

        // containers
        (&Method::GET, ["containers", "json"]) => {
            let f = ContainerFilter::new(filters(&q)?)?;
            let all = q.bool("all", false)?;
            let limit: Option<usize> = q.num("limit")?.filter(|n: &i64| *n > 0).map(|n| n as usize);
            let list = engine(&ctx, move |e| {
                let mut cs = e.containers(all || limit.is_some(), &f)?;
                if let Some(n) = limit {
                    cs.truncate(n);
                }
                Ok(cs.iter().map(|c| ContainerSummary::of(e, c)).collect::<Vec<_>>())
            })
            .await?;
            Ok(json(200, &list))
        }
        (&Method::POST, ["containers", "create"]) => {
            let body = ctx.read_body(req.into_body()).await?;
            let v: serde_json::Value = http::parse_json(&body)?;
            let req = moat_engine::create_body::CreateBody::from_json(v)?.into_request(q.get("name"), None)?;
            let (id, warnings) = engine(&ctx, move |e| {
                let warnings = moat_engine::validate::warnings(&req.config);
                Ok((e.create(req)?.id().to_string(), warnings))
            })
            .await?;
            Ok(json(201, &j!({ "Id": id, "Warnings": warnings })))
        }
        (&Method::POST, ["containers", "prune"]) => {
            let f = ContainerFilter::new(filters(&q)?)?;
            Ok(json(200, &engine(&ctx, move |e| e.prune(&f)).await?))
        }
        (&Method::GET, ["containers", id, "json"]) => {
            let id = id.to_string();
            let size = q.bool("size", false)?;
            let v = engine(&ctx, move |e| {
                let c = e.get(&id)?;
                let v = ContainerInspect::of(e, &c);
                Ok(if size { v.with_size(e, &c) } else { v })
            })
            .await?;
            Ok(json(200, &v))
        }
        (&Method::POST, ["containers", id, "start"]) => start(&ctx, id).await,
        (&Method::POST, ["containers", id, verb @ ("stop" | "restart")]) => {
            let id = id.to_string();
            let o = StopOptions {
                timeout: q.num("t")?,
                signal: q.get("signal").filter(|s| !s.is_empty()).map(moat_engine::flags::signal).transpose()?,
            };
            let restart = *verb == "restart";
            let changed = engine(&ctx, move |e| {
                if restart {
                    return e.restart(&id, o).map(|_| true);
                }
                Ok(matches!(e.stop_if_running(&id, o)?, moat_engine::Stopped::Now(_)))
            })
            .await?;
            Ok(empty(if changed { 204 } else { 304 }))
        }
        (&Method::POST, ["containers", id, "kill"]) => {
            let id = id.to_string();
            let sig = moat_engine::flags::signal(q.get("signal").filter(|s| !s.is_empty()).unwrap_or("KILL"))?;
            engine(&ctx, move |e| e.kill(&id, sig)).await?;
            Ok(empty(204))
        }
        (&Method::POST, ["containers", id, verb @ ("pause" | "unpause")]) => {
            let (id, pause) = (id.to_string(), *verb == "pause");
            engine(&ctx, move |e| e.pause(&id, pause)).await?;
            Ok(empty(204))
        }
        (&Method::POST, ["containers", id, "rename"]) => {
            let (id, name) = (id.to_string(), q.get("name").unwrap_or("").to_string());
            engine(&ctx, move |e| e.rename(&id, &name)).await?;
            Ok(empty(204))
        }
        (&Method::POST, ["containers", id, "wait"]) => wait(&ctx, id, &q).await,
        (&Method::POST, ["containers", id, "update"]) => {
            let id = id.to_string();
            let body = ctx.read_body(req.into_body()).await?;
            let v: serde_json::Value = http::parse_json(&body)?;
            let u = update_request(&v)?;
            let (_, warnings) = engine(&ctx, move |e| e.update(&id, &u)).await?;
            Ok(json(200, &j!({ "Warnings": warnings })))
        }
        (&Method::POST, ["containers", id, "resize"]) => {
            let id = id.to_string();
            let ws = winsize(&q)?;
            engine(&ctx, move |e| e.resize(&id, ws)).await?;
            Ok(empty(200))
        }
        (&Method::GET, ["containers", id, "logs"]) => logs(&ctx, id, &q).await,
        (&Method::GET, ["containers", id, "stats"]) => stats(&ctx, id, &q).await,
        (&Method::GET, ["containers", id, "top"]) => {
            let id = id.to_string();
            let args: Vec<String> = q.get("ps_args").unwrap_or("").split_whitespace().map(str::to_string).collect();
            let (titles, rows) = engine(&ctx, move |e| e.top_table(&id, &args)).await?;
            Ok(json(200, &j!({ "Titles": titles, "Processes": rows })))
        }
        // `docker rm --link /parent/alias`: the link, not a container
        (&Method::DELETE, ["containers", rest @ ..]) if q.bool("link", false)? => {
            let name = rest.iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("/");
            engine(&ctx, move |e| e.remove_link(&name)).await?;
            Ok(empty(204))
        }
        (&Method::DELETE, ["containers", id]) => {
            let id = id.to_string();
            let (force, vols) = (q.bool("force", false)?, q.bool("v", false)?);
            engine(&ctx, move |e| e.remove(&id, force, vols)).await?;
            Ok(empty(204))
        }
        (&Method::POST, ["containers", id, "attach"]) => {
            let id = id.to_string();
            let opts = AttachOptions {
                stdin: q.bool("stdin", false)?,
                // the container's StdinOnce (looked up with it by `attach`)
                stdin_once: false,
                skip_stdout: !q.bool("stdout", false)?,
                skip_stderr: !q.bool("stderr", false)?,
            };
            // dockerd's defaults: neither the log so far nor the live streams
            let replay = Replay { logs: q.bool("logs", false)?, stream: q.bool("stream", false)? };
            let escape = opts.stdin.then(|| detach_keys(q.get("detachKeys"))).transpose()?;
            attach(&ctx, &mut req, id, opts, escape, replay, upgrade).await
        }
        (&Method::GET | &Method::HEAD, ["containers", id, "archive"]) => {
            archive_get(&ctx, id, &q, m == Method::HEAD).await
        }
        (&Method::PUT, ["containers", id, "archive"]) => {
            let id = id.to_string();
            let path =
                q.get("path").filter(|p| !p.is_empty()).ok_or_else(|| ApiError::bad("path is required"))?.to_string();
            let keep = q.bool("copyUIDGID", false)?;
            let file = spool(&ctx, req.into_body()).await?;
            engine(&ctx, move |e| {
                let f = std::fs::File::open(file.path()).map_err(EngineError::io("read the spooled archive"))?;
                e.archive_put(&id, &path, f, keep)
            })
            .await?;
            Ok(empty(200))
        }
        (&Method::GET, ["containers", id, "changes"]) => {
            let id = id.to_string();
            Ok(json(200, &engine(&ctx, move |e| e.diff(&id)).await?))
        }
        (&Method::GET, ["containers", id, "export"]) => {
            let id = id.to_string();
            let key = id.clone();
            engine(&ctx, move |e| e.get(&key).map(|_| ())).await?;
            let (tx, resp) = http::streaming(200, "application/x-tar");
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || {
                if let Ok(mut e) = ctx.open() {
                    let _ = e.export(&id, chan_writer(tx));
                }
            });
            Ok(resp)
        }
        (&Method::POST, ["containers", id, "exec"]) => {
            let id = id.to_string();
            let body = ctx.read_body(req.into_body()).await?;
            let v: serde_json::Value = http::parse_json(&body)?;
            let spec = exec_spec(&v)?;
            let xid = engine(&ctx, move |e| e.exec_create(&id, spec)).await?;
            Ok(json(201, &j!({ "Id": xid })))
        }
        (&Method::POST, ["exec", id, "start"]) => exec_start(&ctx, req, id.to_string(), upgrade).await,
        (&Method::POST, ["exec", id, "resize"]) => {
            let id = id.to_string();
            let ws = winsize(&q)?;
            engine(&ctx, move |e| e.exec_resize(&id, ws)).await?;
            Ok(empty(200))
        }
        (&Method::GET, ["exec", id, "json"]) => {
            let id = id.to_string();
            let v = engine(&ctx, move |e| e.exec_inspect(&id).map(|r| moat_engine::view::ExecInspect::of(&r))).await?;
            Ok(json(200, &v))
        }

        // images
        (&Method::GET, ["images", "json"]) => {
            let mut f = moat_engine::images::ImageFilter::new(filters(&q)?)?;
            f.all = q.bool("all", false)?;
            let list = engine(&ctx, move |e| {
                let imgs = e.images_matching(&f)?;
                imgs.iter().map(|img| ImageSummary::of_stored(e, img)).collect::<std::result::Result<Vec<_>, _>>()
            })
            .await?;
            Ok(json(200, &list))
        }
        (&Method::POST, ["auth"]) => {
            let body = ctx.read_body(req.into_body()).await?;
            let v: serde_json::Value = http::parse_json(&body)?;
            let (user, pw) =
                (v["username"].as_str().unwrap_or("").to_string(), v["password"].as_str().unwrap_or("").to_string());
            let server = v["serveraddress"].as_str().filter(|s| !s.is_empty()).map(str::to_string);
            engine(&ctx, move |e| e.login(server.as_deref(), &user, &pw)).await?;
            Ok(json(200, &j!({ "Status": "Login Succeeded", "IdentityToken": "" })))
        }
        (&Method::POST, ["images", rest @ .., "push"]) if !rest.is_empty() => {
            let reference = q.with_tag(&rest.join("/"));
            let o = moat_engine::registry::PullOptions { auth: registry_auth(&req)?, ..Default::default() };
            progress_stream(&ctx, true, o, move |e, o, p| e.push(&reference, o, p).map(|_| ())).await
        }
        (&Method::GET, ["images", "get"]) => {
            let names: Vec<String> = q.all("names").into_iter().map(str::to_string).collect();
            save(&ctx, names).await
        }
        (&Method::GET, ["images", rest @ .., "get"]) if !rest.is_empty() => save(&ctx, vec![rest.join("/")]).await,
        (&Method::GET, ["images", rest @ .., "history"]) if !rest.is_empty() => {
            let name = rest.join("/");
            Ok(json(200, &engine(&ctx, move |e| e.image_history(&name)).await?))
        }
        (&Method::POST, ["images", "load"]) => {
            // `quiet` only silences progress, which moat's load does not send
            q.bool("quiet", false)?;
            load(&ctx, req).await
        }
        (&Method::POST, ["images", "create"]) if q.get("fromSrc").is_some() => import(&ctx, &q, req).await,
        (&Method::POST, ["images", "create"]) => pull(&ctx, &q, registry_auth(&req)?).await,
        (&Method::POST, ["images", "prune"]) => {
            let dangling_only = filters(&q)?.get("dangling").first().map(|d| d != "false" && d != "0").unwrap_or(true);
            let r = engine(&ctx, move |e| e.prune_images(!dangling_only)).await?;
            let deleted: Vec<_> = r.deleted.iter().map(|id| j!({ "Deleted": id.to_string() })).collect();
            Ok(json(200, &j!({ "ImagesDeleted": deleted, "SpaceReclaimed": r.reclaimed })))
        }
        (&Method::GET, ["images", rest @ .., "json"]) if !rest.is_empty() => {
            let name = rest.join("/");
            let v = engine(&ctx, move |e| {
                let img = e.image(&name)?;
                Ok(ImageInspect::of_stored(e, &img))
            })
            .await?;
            Ok(json(200, &v))
        }
        (&Method::POST, ["commit"]) => {
            let body = ctx.read_body(req.into_body()).await?;
            let conf: serde_json::Value = http::parse_json(&body)?;
            if !(conf.is_null() || conf.as_object().is_some_and(|o| o.is_empty())) {
                return Err(ApiError::bad(
                    "commit with a container config in the body is not supported: pass Dockerfile instructions in `changes`",
                ));
            }
            let container = q.get("container").unwrap_or("").to_string();
            let repo = q.get("repo").unwrap_or("");
            let reference = (!repo.is_empty()).then(|| q.with_tag(repo));
            let creq = moat_engine::changes::CommitRequest {
                reference,
                comment: q.get("comment").unwrap_or("").to_string(),
                author: q.get("author").unwrap_or("").to_string(),
                changes: q.all("changes").into_iter().filter(|c| !c.is_empty()).map(str::to_string).collect(),
                pause: q.bool("pause", true)?,
            };
            let id = engine(&ctx, move |e| e.commit(&container, creq)).await?;
            Ok(json(201, &j!({ "Id": id.to_string() })))
        }
        (&Method::POST, ["images", rest @ .., "tag"]) if !rest.is_empty() => {
            let name = rest.join("/");
            let target = q.with_tag(q.get("repo").unwrap_or(""));
            engine(&ctx, move |e| e.tag_image(&name, &target)).await?;
            Ok(empty(201))
        }
        (&Method::DELETE, ["images", rest @ ..]) if !rest.is_empty() => {
            let name = rest.join("/");
            let force = q.bool("force", false)?;
            let items = engine(&ctx, move |e| e.remove_image(&name, force)).await?;
            Ok(json(200, &items))
        }

        // networks are switches
        (&Method::GET, ["networks"]) => {
            let f = moat_engine::network::SwitchFilter::new(filters(&q)?)?;
            let v = engine(&ctx, move |e| {
                let all = e.list()?;
                Ok(e.switches_matching(&f)?.iter().map(|s| NetworkInspect::of(s, &all)).collect::<Vec<_>>())
            })
            .await?;
            Ok(json(200, &v))
        }
        (&Method::POST, ["networks", "create"]) => {
            let body = ctx.read_body(req.into_body()).await?;
            let v: serde_json::Value = http::parse_json(&body)?;
            let req = switch_request(&v)?;
            let id = engine(&ctx, move |e| e.create_switch(&req).map(|s| s.id)).await?;
            Ok(json(201, &j!({ "Id": id, "Warning": "" })))
        }
        (&Method::POST, ["networks", "prune"]) => {
            let gone = engine(&ctx, |e| e.prune_switches()).await?;
            Ok(json(200, &j!({ "NetworksDeleted": gone })))
        }
        (&Method::GET, ["networks", id]) => {
            let id = id.to_string();
            Ok(json(200, &engine(&ctx, move |e| e.inspect_switch(&id)).await?))
        }
        (&Method::DELETE, ["networks", id]) => {
            let id = id.to_string();
            engine(&ctx, move |e| e.remove_switch(&id).map(|_| ())).await?;
            Ok(empty(204))
        }
        (&Method::POST, ["networks", id, verb @ ("connect" | "disconnect")]) => {
            let (id, connect) = (id.to_string(), *verb == "connect");
            let body = ctx.read_body(req.into_body()).await?;
            let v: serde_json::Value = http::parse_json(&body)?;
            let container = v["Container"].as_str().unwrap_or("").to_string();
            let aliases: Vec<String> = v
                .pointer("/EndpointConfig/Aliases")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            for (k, what) in [("Links", "links"), ("DriverOpts", "driver options")] {
                if v.pointer(&format!("/EndpointConfig/{k}"))
                    .is_some_and(|a| !a.is_null() && a != &j!([]) && a != &j!({}))
                {
                    return Err(ApiError::bad(format!("EndpointConfig.{k}: {what} are not supported yet")));
                }
            }
            let mac = v.pointer("/EndpointConfig/MacAddress").and_then(|m| m.as_str()).map(str::to_string);
            let ip = match v
                .pointer("/EndpointConfig/IPAMConfig/IPv4Address")
                .and_then(|x| x.as_str())
                .filter(|s| !s.is_empty())
            {
                Some(s) => Some(s.parse().map_err(|_| ApiError::bad(format!("invalid IPv4Address {s:?}")))?),
                None => None,
            };
            engine(&ctx, move |e| {
                if connect {
                    e.connect_switch_as(&id, &container, ip, mac.as_deref(), &aliases)
                } else {
                    e.disconnect_switch(&id, &container)
                }
            })
            .await?;
            Ok(empty(200))
        }

        // volumes
        (&Method::GET, ["volumes"]) => {
            let f = moat_engine::volumes::VolumeFilter::new(filters(&q)?)?;
            let v =
                engine(&ctx, move |e| Ok(e.volumes(&f)?.into_iter().map(|(v, _)| v.view(None)).collect::<Vec<_>>()))
                    .await?;
            Ok(json(200, &j!({ "Volumes": v, "Warnings": [] })))
        }
        (&Method::POST, ["volumes", "create"]) => {
            let body = ctx.read_body(req.into_body()).await?;
            let v: serde_json::Value = http::parse_json(&body)?;
            let map = |k: &str| -> Result<std::collections::BTreeMap<String, String>> {
                match v.get(k) {
                    None | Some(serde_json::Value::Null) => Ok(Default::default()),
                    Some(x) => serde_json::from_value(x.clone())
                        .map_err(|_| ApiError::bad(format!("{k}: expected an object of strings"))),
                }
            };
            let req = moat_engine::volumes::VolumeCreate {
                name: v["Name"].as_str().filter(|n| !n.is_empty()).map(str::to_string),
                driver: v["Driver"].as_str().filter(|n| !n.is_empty()).map(str::to_string),
                labels: map("Labels")?,
                options: map("DriverOpts")?,
            };
            let view = engine(&ctx, move |e| e.volume_create(req).map(|v| v.view(None))).await?;
            Ok(json(201, &view))
        }
        (&Method::POST, ["volumes", "prune"]) => {
            let mut f = filters(&q)?;
            // Docker ≥ 1.42 prunes anonymous volumes unless `all=true` is a filter
            let all = f.get("all").first().is_some_and(|a| a == "true" || a == "1");
            f.remove("all");
            let f = moat_engine::volumes::VolumeFilter::new(f)?;
            let r = engine(&ctx, move |e| e.volume_prune(all, &f)).await?;
            Ok(json(200, &j!({ "VolumesDeleted": r.deleted, "SpaceReclaimed": r.reclaimed })))
        }
        (&Method::GET, ["volumes", name]) => {
            let name = name.to_string();
            Ok(json(200, &engine(&ctx, move |e| e.volume(&name).map(|v| v.view(None))).await?))
        }
        (&Method::DELETE, ["volumes", name]) => {
            let name = name.to_string();
            let force = q.bool("force", false)?;
            engine(&ctx, move |e| e.volume_remove(&name, force)).await?;
            Ok(empty(204))
        }

        // what a dockerd that is not in a swarm answers (docker-py's test
        // teardowns leave a swarm with force and expect this refusal)
        (_, ["swarm", "leave"]) => Err(ApiError { status: 503, message: NOT_IN_SWARM.into() }),
        (_, ["swarm", "init" | "join"]) => {
            Err(ApiError { status: 503, message: "moat does not run swarm mode: it is a single-node engine".into() })
        }
        (_, ["swarm" | "nodes" | "services" | "tasks" | "secrets" | "configs", ..]) => {
            Err(ApiError { status: 503, message: NOT_A_MANAGER.into() })
        }
        // no plugins: an empty list, and no plugin of any name
        (&Method::GET, ["distribution", rest @ .., "json"]) if !rest.is_empty() => {
            let reference = rest.join("/");
            let o = moat_engine::registry::PullOptions { auth: registry_auth(&req)?, ..Default::default() };
            Ok(json(200, &engine(&ctx, move |e| e.distribution_inspect(&reference, &o)).await?))
        }
        (&Method::GET, ["plugins"]) => Ok(json(200, &Vec::<serde_json::Value>::new())),
        (_, ["plugins", name, ..]) => Err(ApiError::not_found(format!("plugin \"{name}\" not found"))),
        (&Method::POST, ["build"]) => build(&ctx, &q, req).await,
        (&Method::POST, ["build", "prune"]) => {
            let r = engine(&ctx, |e| e.build_prune()).await?;
            let caches_deleted = r.images.iter().map(|i| i.to_string()).collect();
            Ok(json(200, &moat_engine::view::BuildPrune { caches_deleted, space_reclaimed: r.reclaimed }))
        }

        _ => Err(ApiError::not_found(format!("page not found: {m} {path}"))),
    }
}

/// dockerd's refusal of a swarm call on a node that is not in a swarm.
const NOT_A_MANAGER: &str =
    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";
/// dockerd's answer to leaving a swarm it is not part of.
const NOT_IN_SWARM: &str = "This node is not part of a swarm";

pub(crate) fn update_request(v: &serde_json::Value) -> Result<moat_engine::UpdateRequest> {
    let int = |k: &str| -> Result<Option<i64>> {
        match v.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(x) => x
                .as_i64()
                .map(|n| Some(n).filter(|n| *n != 0))
                .ok_or_else(|| ApiError::bad(format!("{k}: expected an integer"))),
        }
    };
    // what update cannot change is refused by name, never dropped
    let refused = moat_engine::create_body::REFUSED.iter().copied().chain([
        ("CpusetCpus", "a container's cpuset is fixed at create: create it again to change it"),
        ("CpusetMems", "a container's cpuset is fixed at create: create it again to change it"),
    ]);
    for (k, why) in refused {
        if let Some(x) = v.get(k).filter(|x| !moat_engine::create_body::is_zero(x)) {
            return Err(ApiError::bad(format!("{k} {x}: {why}")));
        }
    }
    if let Some(x) = v.get("MemorySwappiness").filter(|x| !x.is_null() && x.as_i64() != Some(-1)) {
        return Err(ApiError::bad(format!("MemorySwappiness {x}: a container's swappiness is fixed at create")));
    }
    if v.get("OomKillDisable").and_then(|x| x.as_bool()) == Some(true) {
        return Err(ApiError::bad("OomKillDisable: fixed at create"));
    }
    let restart = crate::create::restart_policy(v)?;
    let isolation = match v["Isolation"].as_str().filter(|i| !i.is_empty()) {
        Some(i) => moat_engine::flags::isolation(i)?,
        None => None,
    };
    Ok(moat_engine::UpdateRequest {
        memory: int("Memory")?,
        memory_swap: int("MemorySwap")?,
        // --cpu-quota/--cpu-period: the CFS limit of quota/period CPUs, as at create
        cpus: match (int("NanoCpus")?, int("CpuQuota")?.filter(|q| *q > 0)) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad("conflicting options: NanoCpus and CpuQuota cannot both be set"))
            }
            (Some(n), None) => Some(n as f64 / 1e9),
            (None, Some(q)) => Some(q as f64 / int("CpuPeriod")?.unwrap_or(100_000).clamp(1000, 1_000_000) as f64),
            (None, None) => None,
        },
        cpu_shares: int("CpuShares")?.map(|n| n as u64),
        pids: int("PidsLimit")?,
        memory_reservation: int("MemoryReservation")?,
        restart,
        isolation,
        restart_for_isolation: false,
    })
}

/// Docker's network create body as a [`moat_engine::network::SwitchRequest`]
/// (strings parsed into addresses; the engine checks the rest).
pub(crate) fn switch_request(v: &serde_json::Value) -> Result<moat_engine::network::SwitchRequest> {
    let addr = |what: &str, s: &str| -> Result<std::net::IpAddr> {
        s.parse().map_err(|_| ApiError::bad(format!("invalid {what} {s:?}: an IP address expected")))
    };
    let map = |x: Option<&serde_json::Value>, what: &str| -> Result<std::collections::BTreeMap<String, String>> {
        match x {
            None | Some(serde_json::Value::Null) => Ok(Default::default()),
            Some(l) => serde_json::from_value(l.clone())
                .map_err(|_| ApiError::bad(format!("{what}: expected an object of strings"))),
        }
    };
    let ipv6 = v["EnableIPv6"].as_bool() == Some(true);
    let mut req = moat_engine::network::SwitchRequest {
        name: v["Name"].as_str().unwrap_or("").to_string(),
        driver: v["Driver"].as_str().unwrap_or("").to_string(),
        ipam_driver: v.pointer("/IPAM/Driver").and_then(|d| d.as_str()).unwrap_or("").to_string(),
        ipam_options: map(v.pointer("/IPAM/Options"), "IPAM Options")?,
        options: map(v.get("Options"), "Options")?.into_iter().map(|(k, x)| format!("{k}={x}")).collect(),
        ipv6,
        internal: v["Internal"].as_bool().unwrap_or(false),
        labels: map(v.get("Labels"), "Labels")?,
        ..Default::default()
    };
    // one IPv4 and (dual-stack) one IPv6 subnet
    for ipam in v.pointer("/IPAM/Config").and_then(|c| c.as_array()).into_iter().flatten() {
        let text = |k: &str| ipam[k].as_str().filter(|s| !s.is_empty());
        let subnet: Option<ipnet::IpNet> = text("Subnet")
            .map(|s| s.parse().map_err(|_| ApiError::bad(format!("invalid subnet {s:?}: CIDR expected"))))
            .transpose()?;
        let gateway = text("Gateway").map(|g| addr("gateway", g)).transpose()?;
        match (subnet, gateway) {
            (Some(ipnet::IpNet::V6(s6)), g) => {
                if !ipv6 {
                    return Err(ApiError::bad(format!("IPv6 subnet {s6}: EnableIPv6 is not set")));
                }
                if req.subnet6.replace(s6).is_some() {
                    return Err(ApiError::bad("a switch has one IPv6 subnet: IPAM lists more than one"));
                }
                if text("IPRange").is_some()
                    || ipam.get("AuxiliaryAddresses").is_some_and(|a| a.as_object().is_some_and(|o| !o.is_empty()))
                {
                    return Err(ApiError::bad("IPRange and AuxiliaryAddresses apply to the IPv4 subnet only"));
                }
                req.gateway6 = match g {
                    Some(std::net::IpAddr::V6(g)) => Some(g),
                    Some(g) => return Err(ApiError::bad(format!("gateway {g} is not an address of {s6}"))),
                    None => None,
                };
            }
            (s4, g) => {
                let s4 = match s4 {
                    Some(ipnet::IpNet::V4(s)) => Some(s),
                    _ => None,
                };
                if req.subnet.is_some() && s4.is_some() {
                    return Err(ApiError::bad("a switch has one IPv4 subnet: IPAM lists more than one"));
                }
                req.subnet = req.subnet.or(s4);
                req.gateway = match g {
                    Some(std::net::IpAddr::V4(g)) => Some(g),
                    Some(g) => return Err(ApiError::bad(format!("gateway {g} is not an IPv4 address"))),
                    None => req.gateway,
                };
                if let Some(r) = text("IPRange") {
                    req.ip_range = Some(
                        r.parse().map_err(|_| ApiError::bad(format!("invalid IP range {r:?}: IPv4 CIDR expected")))?,
                    );
                }
                for (k, a) in map(ipam.get("AuxiliaryAddresses"), "IPAM AuxiliaryAddresses")? {
                    match addr("auxiliary address", &a)? {
                        std::net::IpAddr::V4(a) => {
                            req.aux_addresses.insert(k, a);
                        }
                        a => return Err(ApiError::bad(format!("auxiliary address {k}={a}: IPv4 only"))),
                    }
                }
            }
        }
    }
    Ok(req)
}

pub(crate) fn winsize(q: &Query) -> Result<WinSize> {
    let h: u16 = q.num("h")?.unwrap_or(0);
    let w: u16 = q.num("w")?.unwrap_or(0);
    if h == 0 || w == 0 {
        return Err(ApiError::bad("resize needs h and w greater than 0"));
    }
    Ok(WinSize { rows: h, cols: w })
}

/// The escape proxy for `keys` as Docker gives them (`ctrl-p,ctrl-q` when
/// none), or a 400 that says what is wrong with them.
fn detach_keys(keys: Option<&str>) -> Result<stream::Escape> {
    let keys = keys.filter(|k| !k.is_empty()).unwrap_or("ctrl-p,ctrl-q");
    Ok(stream::Escape::new(moat_engine::flags::detach_keys(keys)?))
}

pub(crate) fn exec_spec(v: &serde_json::Value) -> Result<moat_engine::ExecSpec> {
    let strs = |k: &str| crate::create::strings(v.get(k).unwrap_or(&serde_json::Value::Null), k);
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|x| !x.is_empty()).map(str::to_string);
    let b = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    let size = crate::create::console_size(v);
    Ok(moat_engine::ExecSpec {
        args: strs("Cmd")?,
        env: strs("Env")?,
        workdir: s("WorkingDir"),
        user: s("User"),
        tty: b("Tty"),
        stdin: b("AttachStdin"),
        privileged: b("Privileged"),
        size,
        // Go's JSON decoding ignores case: docker-py sends `detachKeys`
        detach_keys: s("DetachKeys").or_else(|| s("detachKeys")).unwrap_or_default(),
        ..Default::default()
    })
}

/// `start`: the shim's first session goes to an attach that waits for it.
async fn start(ctx: &Arc<Ctx>, id: &str) -> Result<Resp> {
    let id = id.to_string();
    let c2 = ctx.clone();
    let started = engine(ctx, move |e| {
        let mut waiting = Vec::new();
        // claim the waiting attaches first: none of them may attach on its own meanwhile
        let claim = |c: &moat_engine::Container| {
            waiting = c2.pending.lock().ok().and_then(|mut p| p.remove(c.id())).unwrap_or_default();
            for w in &waiting {
                w.claimed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        };
        let (c, session) = match e.start_unless_running(&id, claim)? {
            moat_engine::Started::Now(c, s) => (c, s),
            moat_engine::Started::AlreadyRunning(_) => return Ok(false),
        };
        let cid = c.id().to_string();
        let mut first = Some(session);
        for w in waiting {
            match first.take() {
                Some(s) => {
                    if let Err(std::sync::mpsc::SendError(s)) = w.session.send(s) {
                        first = Some(s);
                    }
                }
                // further attaches attach the usual way
                None => {
                    if let Ok((_, s)) = e.attach(&cid, w.opts) {
                        let _ = w.session.send(s);
                    }
                }
            }
        }
        Ok(true)
    })
    .await?;
    Ok(empty(if started { 204 } else { 304 }))
}

/// What an attach sends besides the live streams' options.
#[derive(Clone, Copy)]
struct Replay {
    /// The container's log so far first.
    logs: bool,
    /// Then the live streams (without: the connection ends after the log).
    stream: bool,
}

async fn attach(
    ctx: &Arc<Ctx>,
    req: &mut Request<Incoming>,
    id: String,
    mut opts: AttachOptions,
    escape: Option<stream::Escape>,
    replay: Replay,
    upgrade: bool,
) -> Result<Resp> {
    let key = id.clone();
    let (cid, tty, running, once) = engine(ctx, move |e| {
        let c = e.get(&key)?;
        Ok((c.id().to_string(), c.config.tty, c.is_running(), c.config.stdin_once))
    })
    .await?;
    if !upgrade {
        return Err(ApiError::bad("attach needs a connection upgrade (Upgrade: tcp)"));
    }
    // the end of the client's stdin closes the container's only for a
    // container created with StdinOnce (docker run -i), as dockerd does
    opts.stdin_once = once;
    let on = hyper::upgrade::on(req);
    let ctx = ctx.clone();
    if !replay.stream {
        // the log (if asked for) and the end, whatever the container does
        tokio::spawn(async move {
            let Some(h) = stream::hijack(on).await else { return };
            let _ = tokio::task::spawn_blocking(move || {
                if replay.logs {
                    stream::replay_logs_opening(&ctx, &cid, &opts, tty, &h);
                }
                let _ = h.sock.shutdown(std::net::Shutdown::Both);
            })
            .await;
        });
    } else if running {
        tokio::spawn(async move {
            let Some(h) = stream::hijack(on).await else { return };
            let _ = tokio::task::spawn_blocking(move || {
                let Ok(mut e) = ctx.open() else { return };
                if replay.logs {
                    stream::replay_logs(&mut e, &cid, &opts, tty, &h);
                }
                if let Ok((_, s)) = e.attach(&cid, opts) {
                    stream::relay_attached(s, h, escape)
                }
            })
            .await;
        });
    } else {
        // registered before the 101 goes out: the client's start may follow at once
        let (tx, rx) = std::sync::mpsc::channel();
        let claimed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Ok(mut p) = ctx.pending.lock() {
            p.entry(cid.clone()).or_default().push(PendingAttach { opts, session: tx, claimed: claimed.clone() });
        }
        tokio::spawn(async move {
            let Some(h) = stream::hijack(on).await else { return };
            let _ = tokio::task::spawn_blocking(move || {
                if replay.logs {
                    stream::replay_logs_opening(&ctx, &cid, &opts, tty, &h);
                }
                stream::pending_attach(ctx, cid, opts, escape, rx, claimed, h)
            })
            .await;
        });
    }
    Ok(http::upgraded(stream::content_type(tty)))
}

async fn exec_start(ctx: &Arc<Ctx>, req: Request<Incoming>, id: String, upgrade: bool) -> Result<Resp> {
    let (parts, body) = req.into_parts();
    let body = ctx.read_body(body).await?;
    let v: serde_json::Value = http::parse_json(&body)?;
    let detach = v.get("Detach").and_then(|d| d.as_bool()).unwrap_or(false);
    // dockerd frames the output by the start request's Tty, whatever the
    // exec was created with (a tty exec started without Tty is multiplexed)
    let tty = v.get("Tty").and_then(|d| d.as_bool()).unwrap_or(false);
    let size = crate::create::console_size(&v);
    let key = id.clone();
    let (stdin, keys) = engine(ctx, move |e| e.exec_inspect(&key).map(|r| (r.spec.stdin, r.spec.detach_keys))).await?;
    let escape = stdin.then(|| detach_keys(Some(&keys))).transpose()?;
    if detach {
        engine(ctx, move |e| e.exec_start(&id, true, size).map(|_| ())).await?;
        return Ok(empty(200));
    }
    let ctx = ctx.clone();
    if upgrade {
        let req = Request::from_parts(parts, ());
        let on = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let Some(h) = stream::hijack(on).await else { return };
            let _ = tokio::task::spawn_blocking(move || {
                let Ok(mut e) = ctx.open() else { return };
                match e.exec_start(&id, false, size) {
                    Ok(s) => stream::relay(s, h, escape, tty),
                    Err(err) => {
                        // dockerd writes why on the session's stdout; the
                        // exit code (126) is the exec's, which the client
                        // inspects next
                        let mut sock = &h.sock;
                        let why = match err {
                            EngineError::Start { message, .. } => message,
                            e => e.to_string(),
                        };
                        let _ = std::io::Write::write_all(
                            &mut sock,
                            &stream::chunk(tty, stream::Stream::Stdout, format!("{why}\r\n").as_bytes()),
                        );
                    }
                }
            })
            .await;
        });
        return Ok(http::upgraded(stream::content_type(tty)));
    }
    let session = engine(&ctx, move |e| e.exec_start(&id, false, size)).await?;
    let (tx, resp) = http::streaming(200, stream::content_type(tty));
    tokio::task::spawn_blocking(move || stream::relay_to_body(session, tx, tty));
    Ok(resp)
}

/// `wait`: the headers at once (the CLI starts the container only then),
/// the status when the condition is met.
async fn wait(ctx: &Arc<Ctx>, id: &str, q: &Query) -> Result<Resp> {
    let condition: WaitCondition = match q.get("condition").filter(|c| !c.is_empty()) {
        Some(c) => c.parse()?,
        None => WaitCondition::NotRunning,
    };
    let id = id.to_string();
    let key = id.clone();
    let mark = engine(ctx, move |e| e.wait_mark(&key)).await?;
    let (tx, resp) = http::streaming(200, "application/json");
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let r = ctx.open().and_then(|mut e| e.wait_since(&id, condition, mark));
        let body = match r {
            Ok(w) => j!({ "StatusCode": w.code, "Error": w.error.map(|m| j!({ "Message": m })) }),
            Err(e) => j!({ "StatusCode": -1, "Error": { "Message": e.to_string() } }),
        };
        let _ = tx.blocking_send(Bytes::from(format!("{body}\n")));
    });
    Ok(resp)
}

async fn logs(ctx: &Arc<Ctx>, id: &str, q: &Query) -> Result<Resp> {
    let (out, err) = (q.bool("stdout", false)?, q.bool("stderr", false)?);
    if !out && !err {
        return Err(ApiError::bad("Bad parameters: you must choose at least one stream"));
    }
    let time = |k: &str| -> Result<Option<i64>> {
        match q.get(k).filter(|v| !v.is_empty() && *v != "0") {
            Some(v) => Ok(Some(moat_engine::filter::parse_time(v)?)),
            None => Ok(None),
        }
    };
    let o = LogOptions {
        follow: q.bool("follow", false)?,
        since: time("since")?,
        until: time("until")?,
        tail: match q.get("tail").filter(|t| !t.is_empty() && *t != "all") {
            Some(t) => Some(t.parse().map_err(|_| ApiError::bad(format!("invalid tail {t:?}")))?),
            None => None,
        },
        details: q.bool("details", false)?,
    };
    let timestamps = q.bool("timestamps", false)?;
    let id = id.to_string();
    let (tty, mut ls) = engine(ctx, move |e| e.logs(&id, &o).map(|(c, l)| (c.config.tty, l))).await?;
    let (tx, resp) = http::streaming(200, stream::content_type(tty));
    tokio::task::spawn_blocking(move || loop {
        // a follower whose client went away stops now, not at the next line
        if tx.is_closed() {
            return;
        }
        if !ls.ready(stream::CLIENT_CHECK) {
            continue;
        }
        let Ok(Some(r)) = ls.next_record() else { return };
        let is_err = r.stream == "stderr";
        if (is_err && !err) || (!is_err && !out) {
            continue;
        }
        let mut line = Vec::new();
        if timestamps {
            line.extend_from_slice(r.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true).as_bytes());
            line.push(b' ');
        }
        line.extend_from_slice(r.log.as_bytes());
        let s = if is_err { stream::Stream::Stderr } else { stream::Stream::Stdout };
        let chunk = stream::chunk(tty, s, &line);
        if tx.blocking_send(Bytes::from(chunk)).is_err() {
            return;
        }
    });
    Ok(resp)
}

/// `stats`: a sample a second (`stream=false`: one, with the previous
/// sample a second before it; `one-shot`: one without waiting).
async fn stats(ctx: &Arc<Ctx>, id: &str, q: &Query) -> Result<Resp> {
    use moat_engine::view::StatsResponse;
    let stream = q.bool("stream", true)?;
    let one_shot = q.bool("one-shot", false)?;
    let key = id.to_string();
    engine(ctx, move |e| e.get(&key).map(|_| ())).await?;
    let (tx, resp) = http::streaming(200, "application/json");
    let (ctx, id) = (ctx.clone(), id.to_string());
    tokio::task::spawn_blocking(move || {
        let Ok(mut e) = ctx.open() else { return };
        let mut prev: Option<(moat_engine::Stats, chrono::DateTime<chrono::Utc>)> = None;
        loop {
            let Ok(c) = e.get(&id) else { return };
            let Ok(Some(cur)) = e.stats(&c) else { return };
            let at = chrono::Utc::now();
            // a single sample carries the previous one: wait a second for it
            let withhold = !stream && !one_shot && prev.is_none();
            if !withhold {
                let v = StatsResponse::of(&c, &cur, at, prev.as_ref().map(|(s, t)| (s, *t)));
                let Ok(mut b) = serde_json::to_vec(&v) else { return };
                b.push(b'\n');
                if tx.blocking_send(Bytes::from(b)).is_err() || !stream {
                    return;
                }
            }
            prev = Some((cur, at));
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    Ok(resp)
}

async fn events(ctx: &Arc<Ctx>, q: &Query) -> Result<Resp> {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let t = |k: &str| -> Result<Option<i64>> {
        q.get(k).filter(|v| !v.is_empty()).map(moat_engine::filter::parse_time).transpose().map_err(ApiError::from)
    };
    let since = t("since")?.unwrap_or(now);
    let until = t("until")?;
    let f = EventFilter::new(filters(q)?, since)?;
    let (tx, resp) = http::streaming(200, "application/json");
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let Ok(mut e) = ctx.open() else { return };
        let _ = moat_engine::events::follow(e.images().store(), &f, until, |ev| {
            let Ok(mut b) = serde_json::to_vec(ev) else { return false };
            b.push(b'\n');
            tx.blocking_send(Bytes::from(b)).is_ok()
        });
    });
    Ok(resp)
}

/// Writes a request body to a file in the root's scratch space.
async fn spool(ctx: &Arc<Ctx>, mut body: Incoming) -> Result<tempfile::NamedTempFile> {
    let failed = |e: std::io::Error| ApiError { status: 500, message: format!("cannot spool the request body: {e}") };
    let dir = ctx.engine.root.join("tmp");
    std::fs::create_dir_all(&dir).map_err(failed)?;
    let file = tempfile::NamedTempFile::new_in(&dir).map_err(failed)?;
    let mut w = std::io::BufWriter::new(file.reopen().map_err(failed)?);
    while let Some(frame) = http::next_frame(&mut body, ctx.limits.body_idle).await? {
        if let Ok(d) = frame.into_data() {
            std::io::Write::write_all(&mut w, &d).map_err(failed)?;
        }
    }
    std::io::Write::flush(&mut w).map_err(failed)?;
    Ok(file)
}

/// A blocking, buffered writer into a streamed response body.
fn chan_writer(tx: tokio::sync::mpsc::Sender<Bytes>) -> std::io::BufWriter<ChanWriter> {
    std::io::BufWriter::with_capacity(64 << 10, ChanWriter(tx))
}

/// A blocking writer into a streamed response body.
struct ChanWriter(tokio::sync::mpsc::Sender<Bytes>);

impl std::io::Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn path_stat_header(st: &moat_engine::cp::PathStat) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(st).unwrap_or_default())
}

/// `GET|HEAD /containers/{id}/archive?path=`: the stat header, and for GET the tar stream.
async fn archive_get(ctx: &Arc<Ctx>, id: &str, q: &Query, head: bool) -> Result<Resp> {
    let path = q.get("path").filter(|p| !p.is_empty()).ok_or_else(|| ApiError::bad("path is required"))?.to_string();
    let (id, p2) = (id.to_string(), path.clone());
    let key = id.clone();
    let st = engine(ctx, move |e| e.stat_path(&key, &p2)).await?;
    let stat = hyper::header::HeaderValue::from_str(&path_stat_header(&st))
        .map_err(|e| ApiError { status: 500, message: e.to_string() })?;
    if head {
        let mut r = empty(200);
        r.headers_mut().insert("X-Docker-Container-Path-Stat", stat);
        return Ok(r);
    }
    let (tx, mut resp) = http::streaming(200, "application/x-tar");
    resp.headers_mut().insert("X-Docker-Container-Path-Stat", stat);
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        if let Ok(mut e) = ctx.open() {
            if let Err(err) = e.archive_get(&id, &path, chan_writer(tx)) {
                tracing::warn!("archive of {path} in {id}: {err}");
            }
        }
    });
    Ok(resp)
}

/// `images/get`: a docker-archive of the images, streamed.
async fn save(ctx: &Arc<Ctx>, names: Vec<String>) -> Result<Resp> {
    if names.is_empty() {
        return Err(ApiError::bad("name at least one image (names=...)"));
    }
    let check = names.clone();
    engine(ctx, move |e| check.iter().try_for_each(|n| e.image(n).map(|_| ()))).await?;
    let (tx, resp) = http::streaming(200, "application/x-tar");
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        if let Ok(mut e) = ctx.open() {
            let _ = e.save_images(&names, chan_writer(tx));
        }
    });
    Ok(resp)
}

/// `load`: the archive is spooled to the root's scratch space first (the
/// engine reads it as a file), then loaded; the answer is Docker's stream.
/// `images/create?fromSrc=-|URL&repo=..&tag=..&message=..&changes=..`:
/// `import` of a rootfs tarball, from the request body (`-`) or a URL.
/// Answers Docker's JSON lines, the image ID as the last `status`.
async fn import(ctx: &Arc<Ctx>, q: &Query, req: Request<Incoming>) -> Result<Resp> {
    let src = q.get("fromSrc").unwrap_or_default().to_string();
    let name = match (q.get("repo").filter(|r| !r.is_empty()), q.get("tag").filter(|t| !t.is_empty())) {
        (Some(r), Some(t)) => Some(format!("{r}:{t}")),
        (Some(r), None) => Some(r.to_string()),
        (None, _) => None,
    };
    let message = q.get("message").unwrap_or_default().to_string();
    let changes: Vec<String> = q.all("changes").into_iter().map(str::to_string).collect();
    let id = if src == "-" {
        let file = spool(ctx, req.into_body()).await?;
        engine(ctx, move |e| {
            let f = std::fs::File::open(file.path()).map_err(EngineError::io("read the spooled archive"))?;
            e.import_image(f, name.as_deref(), &message, &changes)
        })
        .await?
    } else {
        engine(ctx, move |e| e.import_url(&src, name.as_deref(), &message, &changes)).await?
    };
    Ok(http::body(200, "application/json", format!("{}\n", j!({ "status": id.to_string() }))))
}

/// `images/load`: the archive spooled, then Docker's JSON lines streamed
/// (chunked, as docker-py reads them); a bad archive is the stream's
/// `errorDetail`, which docker-py raises as `ImageLoadError`.
async fn load(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Result<Resp> {
    spooled_stream(ctx, req, "archive", |e, f, send| {
        for line in e.load_images(f)?.iter().flat_map(|l| l.report()) {
            send(j!({ "stream": format!("{line}\n") }));
        }
        Ok(())
    })
    .await
}

/// The request's body spooled to a file, then `f` on a blocking thread with
/// that file and a sender of JSON lines; its error is the stream's last
/// line (`errorDetail`), as dockerd sends it.
async fn spooled_stream(
    ctx: &Arc<Ctx>,
    req: Request<Incoming>,
    what: &'static str,
    f: impl FnOnce(&mut Engine, std::fs::File, &(dyn Fn(serde_json::Value) + Sync)) -> std::result::Result<(), EngineError>
        + Send
        + 'static,
) -> Result<Resp> {
    let file = spool(ctx, req.into_body()).await?;
    let (tx, resp) = http::streaming(200, "application/json");
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let send = |v: serde_json::Value| {
            let _ = tx.blocking_send(Bytes::from(format!("{v}\n")));
        };
        let r = ctx.open().and_then(|mut e| {
            let spooled =
                std::fs::File::open(file.path()).map_err(EngineError::io(format!("read the spooled {what}")))?;
            f(&mut e, spooled, &send)
        });
        if let Err(e) = r {
            send(j!({ "errorDetail": { "message": e.to_string() }, "error": e.to_string() }));
        }
    });
    Ok(resp)
}

/// `POST /build`: the body is the context (a tar, maybe compressed); the
/// classic builder's JSON lines come back (`stream`, `aux` with the ID,
/// `errorDetail` last on a failure).
async fn build(ctx: &Arc<Ctx>, q: &Query, req: Request<Incoming>) -> Result<Resp> {
    use moat_engine::build::{BuildEvent, BuildRequest, ContextSource};
    if q.get("remote").is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::unsupported(
            "remote build contexts (git and URLs) are not supported: send the context as the request body",
        ));
    }
    let opt = |k: &str| q.get(k).filter(|v| !v.is_empty()).map(str::to_string);
    let map = |k: &str| -> Result<std::collections::BTreeMap<String, Option<String>>> {
        match opt(k) {
            Some(v) => serde_json::from_str(&v).map_err(|e| ApiError::bad(format!("invalid {k}: {e}"))),
            None => Ok(Default::default()),
        }
    };
    // the spooled body becomes the context once it is all here
    let mut build_req = BuildRequest::new(ContextSource::Tar(Box::new(std::io::empty())));
    build_req.build_args = map("buildargs")?;
    build_req.labels = map("labels")?.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
    build_req.isolation = match opt("isolation") {
        Some(i) => moat_engine::flags::isolation(&i)?,
        None => None,
    };
    build_req.tags = q.all("t").into_iter().map(str::to_string).collect();
    build_req.dockerfile = opt("dockerfile");
    build_req.target = opt("target");
    build_req.no_cache = q.bool("nocache", false)?;
    build_req.pull = q.bool("pull", false)?;
    build_req.remove = q.bool("rm", true)?;
    build_req.force_remove = q.bool("forcerm", false)?;
    build_req.network = opt("networkmode");
    build_req.platform = opt("platform");
    build_req.pull_options.auth = registry_auth(&req)?;
    let quiet = q.bool("q", false)?;
    spooled_stream(ctx, req, "context", move |e, f, send| {
        let mut req = build_req;
        req.context = ContextSource::Tar(Box::new(f));
        let progress = |ev: BuildEvent| {
            if quiet {
                return;
            }
            match ev {
                BuildEvent::Line(l) => send(j!({ "stream": l })),
                BuildEvent::Output(d) => send(j!({ "stream": String::from_utf8_lossy(&d) })),
            }
        };
        let b = e.build(req, &progress)?;
        send(j!({ "aux": { "ID": b.id.to_string() } }));
        if quiet {
            send(j!({ "stream": format!("{}\n", b.id) }));
        }
        Ok(())
    })
    .await
}

/// `images/create?fromImage=..&tag=..`: a pull, its progress as Docker's JSON lines.
/// `X-Registry-Auth`: base64url JSON `{username, password, identitytoken, auth}`
/// (`e30=`, an empty object, when the client has no login).
fn registry_auth(req: &Request<Incoming>) -> Result<Option<moat_engine::registry::RegistryAuth>> {
    use base64::Engine as _;
    let Some(h) = req.headers().get("x-registry-auth").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let raw = h.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(raw))
        .map_err(|_| ApiError::bad("X-Registry-Auth is not base64"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| ApiError::bad("X-Registry-Auth is not a JSON object"))?;
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let (mut user, mut password) = (s("username"), s("password"));
    if user.is_empty() && !s("auth").is_empty() {
        let pair = base64::engine::general_purpose::STANDARD
            .decode(s("auth"))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::bad("X-Registry-Auth: auth is not base64 user:password"))?;
        if let Some((u, p)) = pair.split_once(':') {
            (user, password) = (u.to_string(), p.to_string());
        }
    }
    let a = moat_engine::registry::RegistryAuth { user, password, identity_token: s("identitytoken") };
    Ok((!a.user.is_empty() || !a.identity_token.is_empty()).then_some(a))
}

async fn pull(ctx: &Arc<Ctx>, q: &Query, auth: Option<moat_engine::registry::RegistryAuth>) -> Result<Resp> {
    use moat_engine::registry::PullOptions;
    let from = q.get("fromImage").filter(|f| !f.is_empty()).ok_or_else(|| ApiError::bad("fromImage is required"))?;
    let reference = match q.get("tag").filter(|t| !t.is_empty()) {
        Some(t) if t.starts_with("sha256:") => format!("{from}@{t}"),
        Some(t) => format!("{from}:{t}"),
        None => from.to_string(),
    };
    let platform = q.get("platform").filter(|p| !p.is_empty()).map(str::to_string);
    let o = PullOptions { platform, auth, ..Default::default() };
    progress_stream(ctx, false, o, move |e, o, p| e.pull(&reference, o, p).map(|_| ())).await
}

type Progress<'a> = &'a (dyn Fn(moat_engine::registry::PullEvent) + Sync);

/// Runs a pull or push, streaming its progress as Docker's JSON lines (an
/// error as the last line, as Docker sends it).
async fn progress_stream(
    ctx: &Arc<Ctx>,
    push: bool,
    o: moat_engine::registry::PullOptions,
    f: impl FnOnce(&mut Engine, &moat_engine::registry::PullOptions, Progress) -> std::result::Result<(), EngineError>
        + Send
        + 'static,
) -> Result<Resp> {
    use moat_engine::registry::PullEvent;
    let (tx, resp) = http::streaming(200, "application/json");
    // the answer waits for the first line: an operation that fails before
    // it reported anything is an HTTP error (dockerd's rule), later errors
    // are the stream's last line
    let (first_tx, first) = tokio::sync::oneshot::channel::<Option<EngineError>>();
    let first_tx = std::sync::Mutex::new(Some(first_tx));
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let started = || {
            if let Some(t) = first_tx.lock().ok().and_then(|mut f| f.take()) {
                let _ = t.send(None);
            }
        };
        let send = |v: serde_json::Value| {
            started();
            let _ = tx.blocking_send(Bytes::from(format!("{v}\n")));
        };
        let progress = |ev: PullEvent| match ev {
            PullEvent::Status(s) => send(j!({ "status": s })),
            PullEvent::Layer { id, status, current, total } => send(j!({
                "status": status.text(push), "id": id,
                "progressDetail": if current > 0 { j!({ "current": current, "total": total }) } else { j!({}) },
            })),
        };
        let r = ctx.open().and_then(|mut e| f(&mut e, &o, &progress));
        if let Err(e) = r {
            match first_tx.lock().ok().and_then(|mut f| f.take()) {
                Some(t) => {
                    let _ = t.send(Some(e));
                }
                None => send(j!({ "errorDetail": { "message": e.to_string() }, "error": e.to_string() })),
            }
        }
    });
    match first.await {
        Ok(Some(e)) => Err(e.into()),
        _ => Ok(resp),
    }
}
