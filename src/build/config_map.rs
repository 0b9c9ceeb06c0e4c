//! The plugin's configuration ConfigMap: resolved plain values only. Secret values never
//! pass through the operator; the Deployment mounts them straight from their Secrets.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::ConfigMap;

use super::{BuildError, config_map_name, owned_meta};
use crate::config::ResolvedConfig;
use crate::crd::HectorPlugin;

/// Pod template annotation carrying a digest of the configuration, so a change rolls the
/// Pods (the launcher hands configuration to the plugin once, at start).
pub const CONFIG_HASH_ANNOTATION: &str = "hector.dev/config-hash";

/// The ConfigMap holding `config`'s plain values, one key per file.
pub fn config_map(plugin: &HectorPlugin, config: &ResolvedConfig) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: owned_meta(plugin, config_map_name(plugin))?,
        data: Some(config.values.clone()),
        ..Default::default()
    })
}

/// A stable digest of what the plugin is configured with: plain values and which Secret keys
/// are mounted where. Secret contents are not in it: the operator cannot read Secrets at all;
/// the launcher notices a rotated Secret in its mounted files and restarts the plugin itself.
pub(crate) fn config_hash(config: &ResolvedConfig) -> String {
    // FNV-1a: stable across Rust releases and platforms, unlike the std hasher's keys.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    config.values.hash(&mut h);
    let refs: BTreeMap<&String, (&String, &String)> = config
        .secrets
        .iter()
        .map(|(k, r)| (k, (&r.name, &r.key)))
        .collect();
    refs.hash(&mut h);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::config::resolve;

    fn resolved(p: &HectorPlugin) -> ResolvedConfig {
        resolve(
            &p.spec.manifest.config_schema,
            &p.spec.config,
            &p.spec.secret_config,
        )
        .expect("valid")
    }

    #[test]
    fn holds_plain_values_and_never_secret_keys() {
        let p = fixtures::plugin(fixtures::LLM);
        let cm = config_map(&p, &resolved(&p)).expect("builds");
        assert_eq!(cm.metadata.name.as_deref(), Some("my-llm-config"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("agents"));
        let data = cm.data.expect("data");
        assert_eq!(data.get("model").map(String::as_str), Some("big-1"));
        assert_eq!(data.get("max_tokens").map(String::as_str), Some("512"));
        assert_eq!(data.get("temperature").map(String::as_str), Some("0.7"));
        assert!(
            !data.contains_key("api_key"),
            "secret keys stay out: {data:?}"
        );
        let owner = &cm.metadata.owner_references.expect("owned")[0];
        assert_eq!(owner.kind, "HectorPlugin");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn hash_follows_values_and_secret_refs() {
        let p = fixtures::plugin(fixtures::LLM);
        let base = resolved(&p);
        assert_eq!(config_hash(&base), config_hash(&base.clone()));
        let mut changed = base.clone();
        changed.values.insert("model".into(), "big-2".into());
        assert_ne!(config_hash(&base), config_hash(&changed));
        let mut moved = base.clone();
        if let Some(r) = moved.secrets.get_mut("api_key") {
            r.key = "other-key".into();
        }
        assert_ne!(config_hash(&base), config_hash(&moved));
    }

    #[test]
    fn unstored_resources_are_refused() {
        let mut p = fixtures::plugin(fixtures::LLM);
        p.metadata.uid = None;
        let err = config_map(&p, &resolved(&p)).expect_err("no uid");
        assert_eq!(err, BuildError::Unstored("uid"));
    }
}
