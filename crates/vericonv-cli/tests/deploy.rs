//! `deploy/` cannot rot: the Kubernetes manifests and the Envoy config parse, their ports agree
//! with each other, and every flag they pass to `vericonv serve` is one the binary has.

use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

fn deploy(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(file)).expect("deploy file")
}

/// The flags `vericonv serve --help` lists.
fn serve_flags() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vericonv")).args(["serve", "--help"]).output().expect("runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn port_after(args: &[&str], flag: &str) -> u64 {
    let i = args.iter().position(|a| *a == flag).unwrap_or_else(|| panic!("{flag} is passed"));
    args[i + 1].rsplit(':').next().and_then(|p| p.parse().ok()).expect("an address with a port")
}

#[test]
fn the_kubernetes_manifests_agree_with_the_binary() {
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&deploy("kubernetes.yaml"))
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("a {k}"));
    let (deployment, service) = (kind("Deployment"), kind("Service"));
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"].as_sequence().expect("args").iter().filter_map(Value::as_str).collect();
    assert_eq!(args.first(), Some(&"serve"));
    let help = serve_flags();
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag), "`vericonv serve` has no {flag}");
    }
    let ports = container["ports"].as_sequence().expect("ports");
    let port = |name: &str| ports.iter().find(|p| p["name"] == name).and_then(|p| p["containerPort"].as_u64());
    assert_eq!(port("grpc"), Some(port_after(&args, "--listen")));
    assert_eq!(port("metrics"), Some(port_after(&args, "--metrics-listen")));
    assert_eq!(container["readinessProbe"]["grpc"]["port"].as_u64(), port("grpc"), "the probe checks grpc.health.v1");
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"]);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "grpc");
    assert_eq!(service["spec"]["clusterIP"], "None", "headless: clients see every replica");
}

#[test]
fn the_envoy_config_routes_the_cloud_service_to_its_cluster() {
    let cfg: Value = serde_yaml::from_str(&deploy("envoy.yaml")).expect("valid YAML");
    let listener = &cfg["static_resources"]["listeners"][0];
    assert_eq!(listener["address"]["socket_address"]["port_value"].as_u64(), Some(7000));
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["codec_type"], "HTTP2");
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"].as_sequence().expect("routes");
    let clusters: Vec<&Value> = cfg["static_resources"]["clusters"].as_sequence().expect("clusters").iter().collect();
    for r in routes {
        let target = &r["route"]["cluster"];
        assert!(clusters.iter().any(|c| &c["name"] == target), "route to unknown cluster {target:?}");
    }
    assert!(routes.iter().any(|r| r["match"]["prefix"] == "/vericonv.v1.Cloud/"), "the Cloud service is routed");
    let cluster = clusters[0];
    assert!(cluster["health_checks"][0]["grpc_health_check"].is_mapping());
    let upstream =
        &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(upstream["explicit_http_config"]["http2_protocol_options"].is_mapping(), "HTTP/2 upstream");
    let proto =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../vericonv-remote/proto/vericonv.proto"))
            .expect("proto");
    assert!(proto.contains("package vericonv.v1;") && proto.contains("service Cloud"), "the routed prefix exists");
}
