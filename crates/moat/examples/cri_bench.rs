//! The kubelet's start of a pod, timed against containerd's CRI:
//! RunPodSandbox + CreateContainer + StartContainer until the container's
//! first output is in its CRI log file, for each runtime handler given,
//! round by round (one run of each in turn, after one warm-up of each).
//! Prints `{"handler": [seconds, ...], ...}`; each pod is stopped and
//! removed untimed. Used by `bench/run.sh`.
//!
//! `cri_bench SOCKET IMAGE LOG_DIR RUNS HANDLER...`

use k8s_cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Client = cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

async fn connect(sock: PathBuf) -> Result<Client, Box<dyn std::error::Error>> {
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await?;
    Ok(cri::runtime_service_client::RuntimeServiceClient::new(channel))
}

/// One pod with `handler`: the time to its container's first output.
async fn one(
    c: &mut Client,
    handler: &str,
    image: &str,
    logs: &Path,
    n: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let name = format!("bench-{handler}-{n}");
    let dir = logs.join(&name);
    std::fs::create_dir_all(&dir)?;
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: name.clone(),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: "bench".into(),
        log_directory: dir.display().to_string(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let pod = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: handler.into(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        command: vec!["echo".into(), "ready".into()],
        log_path: "c.log".into(),
        ..Default::default()
    };
    let ctr = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config),
        })
        .await?
        .into_inner()
        .container_id;
    c.start_container(cri::StartContainerRequest { container_id: ctr }).await?;
    let log = dir.join("c.log");
    let dt = loop {
        if std::fs::read_to_string(&log).is_ok_and(|l| l.contains(" stdout F ready")) {
            break t0.elapsed().as_secs_f64();
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(format!("{handler}: no output in {} after 2 minutes", log.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
    Ok(dt)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [sock, image, logs, runs, handlers @ ..] = args.as_slice() else {
        return Err("usage: cri_bench SOCKET IMAGE LOG_DIR RUNS HANDLER...".into());
    };
    let runs: usize = runs.parse()?;
    let mut c = connect(PathBuf::from(sock)).await?;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); handlers.len()];
    for round in 0..=runs {
        for (h, t) in handlers.iter().zip(times.iter_mut()) {
            let dt = one(&mut c, h, image, Path::new(logs), round).await?;
            if round > 0 {
                t.push(dt);
            }
        }
    }
    let out: serde_json::Map<String, serde_json::Value> =
        handlers.iter().cloned().zip(times.into_iter().map(serde_json::Value::from)).collect();
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
