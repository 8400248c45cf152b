//! Fuzz targets (bolero): Docker's flag syntaxes, filters and times, and
//! the API's container create body as the engine takes it.

use crate::{create_body::CreateBody, filter, flags};

#[test]
fn flag_syntaxes_never_panic() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let s = String::from_utf8_lossy(bytes);
        let _ = flags::volume(&s, None);
        let _ = flags::mount(&s, None);
        let _ = flags::tmpfs(&s);
        let _ = flags::publish(&s);
        let _ = flags::network(&s);
        let _ = flags::device(&s);
        let _ = flags::ulimit(&s);
        let _ = flags::restart(&s);
        let _ = flags::isolation(&s);
        let _ = flags::link(&s);
        let _ = flags::expose(&s);
        let _ = flags::device_cgroup_rule(&s);
        let _ = flags::size("memory", &s);
        let _ = flags::detach_keys(&s);
        let _ = flags::signal(&s);
        let _ = flags::label(&s);
        let _ = flags::volume_name(&s);
        let _ = filter::parse_time(&s);
        let _ = filter::parse_duration(&s);
    });
}

#[test]
fn filters_never_panic() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let s = String::from_utf8_lossy(bytes);
        if let Ok(f) = filter::Filters::from_json(&s) {
            let _ = crate::container_filter::ContainerFilter::new(f.clone());
            let _ = crate::images::ImageFilter::new(f);
        }
        let args: Vec<String> = s.split('\n').map(str::to_string).collect();
        let _ = filter::Filters::from_args(&args);
    });
}

#[test]
fn create_bodies_never_panic() {
    bolero::check!().for_each(|bytes: &[u8]| {
        if let Ok(b) = serde_json::from_slice::<CreateBody>(bytes) {
            let _ = b.into_request(Some("fuzz"), None);
        }
    });
}

/// One field of a generated create body: a known key, a value of any shape.
#[derive(Debug, Clone, bolero::TypeGenerator)]
struct Field {
    key: u8,
    kind: u8,
    s: String,
    n: i64,
    list: Vec<String>,
}

const KEYS: &[&str] = &[
    "Image",
    "Cmd",
    "Entrypoint",
    "Env",
    "User",
    "WorkingDir",
    "Hostname",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Healthcheck",
    "HostConfig.Binds",
    "HostConfig.Memory",
    "HostConfig.MemorySwap",
    "HostConfig.PortBindings",
    "HostConfig.RestartPolicy",
    "HostConfig.Isolation",
    "HostConfig.NetworkMode",
    "HostConfig.Tmpfs",
    "HostConfig.Devices",
    "HostConfig.Ulimits",
    "HostConfig.NanoCpus",
    "HostConfig.CpuShares",
    "HostConfig.ShmSize",
    "HostConfig.Mounts",
    "HostConfig.Sysctls",
    "HostConfig.Dns",
    "HostConfig.ExtraHosts",
    "HostConfig.CapAdd",
    "HostConfig.SecurityOpt",
    "HostConfig.LogConfig",
    "NetworkingConfig.EndpointsConfig",
];

#[test]
fn generated_create_bodies_never_panic() {
    use serde_json::{json, Map, Value};
    bolero::check!().with_type::<Vec<Field>>().for_each(|fields: &Vec<Field>| {
        let mut top = Map::new();
        for f in fields.iter().take(24) {
            let v = match f.kind % 6 {
                0 => Value::String(f.s.clone()),
                1 => json!(f.n),
                2 => json!(f.list),
                3 => Value::Object(f.list.iter().map(|k| (k.clone(), json!({ "a": f.s.clone() }))).collect()),
                4 => Value::Null,
                _ => json!({ "Name": f.s.clone(), "MaximumRetryCount": f.n, "Type": f.s.clone(), "Config": f.list }),
            };
            let key = KEYS[f.key as usize % KEYS.len()];
            match key.split_once('.') {
                Some((outer, inner)) => {
                    let o = top.entry(outer.to_string()).or_insert_with(|| json!({}));
                    if let Some(o) = o.as_object_mut() {
                        o.insert(inner.to_string(), v);
                    }
                }
                None => {
                    top.insert(key.to_string(), v);
                }
            }
        }
        if let Ok(b) = serde_json::from_value::<CreateBody>(Value::Object(top)) {
            let _ = b.into_request(Some("fuzz"), None);
        }
    });
}
