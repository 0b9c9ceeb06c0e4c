//! The plugin's Service: a stable ClusterIP name for agents, selecting the plugin's Pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{BuildError, owned_meta, selector};
use crate::crd::HectorPlugin;

/// The Service for `plugin`, or `None` for a plugin given by `spec.endpoint`.
pub fn service(plugin: &HectorPlugin) -> Result<Option<Service>, BuildError> {
    if plugin.spec.image.is_none() {
        return Ok(None);
    }
    Ok(Some(Service {
        metadata: owned_meta(plugin, plugin.name_any())?,
        spec: Some(ServiceSpec {
            selector: Some(selector(plugin)),
            ports: Some(vec![ServicePort {
                name: Some("grpc".into()),
                port: plugin.spec.port,
                target_port: Some(IntOrString::String("grpc".into())),
                protocol: Some("TCP".into()),
                // Lets meshes and gateways treat the port as HTTP/2 gRPC.
                app_protocol: Some("grpc".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;

    #[test]
    fn selects_the_plugin_pods_on_its_port() {
        let p = fixtures::plugin(&fixtures::LLM.replace("  image:", "  port: 7000\n  image:"));
        let s = service(&p).expect("builds").expect("image given");
        let spec = s.spec.expect("spec");
        assert_eq!(
            spec.selector
                .as_ref()
                .and_then(|s| s.get(crate::build::PLUGIN_LABEL))
                .map(String::as_str),
            Some("my-llm")
        );
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(port.port, 7000);
        assert_eq!(port.target_port, Some(IntOrString::String("grpc".into())));
        assert_eq!(port.app_protocol.as_deref(), Some("grpc"));
        assert_eq!(s.metadata.name.as_deref(), Some("my-llm"));
    }
}
